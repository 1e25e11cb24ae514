"""Saving and loading models: one .npz of arrays plus a JSON config, no pickle.

The file holds the flat parameter and state buffers, the optimizer's state
buffers, the class labels, and a JSON document (stored as a 0-d unicode
array) with the architecture, the optimizer's configuration and step count,
the epochs trained, the training seed and the last History. Loading uses
``allow_pickle=False``; a model saved mid-training and loaded again continues
``fit`` exactly as if it had never stopped.

Writes are atomic: the file is written under a temporary name in the same
directory, flushed to disk, then renamed over the target, so a crash during a
save leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from . import __version__
from . import optimizers as optimizers_mod

__all__ = ["FORMAT_VERSION", "load", "save_model"]

FORMAT_NAME = "fastnn-model"
FORMAT_VERSION = 1
_CONFIG_KEY = "fastnn_config"


def save_model(model, path) -> None:
    """Write ``model`` to ``path`` atomically (see the module docstring)."""
    model._require_built()
    path = Path(path)
    opt = model.optimizer
    history = model.history
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "fastnn_version": __version__,
        "model": model.get_config(),
        "epochs_trained": model.epochs_trained,
        "train_seed": model.train_seed,
        "targets_1d": bool(model._targets_1d),
        "optimizer": None if opt is None else opt.get_config(),
        "history": None if history is None else {
            "epoch": history.epoch, "history": history.history,
            "stop_reason": history.stop_reason},
    }
    arrays = {
        _CONFIG_KEY: np.array(json.dumps(config)),
        "params": model._params,
        "states": model._states,
    }
    if model.classes_ is not None:
        classes = model.classes_
        if classes.dtype.kind not in "biuf":
            classes = classes.astype(str)  # strings as a unicode array: no pickle needed
        arrays["classes"] = classes
    if opt is not None:
        for name, arr in opt.state_arrays().items():
            arrays[f"optimizer/{name}"] = arr
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load(path):
    """Load a model saved with :meth:`Sequential.save` (optimizer state and history included).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is truncated, not a fastnn model, from a newer format, or holds pickled
        (object) data, which is never loaded.
    """
    from .callbacks import History
    from .model import Sequential

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such model file: {path}")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"PK\x03\x04":  # every .npz is a zip archive; look before NumPy guesses
        raise ValueError(f"{path} is not a readable fastnn model file (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            if _CONFIG_KEY not in keys:
                raise ValueError(f"{path} is not a fastnn model: it has no {_CONFIG_KEY!r} "
                                 f"entry (entries: {sorted(keys)[:10]})")
            arrays = {key: data[key] for key in keys}
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise ValueError(f"{path} holds pickled (object) data, which fastnn never loads: "
                             "it could run arbitrary code") from None
        if "is not a fastnn model" in str(exc):
            raise
        raise ValueError(f"{path} is not a readable fastnn model file ({exc})") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:
        raise ValueError(f"{path} is not a readable fastnn model file (truncated or "
                         f"corrupt: {exc})") from None
    try:
        config = json.loads(str(arrays[_CONFIG_KEY]))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"{path}: the fastnn config is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{path} is not a fastnn model (format {found!r})")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path} has format version {version!r}; this fastnn "
                         f"({__version__}) reads versions up to {FORMAT_VERSION}")
    try:
        model = Sequential.from_config(config["model"])
        if not model.built:
            raise ValueError("the saved model was never built")
        for key, target in (("params", model._params), ("states", model._states)):
            arr = arrays.get(key)
            if arr is None or arr.shape != target.shape or arr.dtype != target.dtype:
                raise ValueError(f"{key!r} has shape {None if arr is None else arr.shape}, "
                                 f"expected {target.shape} {target.dtype}")
            target[...] = arr
        if "classes" in arrays:
            model.classes_ = arrays["classes"]
        model.epochs_trained = int(config["epochs_trained"])
        model.train_seed = config.get("train_seed")
        model._targets_1d = bool(config.get("targets_1d", True))
        if config.get("optimizer") is not None:
            opt = optimizers_mod.from_config(config["optimizer"])
            states = {k.split("/", 1)[1]: v for k, v in arrays.items()
                      if k.startswith("optimizer/")}
            if states:
                opt.load_state_arrays(states)
            model.optimizer = opt
        saved_history = config.get("history")
        if saved_history is not None:
            history = History()
            history.epoch = list(saved_history["epoch"])
            history.history = {k: list(v) for k, v in saved_history["history"].items()}
            history.stop_reason = saved_history.get("stop_reason")
            model.history = history
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: the saved model is inconsistent ({exc})") from None
    return model
