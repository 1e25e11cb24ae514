"""The model file format: one .npz of named arrays plus a JSON config, no pickle.

This module knows the file, not the model: :func:`write` stores a JSON document (a 0-d
unicode array) and named arrays, :func:`read` gives them back after checking the file
is a fastnn file of a format version this fastnn reads. What the config and arrays
mean is :class:`fastnn.Sequential`'s business (``save`` and ``load`` translate).
Loading uses ``allow_pickle=False``.

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

from ._version import __version__

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "read", "write"]

FORMAT_NAME = "fastnn-model"
FORMAT_VERSION = 1
_CONFIG_KEY = "fastnn_config"


def write(path, config: dict, arrays: dict) -> None:
    """Write ``config`` (JSON-serialisable) and ``arrays`` (name -> ndarray, no object
    dtype) to ``path`` atomically (see the module docstring)."""
    path = Path(path)
    document = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                "fastnn_version": __version__, **config}
    members = {_CONFIG_KEY: np.array(json.dumps(document)), **arrays}
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **members)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read(path) -> tuple[dict, dict]:
    """``(config, arrays)`` of a fastnn file written by :func:`write`.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is truncated, not a fastnn model, from a newer format, or holds pickled
        (object) data, which is never loaded.
    """
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
    return config, {k: v for k, v in arrays.items() if k != _CONFIG_KEY}
