"""Sequential: a stack of layers over one flat parameter buffer.

The model owns three flat buffers (parameters, their gradients, and
non-trainable state such as BatchNorm running statistics); every layer's
weights are views into them, so one optimizer call updates all parameters in
one fused pass. Training is :meth:`Sequential.fit`, inherited from
:class:`fastnn.trainer.Trainer`; inference folds each BatchNorm into the Dense layer
before it (one matmul); :meth:`Sequential.save` and :meth:`Sequential.load` translate
between a model and the file format of :mod:`fastnn.serialization`.
"""

from __future__ import annotations

import math

import numpy as np

from . import _checks, _infer, _targets
from . import layers as layers_mod
from . import losses as losses_mod
from . import optimizers as optimizers_mod
from .callbacks import History
from .layers import Layer
from .trainer import Trainer

__all__ = ["Sequential"]

_DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}
_PREDICT_CHUNK = 4096  # rows per inference chunk: bounded memory for any X
_FINITE_CHUNK = 2**20  # values per finiteness check of loaded weights
# what a hostile or corrupt config can raise while it is turned into a model
_CONFIG_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError,
                  RecursionError)


_blas_warm = False


def _warm_up_blas() -> None:
    """Run one modest matrix product per process, once.

    Measured with NumPy 2.4's OpenBLAS 0.3.31 (Haswell kernels, 1 thread): a
    fresh process runs small float32 products (32x256 @ 256x256) at a third of
    their speed (380 us instead of 130 us) until any product of about 64^3 or
    more has run once; after that they stay fast. The model's products are
    small, so without this a short training would run at the slow speed
    throughout. The cost is one 64x64 product.
    """
    global _blas_warm
    if not _blas_warm:
        warm = np.ones((64, 64))
        warm @ warm
        _blas_warm = True


def _model_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in _DTYPES:
        raise TypeError(f"dtype must be 'float32' or 'float64'; got {dtype!r}")
    return _DTYPES[dt.name]



def _check_output(x: np.ndarray, out: np.ndarray, first_row: int) -> None:
    """Raise unless the chunk's inputs ``x`` (rows ``first_row``... of X, cast) and
    outputs are finite: NaN or inf in X, or finite inputs too large for the network's
    arithmetic (e.g. 3e38 in float32), never give silent NaN predictions."""
    _checks.finite("X", x, first_row)
    if not np.isfinite(out).all():
        row = first_row + int(np.argwhere(~np.isfinite(out))[0][0])
        big = float(np.max(np.abs(x)))
        raise ValueError(
            f"X: the network's outputs overflow to NaN or inf for row {row} (the chunk's "
            f"inputs reach {big:.3g} in absolute value, too large for {out.dtype} "
            "arithmetic); scale the features as the training data was scaled")


def _all_finite(values: np.ndarray) -> bool:
    """Whether every value is finite, checked a chunk at a time (no mask of them all)."""
    flat = values.reshape(-1)
    return all(np.isfinite(flat[i:i + _FINITE_CHUNK]).all()
               for i in range(0, flat.size, _FINITE_CHUNK))


def _saved_label_column(value) -> int | str | None:
    if value is None or (isinstance(value, str) and 0 < len(value) <= 1000):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"label_column must be None, a column index or a name of at most 1000 "
                     f"characters; got {str(value)[:40]!r}")


def _history_from_saved(saved: dict) -> History:
    """The History of a saved config, its types checked."""
    history = History()
    epochs, metrics = saved["epoch"], saved["history"]
    if not isinstance(epochs, list) or not isinstance(metrics, dict):
        raise TypeError("the saved history must hold a list of epochs and a dict of metrics")
    history.epoch = [_checks.integer("history epoch", epoch) for epoch in epochs]
    for key, values in metrics.items():
        if not isinstance(values, list):
            raise TypeError(f"the saved history of {key!r} must be a list")
        history.history[key] = list(values)
    reason = saved.get("stop_reason")
    if reason is not None and not isinstance(reason, str):
        raise TypeError(f"the saved stop_reason must be a str; got {type(reason).__name__}")
    history.stop_reason = reason
    return history


class Sequential(Trainer):
    """A feed-forward network: layers applied in order.

    Parameters
    ----------
    layers : list of Layer
    input_dim : int, optional
        Number of input features; the model builds now if given, else on the first ``fit``.
    dtype : "float32" or "float64"
        The dtype of parameters, activations and gradients, end to end.
    seed : int, optional
        Seeds parameter initialisation (and, unless ``fit`` gets its own, shuffling and dropout).
    loss : Loss or str, optional
        Default: softmax cross-entropy if the last layer is :class:`~fastnn.layers.Softmax`,
        else mean squared error. A final Softmax is fused into the cross-entropy kernel.

    Examples
    --------
    >>> import numpy as np
    >>> import fastnn
    >>> from fastnn.layers import Dense, BatchNorm, ReLU, Softmax
    >>> model = fastnn.Sequential([Dense(16), BatchNorm(), ReLU(), Dense(3), Softmax()],
    ...                           input_dim=4, seed=0)
    >>> model.n_params  # 4*16 (no bias before BatchNorm) + 2*16 + 16*3 + 3
    147

    Training takes planned steps where it can (see ``fastnn._plan``): for Dense, BatchNorm
    and activation layers under a fused softmax cross-entropy, each batch size's whole
    forward and backward pass is validated and bound once, then runs as one call. Set
    ``plan_steps = False`` on a model to force the per-layer path.
    """

    #: Whether ``fit`` may take planned steps (False: always the per-layer path).
    plan_steps = True

    def __init__(self, layers, input_dim: int | None = None, dtype="float32",
                 seed: int | None = None, loss=None) -> None:
        layers = list(layers)
        if not layers:
            raise ValueError("layers must not be empty")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layers[{i}] must be a fastnn.layers.Layer; got "
                                f"{type(layer).__name__}")
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError("a layer instance appears twice in layers; create one per position")
        if all(layer.units is None for layer in layers):
            raise ValueError("layers must contain at least one Dense layer")
        if seed is not None:
            seed = _checks.integer("seed", seed, minimum=0)
        self.layers = layers
        self.dtype = _model_dtype(dtype)
        self.seed = None if seed is None else int(seed)
        if loss is None:
            loss = "cross_entropy" if layers[-1].softmax else "mse"
        self.loss = losses_mod.get(loss)
        self.optimizer = None
        self.history = None
        self.epochs_trained = 0
        self.train_seed: int | None = None
        self.classes_: np.ndarray | None = None
        # The training file's label column (a name, or an index), recorded by `fastnn
        # train --label-column` and saved, so that `fastnn predict` and `evaluate` find
        # the labels in the same file again; None: the file format's default column.
        self.label_column: int | str | None = None
        self.stop_training = False
        self.input_dim: int | None = None
        self.output_dim: int | None = None
        self._params = self._grads = self._states = None
        if input_dim is not None:
            self.build(input_dim)

    # ------------------------------------------------------------------------------------
    # Construction
    # ------------------------------------------------------------------------------------

    @property
    def built(self) -> bool:
        return self._params is not None

    @property
    def fused_softmax(self) -> bool:
        """True if training skips the final Softmax (cross-entropy takes logits)."""
        return self.loss.fuses_softmax and self.layers[-1].softmax

    @property
    def _train_layers(self) -> list[Layer]:
        return self.layers[:-1] if self.fused_softmax else self.layers

    def build(self, input_dim: int) -> Sequential:
        """Create the flat buffers for ``input_dim`` features and initialise the parameters."""
        self._allocate(input_dim)
        rng = np.random.default_rng(self.seed)
        for layer in self.layers:
            layer.initialize(rng)
        _warm_up_blas()
        return self

    def _declare(self, input_dim: int) -> tuple[int, int]:
        """Build the layers for ``input_dim`` features, shapes only (nothing allocated);
        ``(number of parameters, number of state values)``."""
        input_dim = _checks.integer("input_dim", input_dim, minimum=1)
        dim = input_dim
        for i, layer in enumerate(self.layers):
            following = self.layers[i + 1] if i + 1 < len(self.layers) else None
            dim = layer.build(dim, self.dtype, following)
        self.input_dim, self.output_dim = int(input_dim), dim
        n_params = sum(layer.n_params for layer in self.layers)
        n_states = sum(math.prod(s) for layer in self.layers for s in layer.states.values())
        return n_params, n_states

    def _allocate(self, input_dim: int) -> None:
        """The flat buffers (zeros) for ``input_dim`` features, bound to the layers."""
        n_params, n_states = self._declare(input_dim)
        self._params = np.zeros(n_params, self.dtype)
        self._grads = np.zeros(n_params, self.dtype)
        self._states = np.zeros(n_states, self.dtype)
        self._bind_views()

    def _bind_views(self) -> None:
        """Point every layer's parameters, gradients and state at its slices of the buffers."""
        p_off = s_off = 0
        for layer in self.layers:
            params, grads, states = {}, {}, {}
            for name, shape in layer.params.items():
                size = math.prod(shape)
                params[name] = self._params[p_off:p_off + size].reshape(shape)
                grads[name] = self._grads[p_off:p_off + size].reshape(shape)
                p_off += size
            for name, shape in layer.states.items():
                size = math.prod(shape)
                states[name] = self._states[s_off:s_off + size].reshape(shape)
                s_off += size
            layer.bind(params, grads, states)

    # Pickling (scikit-learn estimators, process pools): NumPy pickles a view as a copy,
    # so the layers' views are dropped and re-bound to the unpickled flat buffers.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_inference_plans", None)  # per-thread buffers: rebuilt on first use
        state["layers"] = [layer.__class__.__new__(layer.__class__) for layer in self.layers]
        for fresh, layer in zip(state["layers"], self.layers, strict=True):
            fresh.__dict__.update(layer.__getstate__())
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self._params is not None:
            self._bind_views()

    @property
    def n_params(self) -> int:
        if not self.built:
            raise RuntimeError("the model is not built yet: pass input_dim or call fit")
        return int(self._params.size)

    # ------------------------------------------------------------------------------------
    # Forward and backward over the training layers
    # ------------------------------------------------------------------------------------

    def _forward(self, x: np.ndarray, rng) -> np.ndarray:
        for layer in self._train_layers:
            x = layer.forward(x, True, rng)
        return x

    def _backward(self, dout: np.ndarray) -> None:
        train_layers = self._train_layers
        for i in range(len(train_layers) - 1, -1, -1):
            dout = train_layers[i].backward(dout, need_dx=i > 0)

    def _output_grad_buffer(self, n: int) -> np.ndarray:
        return self.layers[-1]._buffer("loss_grad", (n, self._train_layers[-1].output_dim))

    # ------------------------------------------------------------------------------------
    # Inference: BatchNorm folded into the preceding Dense
    # ------------------------------------------------------------------------------------

    def _inference_plan(self, logits: bool = False, dtype=None) -> list[tuple]:
        """Steps of the eval-mode forward: ("affine", W, b), ("scale", a, b), ("layer", L).

        Each Dense followed by a BatchNorm becomes one affine map (computed in float64,
        then cast): ``W' = W * scale``, ``b' = b * scale + shift`` with the BatchNorm's
        ``scale = gamma / sqrt(running_var + eps)``, ``shift = beta - running_mean * scale``.
        With ``logits=True`` a fused final Softmax is left out; ``dtype`` (default the
        model's) is the precision of the folded weights.
        """
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        layers = self._train_layers if logits else self.layers
        steps: list = []
        previous = None
        for layer in layers:
            layer.fold(steps, previous)  # each layer adds its step or merges into the last
            previous = layer
        plan = []
        for kind, *args in steps:
            if kind == "layer":
                plan.append((kind, args[0]))
            else:  # the folded weights, computed in float64, cast once
                plan.append((kind, args[0].astype(dtype), args[1].astype(dtype)))
        return plan

    def _infer(self, X: np.ndarray, *, logits: bool = False, fold: bool = True,
               dtype=None) -> np.ndarray:
        """Eval-mode outputs of the rows of ``X`` (``logits``: without a fused final
        Softmax), a new array of the model's dtype.

        ``X`` is any 2-D numeric array of the model's width (see
        :func:`fastnn._checks.rows`): it is cast to the model's dtype and checked
        finite chunk by chunk, so working memory does not grow with the rows. On the
        cython backend the pass is planned (:mod:`fastnn._infer`); otherwise the layers'
        ``infer`` run one by one with each BatchNorm folded into the Dense before it.
        ``fold=False`` runs every layer's ``infer`` (BatchNorm unfolded): the same result
        within float tolerance, kept for testing. ``dtype`` computes in another precision
        (folded path), e.g. float64 predictions from a float32 model, whose rows then do
        not depend on the rest of the batch even to the last float32 bit.
        """
        n = X.shape[0]
        plans = self._plans if fold and dtype is None else None
        if plans is not None:
            plan = plans.get(self, min(n, _PREDICT_CHUNK), logits)
            if plan is not None and n <= _PREDICT_CHUNK:  # the common case: one chunk
                out = plan.run(X)
                if out is None:
                    _check_output(plan.input, plan.out, 0)
                return out.copy()
        out = None
        for start in range(0, n, _PREDICT_CHUNK):
            rows = X[start:start + _PREDICT_CHUNK]
            if plans is not None:
                plan = plans.get(self, rows.shape[0], logits)
            if plans is not None and plan is not None:
                h = plan.run(rows)
                if h is None:
                    _check_output(plan.input, plan.out, start)
            else:
                x = np.ascontiguousarray(rows, dtype=self.dtype if dtype is None else dtype)
                _checks.finite("X", x, start)
                with np.errstate(over="ignore", invalid="ignore"):  # refused just below
                    h = self._infer_layers(x, logits, fold)
                _check_output(x, h, start)
            if out is None:
                out = np.empty((n, h.shape[1]), h.dtype)
            out[start:start + rows.shape[0]] = h
        return out

    def _infer_layers(self, x: np.ndarray, logits: bool, fold: bool) -> np.ndarray:
        """The eval-mode pass through the layers' ``infer`` (folded: BatchNorm merged)."""
        if fold:
            plan = self._inference_plan(logits, x.dtype)
        else:
            plan = [("layer", layer) for layer in (self._train_layers if logits else
                                                   self.layers)]
        h = x
        for kind, *args in plan:
            if kind == "affine":
                h = h @ args[0]
                h += args[1]
            elif kind == "scale":
                h = h * args[0]
                h += args[1]
            else:
                h = args[0].infer(h)  # a new array: safe from many threads at once
        return h

    @property
    def _plans(self):
        """This model's planned inference passes, per thread (see :mod:`fastnn._infer`)."""
        plans = self.__dict__.get("_inference_plans")
        if plans is None:
            plans = self.__dict__["_inference_plans"] = _infer.Plans()
        return plans

    def _require_built(self) -> None:
        if not self.built:
            raise RuntimeError("the model is not built yet: call fit (or pass input_dim) first")

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape (n, n_classes), eval mode (running BatchNorm statistics)."""
        self._require_built()
        if not self.loss.classification:
            raise TypeError("predict_proba needs a classifier (a cross-entropy loss); "
                            "this model is a regressor: use predict")
        out = self._infer(_checks.rows("X", X, self.input_dim, finite=False))
        if not self.layers[-1].softmax:
            from . import ops
            out = ops.softmax(out, out=out)
        return out

    def predict(self, X) -> np.ndarray:
        """Predicted labels (classifier: in the labels' original values) or outputs (regressor)."""
        self._require_built()
        if self.loss.classification:
            probs = self.predict_proba(X)
            index = np.argmax(probs, axis=1)
            return index if self.classes_ is None else self.classes_[index]
        out = self._infer(_checks.rows("X", X, self.input_dim, finite=False))
        return out[:, 0] if out.shape[1] == 1 and self._targets_1d else out

    _targets_1d = True

    def evaluate(self, X, y, *, sample_weight=None) -> dict:
        """Loss (and accuracy for a classifier) in eval mode: ``{"loss": ..., "accuracy": ...}``."""
        self._require_built()
        X = _checks.rows("X", X, self.input_dim, finite=False)
        targets, _, _ = _targets.encode(y, X.shape[0], classification=self.loss.classification,
                                        output_dim=self.output_dim, dtype=self.dtype,
                                        classes=self.classes_)
        weights = _checks.sample_weight("sample_weight", sample_weight, X.shape[0])
        return self._evaluate_arrays(X, targets, weights)

    def _evaluate_arrays(self, X, targets, weights) -> dict:
        logits = self._infer(X, logits=True)
        grad = np.empty_like(logits)
        loss = self.loss(logits, targets, grad, sample_weight=weights)
        result = {"loss": float(loss)}
        if self.loss.classification:
            correct = np.argmax(logits, axis=1) == targets
            result["accuracy"] = float(np.average(correct, weights=weights))
        return result

    def static_output_dim(self) -> int:
        """The output width, known before building: the last width-fixing (Dense) layer's."""
        return next(layer.units for layer in reversed(self.layers) if layer.units is not None)

    # ------------------------------------------------------------------------------------
    # Weights, summary, saving
    # ------------------------------------------------------------------------------------

    def get_weights(self) -> list[np.ndarray]:
        """Copies in Keras order: per layer, Dense kernel (in, out) then bias if present;
        BatchNorm gamma, beta, running mean, running variance."""
        self._require_built()
        out = []
        for layer in self.layers:
            out += [layer.p[name].copy() for name in layer.params]
            out += [layer.s[name].copy() for name in layer.states]
        return out

    def set_weights(self, weights) -> None:
        """Set all weights from a list in :meth:`get_weights` order (shapes must match)."""
        self._require_built()
        targets = []
        for layer in self.layers:
            targets += [(f"{type(layer).__name__}.{n}", layer.p[n]) for n in layer.params]
            targets += [(f"{type(layer).__name__}.{n}", layer.s[n]) for n in layer.states]
        weights = list(weights)
        if len(weights) != len(targets):
            raise ValueError(f"set_weights needs {len(targets)} arrays; got {len(weights)}")
        arrays = []
        for i, ((name, target), w) in enumerate(zip(targets, weights, strict=True)):
            w = np.asarray(w)
            if w.shape != target.shape:
                raise ValueError(f"weights[{i}] ({name}) must have shape {target.shape}; got "
                                 f"{w.shape}")
            if w.dtype.kind not in "biuf" or not np.all(np.isfinite(w)):
                raise ValueError(f"weights[{i}] ({name}) must be finite numbers")
            arrays.append(w)
        for (_, target), w in zip(targets, arrays, strict=True):
            target[...] = w  # only after every array was checked: all or nothing

    def summary(self, print_fn=print) -> str:
        """Print (and return) a table of layers, output shapes and parameter counts."""
        self._require_built()
        rows = [("Layer", "Output shape", "Params", "Notes")]
        for i, layer in enumerate(self.layers):
            rows.append((f"{i}: {type(layer).__name__}", f"(None, {layer.output_dim})",
                         f"{layer.n_params:,}", layer.describe()))
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
                 for r in rows]
        rule = "-" * max(len(line) for line in lines)
        loss_note = type(self.loss).__name__ + (" (fused with the final Softmax)"
                                                if self.fused_softmax else "")
        text = "\n".join([f"Sequential: {self.input_dim} inputs, {self.dtype.name}", rule,
                          lines[0], rule, *lines[1:], rule,
                          f"Total params: {self.n_params:,}  "
                          f"(non-trainable state: {self._states.size:,})",
                          f"Loss: {loss_note}"])
        if print_fn is not None:
            print_fn(text)
        return text

    def save(self, path) -> None:
        """Save the model (and optimizer state, epoch, history) atomically; see :meth:`load`."""
        from . import serialization

        self._require_built()
        opt, history = self.optimizer, self.history
        config = {
            "model": self.get_config(),
            "epochs_trained": self.epochs_trained,
            "train_seed": self.train_seed,
            "targets_1d": bool(self._targets_1d),
            "label_column": getattr(self, "label_column", None),
            "optimizer": None if opt is None else opt.get_config(),
            "history": None if history is None else {
                "epoch": history.epoch, "history": history.history,
                "stop_reason": history.stop_reason},
        }
        arrays = {"params": self._params, "states": self._states}
        if self.classes_ is not None:
            classes = self.classes_
            if classes.dtype.kind not in "biuf":
                classes = classes.astype(str)  # strings as a unicode array: no pickle needed
            arrays["classes"] = classes
        if opt is not None:
            for name, arr in opt.state_arrays().items():
                arrays[f"optimizer/{name}"] = arr
        serialization.write(path, config, arrays)

    @classmethod
    def load(cls, path) -> Sequential:
        """A model saved by :meth:`save`, optimizer state and history included (``fit``
        continues exactly as if it had never stopped).

        The file is checked before anything is allocated: the config (a bounded JSON
        text) fixes every array's shape and dtype, the parameter count included, and
        each array's header must declare exactly that and match its member's size
        (see :class:`fastnn.serialization.Archive`). Weights and optimizer state are
        then read straight into the model's buffers and must be finite.

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist.
        ValueError
            If the file is truncated, not a fastnn model, from a newer format, holds
            pickled (object) data (never loaded), does not match its own config
            (sizes, optimizer state), holds NaN or infinite weights, or is a
            decompression bomb. The message names the file.
        """
        from . import serialization

        with serialization.open_model(path) as saved:
            try:
                model, expected = cls._unbuilt_from_saved(saved.config, saved.keys)
            except _CONFIG_ERRORS as exc:
                raise ValueError(f"{path}: the saved model is inconsistent ({exc})") from None
            saved.check(expected)
            model._read_saved(saved, expected)
        return model

    @classmethod
    def _unbuilt_from_saved(cls, config: dict, keys: list) -> tuple[Sequential, dict]:
        """The model of a saved config with its shapes declared but no buffer allocated,
        and the arrays the file must hold: name -> (shape, dtype or dtype kinds)."""
        spec = config["model"]
        if spec.get("input_dim") is None:
            raise ValueError("the saved model was never built")
        model = cls.from_config({**spec, "input_dim": None})
        n_params, n_states = model._declare(spec["input_dim"])
        flat = model.dtype
        expected = {"params": ((n_params,), flat), "states": ((n_states,), flat)}
        if "classes" in keys:
            expected["classes"] = ((model.output_dim,), "biufU")
        model.epochs_trained = _checks.integer("epochs_trained", config["epochs_trained"],
                                               minimum=0)
        seed = config.get("train_seed")
        model.train_seed = None if seed is None else _checks.integer("train_seed", seed,
                                                                     minimum=0)
        model._targets_1d = _checks.boolean("targets_1d", config.get("targets_1d", True))
        model.label_column = _saved_label_column(config.get("label_column"))
        if config.get("optimizer") is not None:
            model.optimizer = optimizers_mod.from_config(config["optimizer"])
            if any(key.startswith("optimizer/") for key in keys):
                for name in model.optimizer._active_state_names():
                    expected[f"optimizer/{name}"] = ((n_params,), flat)
        if config.get("history") is not None:
            model.history = _history_from_saved(config["history"])
        return model, expected

    def _read_saved(self, saved, expected: dict) -> None:
        """Allocate the buffers and read the checked arrays of ``saved`` into them."""
        self._allocate(self.input_dim)
        saved.read("params", self._params)
        saved.read("states", self._states)
        arrays = {"params": self._params, "states": self._states}
        if "classes" in expected:
            self.classes_ = arrays["classes"] = saved.read("classes")
        states = {key.split("/", 1)[1]: saved.read(key) for key in expected
                  if key.startswith("optimizer/")}
        arrays.update((f"optimizer/{name}", arr) for name, arr in states.items())
        for key, arr in arrays.items():
            if arr.dtype.kind == "f" and not _all_finite(arr):
                raise ValueError(f"{saved.label}: the saved model is corrupt: {key!r} holds "
                                 f"NaN or infinite values")
        if states:
            self.optimizer.load_state_arrays(states)
        _warm_up_blas()

    def get_config(self) -> dict:
        return {
            "layers": [{"class": type(layer).__name__, "config": layer.get_config()}
                       for layer in self.layers],
            "input_dim": self.input_dim,
            "dtype": self.dtype.name,
            "seed": self.seed,
            "loss": self.loss.get_config(),
        }

    @classmethod
    def from_config(cls, config: dict) -> Sequential:
        layers = [layers_mod.from_config(spec) for spec in config["layers"]]
        return cls(layers, input_dim=config.get("input_dim"), dtype=config["dtype"],
                   seed=config.get("seed"), loss=losses_mod.from_config(config["loss"]))

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"Sequential([{inner}], input_dim={self.input_dim}, dtype={self.dtype.name!r})"

    def to_onnx(self, path, **kw):
        """Write the eval-mode network to ``path`` as ONNX; see :func:`fastnn.onnx.export`."""
        from . import onnx

        return onnx.export(self, path, **kw)
