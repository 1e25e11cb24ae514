"""Layers: Dense, BatchNorm, activations, Dropout, Softmax.

A layer owns all of its behaviour: it declares its parameters (shapes, in Keras
order) and its non-trainable state; it computes its forward and backward pass; it
builds its *planned* form (:meth:`Layer.plan_step`: its training pass bound once to
live buffers through :mod:`fastnn.ops`' bound ops, run many times); it folds itself
into the eval-mode network (:meth:`Layer.fold`: a BatchNorm into the Dense before
it); and it describes itself (:meth:`Layer.get_config`). The model and the step
engine (:mod:`fastnn._plan`) know layers only through this protocol, never by class,
so a new layer is one class here.

The model owns one flat parameter buffer, one flat gradient buffer and one flat
state buffer, and binds each layer to views into them. Activations and gradients
live in buffers the layer keeps per batch size, so a steady-state training step
allocates no arrays. Numerical kernels come only from :mod:`fastnn.ops`; the rest
is NumPy with ``out=``.
"""

from __future__ import annotations

import math

import numpy as np

from . import _checks, _names, ops

__all__ = [
    "BatchNorm",
    "BatchNormalization",
    "Dense",
    "Dropout",
    "Identity",
    "Layer",
    "LeakyReLU",
    "ReLU",
    "Sigmoid",
    "Softmax",
    "Standardize",
    "Tanh",
    "activation",
    "from_config",
    "mlp",
]

_INITIALIZERS = ("he", "glorot", "lecun", "normal", "zeros")


class PlannedStep:
    """A layer's training pass bound to live buffers for one batch size.

    ``forward`` is the list of bound ops of the forward pass, ``output`` the buffer
    they leave the layer's output in. ``writable`` says whether the next layer may
    overwrite ``output`` in place (the layer's backward does not read it);
    ``fused_next`` that the op also ran the next layer (an activation fused into a
    BatchNorm), which the engine then skips. ``backward(d, need_dx)`` returns the
    bound ops of the backward pass from the output gradient buffer ``d`` and the
    buffer they leave the input gradient in.
    """

    __slots__ = ("forward", "output", "writable", "fused_next", "_backward")

    def __init__(self, forward: list, output: np.ndarray, backward, *, writable: bool,
                 fused_next: bool = False) -> None:
        self.forward = forward
        self.output = output
        self.writable = writable
        self.fused_next = fused_next
        self._backward = backward

    def backward(self, d: np.ndarray, need_dx: bool) -> tuple[list, np.ndarray]:
        return self._backward(d, need_dx)


def _inference_step(forward: list, output: np.ndarray, *, writable: bool,
                    fused_next: bool = False) -> PlannedStep:
    """An eval-mode planned step (:meth:`Layer.plan_infer`): forward ops only."""
    return PlannedStep(forward, output, None, writable=writable, fused_next=fused_next)


class Layer:
    """Base class of all layers.

    Subclasses set ``params`` / ``states`` (name -> shape) in :meth:`build` and
    implement :meth:`forward` and :meth:`backward`; they may add a planned form
    (:meth:`plan_step`), an eval-mode fold (:meth:`fold`) and a config
    (:meth:`get_config`). The class attributes below tell the model and the trainer
    what they need to know about a layer without asking for its class.
    """

    #: The output width the layer fixes (Dense: its units; None: same as its input).
    units: int | None = None
    #: Needs two or more rows per training batch (batch statistics).
    needs_batch_statistics = False
    #: The row softmax that ends a classifier (a cross-entropy loss fuses it).
    softmax = False

    def __init__(self) -> None:
        self.input_dim: int | None = None
        self.output_dim: int | None = None
        self.dtype: np.dtype | None = None
        self.params: dict[str, tuple[int, ...]] = {}
        self.states: dict[str, tuple[int, ...]] = {}
        self.p: dict[str, np.ndarray] = {}  # parameter views
        self.g: dict[str, np.ndarray] = {}  # gradient views
        self.s: dict[str, np.ndarray] = {}  # state views
        self._buffers: dict[tuple, np.ndarray] = {}

    # -- construction ------------------------------------------------------------------

    def build(self, input_dim: int, dtype: np.dtype, next_layer: Layer | None = None) -> int:
        """Fix the input width and dtype; declare parameters; return the output width."""
        self.input_dim, self.dtype = int(input_dim), np.dtype(dtype)
        self.output_dim = self.input_dim
        self._buffers.clear()
        return self.output_dim

    def initialize(self, rng: np.random.Generator) -> None:
        """Fill freshly bound parameter and state views with initial values."""

    def bind(self, params: dict, grads: dict, states: dict) -> None:
        self.p, self.g, self.s = params, grads, states

    def __getstate__(self) -> dict:
        """Configuration and build facts only: views, buffers and caches are not pickled
        (the model re-binds the views; buffers are recreated on demand)."""
        drop = {"p", "g", "s", "_buffers", "_caches", "_cache", "_x", "_out", "_mask"}
        state = {k: v for k, v in self.__dict__.items() if k not in drop}
        state.update(p={}, g={}, s={}, _buffers={})
        if "_caches" in self.__dict__:
            state.update(_caches={}, _cache=None)
        return state

    def _buffer(self, name: str, shape: tuple, dtype=None) -> np.ndarray:
        """A scratch array reused across calls with the same shape."""
        key = (name, shape)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = np.empty(shape, self.dtype if dtype is None else dtype)
        return buf

    # -- computation -------------------------------------------------------------------

    def forward(self, x: np.ndarray, training: bool, rng: np.random.Generator | None = None
                ) -> np.ndarray:
        """Output for input ``x`` (n, input_dim); training mode may cache what backward needs."""
        return x

    def backward(self, dout: np.ndarray, need_dx: bool = True) -> np.ndarray | None:
        """Gradient w.r.t. the input; parameter gradients go to the bound gradient views."""
        return dout

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Eval-mode output for prediction. The built-in layers return a new array of
        ``x``'s dtype (or ``x`` itself for the identity) and never write ``x``: no buffer
        is shared between calls, so concurrent predictions from many threads are safe.
        Default: ``forward(x, training=False)``, which is only as thread-safe as that
        forward (a layer computing into ``_buffer`` scratch should override this)."""
        return self.forward(x, False)

    # -- planned steps and eval-mode folding ---------------------------------------------

    def planned_activation(self) -> tuple[str, float] | None:
        """``(kernel activation name, alpha)`` if a planned step can run this layer as an
        elementwise activation (fused into the op before it); None otherwise."""
        return None

    def plan_step(self, x: np.ndarray, x_writable: bool, next_layer: Layer | None
                  ) -> PlannedStep | str:
        """This layer's training pass on the batch buffer ``x``, bound once; or a string
        saying why it runs per-layer. ``x_writable``: the layer may overwrite ``x`` in
        place; ``next_layer``: the layer after it (None at the end), which the planned
        op may fuse (then ``PlannedStep.fused_next``)."""
        return f"{type(self).__name__} layers run per-layer"

    def fold(self, steps: list, previous: Layer | None) -> None:
        """Add this layer's eval-mode step to ``steps`` (see ``Sequential._inference_plan``):
        ``["affine", W, b, layer]`` (float64, ``h @ W + b``), ``["scale", a, b, layer]``
        (``h * a + b``) or ``["layer", layer]`` (its own eval forward). A layer may merge
        into the step before it when ``previous`` produced that step. Default: its own
        forward."""
        steps.append(["layer", self])

    def plan_infer(self, x: np.ndarray, x_writable: bool, next_layer: Layer | None
                   ) -> PlannedStep | str:
        """This layer's eval-mode pass on the buffer ``x``, bound once (forward ops only;
        the arguments are :meth:`plan_step`'s), or a string saying why it predicts
        through :meth:`infer`. The ops read the live parameter and state views on every
        run, so a planned prediction always sees the current weights."""
        return f"{type(self).__name__} layers predict through infer"

    # -- description -------------------------------------------------------------------

    def get_config(self) -> dict:
        return {}

    @property
    def n_params(self) -> int:
        return sum(math.prod(shape) for shape in self.params.values())

    def describe(self) -> str:
        """A note for the model summary (empty by default)."""
        return ""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class Dense(Layer):
    """Fully connected layer ``out = x @ kernel + bias``; ``kernel`` has shape (in, units).

    Parameters
    ----------
    units : int
        Output width.
    use_bias : bool or "auto"
        ``"auto"``: a bias unless the next layer is a BatchNorm, whose shift
        beta makes a bias redundant (the course); ``True`` forces one.
    kernel_initializer : {"he", "glorot", "lecun", "normal", "zeros"}
        He (normal, variance 2/in) suits ReLU; Glorot (uniform,
        variance 2/(in+out)) and LeCun (normal, variance 1/in) suit tanh/sigmoid.
    """

    def __init__(self, units: int, use_bias="auto", kernel_initializer: str = "he") -> None:
        super().__init__()
        units = _checks.integer("units", units, minimum=1)
        if use_bias not in (True, False, "auto"):
            raise ValueError(f"use_bias must be True, False or 'auto'; got {use_bias!r}")
        if kernel_initializer not in _INITIALIZERS:
            raise ValueError(f"kernel_initializer must be one of {_INITIALIZERS}; "
                             f"got {kernel_initializer!r}")
        self.units = int(units)
        self.use_bias = use_bias
        self.kernel_initializer = kernel_initializer
        self.has_bias = use_bias is True
        self._bias_note = ""
        self._x: np.ndarray | None = None

    def build(self, input_dim, dtype, next_layer=None) -> int:
        super().build(input_dim, dtype, next_layer)
        # a layer of batch statistics shifts by its own beta: a bias before it is redundant
        followed_by_bn = next_layer is not None and next_layer.needs_batch_statistics
        self.has_bias = self.use_bias is True or (self.use_bias == "auto" and not followed_by_bn)
        self._bias_note = "no bias: followed by BatchNorm" if (
            self.use_bias == "auto" and followed_by_bn) else ""
        self.params = {"kernel": (self.input_dim, self.units)}
        if self.has_bias:
            self.params["bias"] = (self.units,)
        self.output_dim = self.units
        return self.units

    def initialize(self, rng) -> None:
        fan_in, fan_out = self.input_dim, self.units
        kernel = self.p["kernel"]
        init = self.kernel_initializer
        if init == "he":
            kernel[...] = rng.standard_normal(kernel.shape) * math.sqrt(2.0 / fan_in)
        elif init == "lecun":
            kernel[...] = rng.standard_normal(kernel.shape) * math.sqrt(1.0 / fan_in)
        elif init == "glorot":
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            kernel[...] = rng.uniform(-limit, limit, kernel.shape)
        elif init == "normal":
            kernel[...] = rng.standard_normal(kernel.shape) * 0.01
        else:
            kernel[...] = 0.0
        if self.has_bias:
            self.p["bias"][...] = 0.0

    def forward(self, x, training, rng=None):
        out = self._buffer("out", (x.shape[0], self.units))
        np.matmul(x, self.p["kernel"], out=out)
        if self.has_bias:
            out += self.p["bias"]
        self._x = x
        return out

    def infer(self, x):
        out = x @ self.p["kernel"].astype(x.dtype, copy=False)
        if self.has_bias:
            out += self.p["bias"]
        return out

    def backward(self, dout, need_dx=True):
        np.matmul(self._x.T, dout, out=self.g["kernel"])
        if self.has_bias:
            np.sum(dout, axis=0, out=self.g["bias"])
        if not need_dx:
            return None
        dx = self._buffer("dx", (dout.shape[0], self.input_dim))
        np.matmul(dout, self.p["kernel"].T, out=dx)
        return dx

    def plan_step(self, x, x_writable, next_layer):
        out = np.empty((x.shape[0], self.units), self.dtype)
        bias = self.p["bias"] if self.has_bias else None
        forward = [ops.plan_matmul(x, self.p["kernel"], out, bias=bias)]

        def backward(d, need_dx):
            steps = [ops.plan_matmul(x, d, self.g["kernel"], trans_a=True)]
            if self.has_bias:
                steps.append(ops.plan_column_sum(d, self.g["bias"]))
            if not need_dx:
                return steps, None
            dx = np.empty_like(x)
            steps.append(ops.plan_matmul(d, self.p["kernel"], dx, trans_b=True))
            return steps, dx

        # the backward reads x, never the output: the next layer may overwrite it
        return PlannedStep(forward, out, backward, writable=True)

    def plan_infer(self, x, x_writable, next_layer):
        out = np.empty((x.shape[0], self.units), self.dtype)
        bias = self.p["bias"] if self.has_bias else None
        return _inference_step([ops.plan_matmul(x, self.p["kernel"], out, bias=bias)], out,
                               writable=True)

    def fold(self, steps, previous) -> None:
        kernel = self.p["kernel"].astype(np.float64)
        bias = (self.p["bias"].astype(np.float64) if self.has_bias
                else np.zeros(self.units))
        steps.append(["affine", kernel, bias, self])

    def get_config(self) -> dict:
        return {"units": self.units, "use_bias": self.use_bias,
                "kernel_initializer": self.kernel_initializer}

    def describe(self) -> str:
        return self._bias_note


class BatchNorm(Layer):
    """Batch normalisation over the batch (PyTorch ``BatchNorm1d`` numerics).

    Training: normalise with the batch mean and biased variance, scale by
    ``gamma`` and shift by ``beta`` (the course's beta), and update the running
    statistics with ``momentum`` (0.1: an exponentially weighted average with
    the course's beta = 0.9; the running variance is unbiased). Eval: the
    running statistics, so a prediction never depends on the rest of the batch.
    Note Keras' ``momentum`` is the EWA's beta (0.99); here it is 1 - beta.
    """

    needs_batch_statistics = True

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum = _checks.real("momentum", momentum, 0.0, 1.0)
        self.eps = _checks.real("eps", eps, 0.0, float("inf"), low_open=True, high_open=True)
        self._caches: dict[int, ops.BatchNormCache] = {}
        self._cache: ops.BatchNormCache | None = None

    def build(self, input_dim, dtype, next_layer=None) -> int:
        super().build(input_dim, dtype, next_layer)
        self.params = {"gamma": (self.input_dim,), "beta": (self.input_dim,)}
        self.states = {"running_mean": (self.input_dim,), "running_var": (self.input_dim,)}
        self._caches.clear()
        return self.output_dim

    def initialize(self, rng) -> None:
        self.p["gamma"][...] = 1.0
        self.p["beta"][...] = 0.0
        self.s["running_mean"][...] = 0.0
        self.s["running_var"][...] = 1.0

    def forward(self, x, training, rng=None):
        n = x.shape[0]
        out = self._buffer("out", x.shape)
        cache = self._caches.get(n)
        out, cache = ops.batchnorm_forward(
            x, self.p["gamma"], self.p["beta"], self.s["running_mean"], self.s["running_var"],
            training=training, momentum=self.momentum, eps=self.eps, out=out, cache=cache)
        self._caches[n] = self._cache = cache
        return out

    def backward(self, dout, need_dx=True):
        dx = self._buffer("dx", dout.shape)
        ops.batchnorm_backward(dout, self._cache, dx=dx, dgamma=self.g["gamma"],
                               dbeta=self.g["beta"])
        return dx

    def infer(self, x):
        dt = x.dtype
        out, _ = ops.batchnorm_forward(
            x, self.p["gamma"].astype(dt, copy=False), self.p["beta"].astype(dt, copy=False),
            self.s["running_mean"].astype(dt, copy=False),
            self.s["running_var"].astype(dt, copy=False), training=False, eps=self.eps)
        return out

    def scale_shift(self) -> tuple[np.ndarray, np.ndarray]:
        """The eval-mode affine map ``out = x * scale + shift`` (float64), for BN folding."""
        scale = self.p["gamma"].astype(np.float64) / np.sqrt(
            self.s["running_var"].astype(np.float64) + self.eps)
        shift = self.p["beta"] - self.s["running_mean"] * scale
        return scale, shift

    def plan_step(self, x, x_writable, next_layer):
        act = next_layer.planned_activation() if next_layer is not None else None
        name, alpha = act if act is not None else ("identity", 0.0)
        dtype = self.dtype
        out = np.empty_like(x)
        cache = ops.BatchNormCache(True, np.empty_like(x), None, np.empty(x.shape[1], dtype),
                                   np.empty(x.shape[1], dtype), self.p["gamma"])
        forward = [ops.plan_batchnorm_train(
            x, self.p["gamma"], self.p["beta"], self.s["running_mean"], self.s["running_var"],
            out=out, cache=cache, momentum=self.momentum, eps=self.eps, activation=name,
            alpha=alpha)]

        def backward(d, need_dx):
            # the activation's derivative (from the output) fused in; dx in place of d
            return [ops.plan_batchnorm_backward(
                d, cache, dx=d, dgamma=self.g["gamma"], dbeta=self.g["beta"],
                y=out if name != "identity" else None, activation=name, alpha=alpha)], d

        return PlannedStep(forward, out, backward, writable=False, fused_next=act is not None)

    def plan_infer(self, x, x_writable, next_layer):
        # the running statistics, read live by the op (not folded into the Dense before)
        act = next_layer.planned_activation() if next_layer is not None else None
        name, alpha = act if act is not None else ("identity", 0.0)
        out = x if x_writable else np.empty_like(x)
        op = ops.plan_batchnorm_eval(
            x, self.p["gamma"], self.p["beta"], self.s["running_mean"], self.s["running_var"],
            out=out, eps=self.eps, activation=name, alpha=alpha)
        return _inference_step([op], out, writable=True, fused_next=act is not None)

    def fold(self, steps, previous) -> None:
        scale, shift = self.scale_shift()
        if steps and steps[-1][0] == "affine" and steps[-1][3] is previous:
            # W' = W * scale, b' = b * scale + shift: one affine map, in float64
            _, kernel, bias, _ = steps[-1]
            steps[-1] = ["affine", kernel * scale, bias * scale + shift, previous]
        else:
            steps.append(["scale", scale, shift, self])

    def get_config(self) -> dict:
        return {"momentum": self.momentum, "eps": self.eps}


BatchNormalization = BatchNorm


class Activation(Layer):
    """An elementwise nonlinearity. A class that a bound kernel computes names it in
    ``kernel_activation`` in its own body; planned steps then run it in place on the
    output of the layer before (or fused into a BatchNorm's op). A subclass of such a
    class (which may change ``forward``) runs per-layer and predicts with its own
    ``forward`` unless it names the kernel again."""

    #: The bound kernel's name for this activation (None: planned steps cannot run it).
    kernel_activation: str | None = None
    #: The Dense initialiser that suits it (He for ReLU-like, Glorot otherwise).
    initializer = "glorot"

    def _own_kernel(self) -> bool:
        return type(self).__dict__.get("kernel_activation") is not None

    def planned_activation(self):
        if not self._own_kernel():
            return None
        return self.kernel_activation, float(getattr(self, "alpha", 0.0))

    def infer(self, x):
        return self._infer(x) if self._own_kernel() else self.forward(x, False)

    def _infer(self, x):
        """The built-in eval forward (a new array); see :meth:`Layer.infer`."""
        return self.forward(x, False)

    def plan_step(self, x, x_writable, next_layer):
        act = self.planned_activation()
        if act is None:
            return super().plan_step(x, x_writable, next_layer)
        if not x_writable:
            # planned activations run in place on the output of a layer whose backward
            # does not need that output (a Dense)
            return "an activation that does not follow a Dense or BatchNorm layer"
        name, alpha = act

        def backward(d, need_dx):
            return [ops.plan_activation(x, name, alpha=alpha, dout=d)], d

        return PlannedStep([ops.plan_activation(x, name, alpha=alpha)], x, backward,
                           writable=False)

    def plan_infer(self, x, x_writable, next_layer):
        act = self.planned_activation()
        if act is None:
            return super().plan_infer(x, x_writable, next_layer)
        if not x_writable:
            return "an activation on a buffer it may not overwrite"
        name, alpha = act
        return _inference_step([ops.plan_activation(x, name, alpha=alpha)], x, writable=True)


class Identity(Activation):
    """``x`` unchanged: a linear hidden layer (scikit-learn's ``activation="identity"``)."""

    def forward(self, x, training, rng=None):
        return x

    def backward(self, dout, need_dx=True):
        return dout

    def infer(self, x):
        return x

    def plan_step(self, x, x_writable, next_layer):
        return PlannedStep([], x, lambda d, need_dx: ([], d), writable=x_writable)

    def plan_infer(self, x, x_writable, next_layer):
        return _inference_step([], x, writable=x_writable)

    def fold(self, steps, previous) -> None:
        pass  # nothing to compute in eval mode


class ReLU(Activation):
    """``max(x, 0)``."""

    kernel_activation = "relu"
    initializer = "he"

    def forward(self, x, training, rng=None):
        out = self._buffer("out", x.shape)
        np.maximum(x, 0, out=out)
        self._out = out
        return out

    def _infer(self, x):
        return np.maximum(x, x.dtype.type(0))

    def backward(self, dout, need_dx=True):
        dx = self._buffer("dx", dout.shape)
        np.sign(self._out, out=dx)  # 1 where the unit was active, 0 elsewhere
        dx *= dout
        return dx


class LeakyReLU(Activation):
    """``x`` where positive, ``alpha * x`` elsewhere (0 <= alpha < 1)."""

    kernel_activation = "leaky_relu"
    initializer = "he"

    def __init__(self, alpha: float = 0.01) -> None:
        super().__init__()
        self.alpha = _checks.real("alpha", alpha, 0.0, 1.0, high_open=True)

    def forward(self, x, training, rng=None):
        out = self._buffer("out", x.shape)
        np.multiply(x, self.dtype.type(self.alpha), out=out)
        np.maximum(x, out, out=out)
        self._x = x
        return out

    def _infer(self, x):
        out = np.multiply(x, self.dtype.type(self.alpha), dtype=x.dtype)
        return np.maximum(x, out, out=out)

    def backward(self, dout, need_dx=True):
        positive = self._buffer("positive", dout.shape, np.bool_)
        np.greater(self._x, 0, out=positive)
        dx = self._buffer("dx", dout.shape)
        np.multiply(dout, self.dtype.type(self.alpha), out=dx)
        np.copyto(dx, dout, where=positive)
        return dx

    def get_config(self) -> dict:
        return {"alpha": self.alpha}


class Tanh(Activation):
    """``tanh(x)``."""

    kernel_activation = "tanh"

    def forward(self, x, training, rng=None):
        out = self._buffer("out", x.shape)
        np.tanh(x, out=out)
        self._out = out
        return out

    def _infer(self, x):
        return np.tanh(x)

    def backward(self, dout, need_dx=True):
        dx = self._buffer("dx", dout.shape)
        np.multiply(self._out, self._out, out=dx)
        np.subtract(1, dx, out=dx)
        dx *= dout
        return dx


class Sigmoid(Activation):
    """``1 / (1 + exp(-x))``, computed as ``(1 + tanh(x / 2)) / 2`` (no overflow)."""

    kernel_activation = "sigmoid"

    def forward(self, x, training, rng=None):
        out = self._buffer("out", x.shape)
        half = self.dtype.type(0.5)
        np.multiply(x, half, out=out)
        np.tanh(out, out=out)
        out *= half
        out += half
        self._out = out
        return out

    def _infer(self, x):
        half = self.dtype.type(0.5)
        out = np.multiply(x, half, dtype=x.dtype)
        np.tanh(out, out=out)
        out *= half
        out += half
        return out

    def backward(self, dout, need_dx=True):
        dx = self._buffer("dx", dout.shape)
        np.subtract(1, self._out, out=dx)
        dx *= self._out
        dx *= dout
        return dx


class Softmax(Layer):
    """Row softmax: the output layer of a classifier.

    With the (default) cross-entropy loss the model does not run it while
    training: the loss takes the logits and the fused kernel does softmax and
    cross-entropy in one pass. ``predict_proba`` applies it.
    """

    softmax = True

    def forward(self, x, training, rng=None):
        out = self._buffer("out", x.shape)
        ops.softmax(x, out=out)
        self._out = out
        return out

    def infer(self, x):
        return ops.softmax(x)

    def plan_infer(self, x, x_writable, next_layer):
        if not x_writable:
            return "a Softmax on a buffer it may not overwrite"
        return _inference_step([ops.plan_softmax(x)], x, writable=True)

    def backward(self, dout, need_dx=True):
        # d(softmax)^T dout = p * (dout - sum(dout * p))
        n = dout.shape[0]
        dx = self._buffer("dx", dout.shape)
        dots = self._buffer("dots", (n, 1))
        np.multiply(dout, self._out, out=dx)
        np.sum(dx, axis=1, keepdims=True, out=dots)
        np.subtract(dout, dots, out=dx)
        dx *= self._out
        return dx


class Dropout(Layer):
    """Inverted dropout: in training, zero each unit with probability ``rate`` and scale the
    rest by ``1 / (1 - rate)``; identity in eval mode."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = _checks.real("rate", rate, 0.0, 1.0, high_open=True)

    def forward(self, x, training, rng=None):
        if not training or self.rate == 0.0:
            self._mask = None
            return x
        if rng is None:
            raise ValueError("Dropout needs a random generator in training mode")
        uniform = self._buffer("uniform", x.shape)
        rng.random(dtype=self.dtype.type, out=uniform)
        keep = self._buffer("keep", x.shape, np.bool_)
        np.greater_equal(uniform, self.dtype.type(self.rate), out=keep)
        out = self._buffer("out", x.shape)
        np.multiply(x, keep, out=out)
        out *= self.dtype.type(1.0 / (1.0 - self.rate))
        self._mask = keep
        return out

    def backward(self, dout, need_dx=True):
        if self._mask is None:
            return dout
        dx = self._buffer("dx", dout.shape)
        np.multiply(dout, self._mask, out=dx)
        dx *= self.dtype.type(1.0 / (1.0 - self.rate))
        return dx

    def infer(self, x):
        return x  # the identity in eval mode

    def plan_infer(self, x, x_writable, next_layer):
        return _inference_step([], x, writable=x_writable)

    def fold(self, steps, previous) -> None:
        pass  # the identity in eval mode

    def get_config(self) -> dict:
        return {"rate": self.rate}


class Standardize(Layer):
    """Feature standardisation, ``(x - mean) / std``, carried inside the model (Keras:
    ``Normalization``).

    The statistics are the model's non-trainable state: saved and loaded with it, so
    ``fastnn.load(path).predict(raw_X)`` standardises ``raw_X`` as training did. Learn them
    from the training data with :meth:`adapt` (before or after the model is built), or give
    them. A constant feature gets ``std`` 1 (it becomes 0, never NaN).

    Parameters
    ----------
    mean, std : array-like of shape (features,), optional
        Known statistics (``std`` > 0); default: learnt by :meth:`adapt`.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[1.0, 10.0], [3.0, 10.0]])
    >>> layer = Standardize().adapt(X)
    >>> layer.mean.tolist(), layer.std.tolist()
    ([2.0, 10.0], [1.0, 1.0])
    """

    def __init__(self, mean=None, std=None) -> None:
        super().__init__()
        self._adapted: tuple[np.ndarray, np.ndarray] | None = None
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither (then call adapt)")
        if mean is not None:
            mean = np.asarray(mean, dtype=np.float64)
            std = np.asarray(std, dtype=np.float64)
            if mean.ndim != 1 or std.shape != mean.shape or mean.size == 0:
                raise ValueError(f"mean and std must be 1-D of the same length; got shapes "
                                 f"{mean.shape} and {std.shape}")
            if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
                raise ValueError("mean must be finite and std finite and > 0")
            self._adapted = (mean.copy(), std.copy())

    def adapt(self, X) -> Standardize:
        """Learn ``mean`` and ``std`` (biased, per feature) from ``X`` (n, features);
        returns the layer."""
        X = _checks.features("X", X, self.input_dim, np.float64)
        mean = X.mean(axis=0)
        std = X.std(axis=0)
        std[std == 0] = 1.0
        self._adapted = (mean, std)
        if "mean" in self.s:  # already in a model: write the state views
            self.s["mean"][...] = mean
            self.s["std"][...] = std
        return self

    @property
    def mean(self) -> np.ndarray | None:
        """The per-feature mean (None until adapted)."""
        return self._stats()[0]

    @property
    def std(self) -> np.ndarray | None:
        """The per-feature standard deviation (None until adapted)."""
        return self._stats()[1]

    def _stats(self) -> tuple:
        if "std" in self.s:
            if not (self.s["std"] > 0).all():
                return None, None
            return self.s["mean"].copy(), self.s["std"].copy()
        return self._adapted if self._adapted is not None else (None, None)

    def _require_adapted(self) -> None:
        if not (self.s["std"] > 0).all():
            raise ValueError("the Standardize layer is not adapted: call "
                             "layer.adapt(X_train) (or give mean= and std=) before fit")

    def build(self, input_dim, dtype, next_layer=None) -> int:
        if self._adapted is not None and self._adapted[0].size != int(input_dim):
            raise ValueError(f"Standardize was adapted on {self._adapted[0].size} features; "
                             f"the model's input has {input_dim}")
        super().build(input_dim, dtype, next_layer)
        self.states = {"mean": (self.input_dim,), "std": (self.input_dim,)}
        return self.output_dim

    def initialize(self, rng) -> None:
        mean, std = self._adapted if self._adapted is not None else (0.0, 0.0)
        self.s["mean"][...] = mean
        self.s["std"][...] = std  # 0: not adapted yet (a saved model's load overwrites it)

    def forward(self, x, training, rng=None):
        self._require_adapted()
        out = self._buffer("out", x.shape)
        np.subtract(x, self.s["mean"], out=out)
        out /= self.s["std"]
        return out

    def backward(self, dout, need_dx=True):
        if not need_dx:
            return None
        dx = self._buffer("dx", dout.shape)
        np.divide(dout, self.s["std"], out=dx)
        return dx

    def infer(self, x):
        self._require_adapted()
        dt = x.dtype
        return (x - self.s["mean"].astype(dt)) / self.s["std"].astype(dt)

    def plan_step(self, x, x_writable, next_layer):
        self._require_adapted()
        out = np.empty_like(x)
        forward = [ops.plan_standardize(x, self.s["mean"], self.s["std"], out)]
        zeros = np.zeros(self.input_dim, self.dtype)

        def backward(d, need_dx):  # dx = d / std
            if not need_dx:
                return [], None
            dx = np.empty_like(d)
            return [ops.plan_standardize(d, zeros, self.s["std"], dx)], dx

        return PlannedStep(forward, out, backward, writable=True)

    def plan_infer(self, x, x_writable, next_layer):
        self._require_adapted()
        out = x if x_writable else np.empty_like(x)
        return _inference_step([ops.plan_standardize(x, self.s["mean"], self.s["std"], out)],
                               out, writable=True)

    def fold(self, steps, previous) -> None:
        self._require_adapted()
        inv = 1.0 / self.s["std"].astype(np.float64)
        steps.append(["scale", inv, -self.s["mean"] * inv, self])

    def describe(self) -> str:
        return "mean and std of the training data"


_CLASSES = {cls.__name__: cls for cls in (Dense, BatchNorm, Identity, ReLU, LeakyReLU, Tanh,
                                          Sigmoid, Softmax, Dropout, Standardize)}
_CLASSES["BatchNormalization"] = BatchNorm


def from_config(config: dict) -> Layer:
    """Rebuild a layer from ``{"class": name, "config": {...}}``."""
    name = config.get("class")
    if name not in _CLASSES:
        raise ValueError(f"unknown layer class {name!r}; expected one of {sorted(_CLASSES)}")
    return _CLASSES[name](**config.get("config", {}))


def activation(name: str) -> type[Layer]:
    """The activation layer class called ``name`` (see :data:`fastnn._names.ACTIVATIONS`).

    >>> activation("logistic").__name__
    'Sigmoid'
    """
    if not isinstance(name, str) or name not in _names.ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_names.ACTIVATIONS)}; got "
                         f"{name!r}")
    return _CLASSES[_names.ACTIVATIONS[name]]


_activation_by_name = activation  # mlp's argument of the same name shadows it


def mlp(hidden, n_outputs: int, *, activation="relu", batch_norm: bool = True,
        dropout: float = 0.0, softmax: bool = True) -> list[Layer]:
    """The layers of a multi-layer perceptron, in the course's order.

    Each hidden width gets ``Dense`` (He initialisation for ReLU-like activations,
    Glorot otherwise), then ``BatchNorm`` (if asked; the Dense then has no bias), the
    activation and ``Dropout`` (if ``dropout > 0``); then the output ``Dense`` and, for a
    classifier, ``Softmax``.

    Parameters
    ----------
    hidden : sequence of int
    n_outputs : int
    activation : str or Layer class
        "relu", "leaky_relu", "tanh", "sigmoid" (alias "logistic"), "identity", or a
        Layer subclass.
    batch_norm, dropout, softmax : as described above.

    >>> [type(layer).__name__ for layer in mlp([8], 3)]
    ['Dense', 'BatchNorm', 'ReLU', 'Dense', 'Softmax']
    """
    if isinstance(activation, str):
        activation = _activation_by_name(activation)
    init = getattr(activation, "initializer", "glorot")
    layers: list[Layer] = []
    for width in hidden:
        layers.append(Dense(width, kernel_initializer=init))
        if batch_norm:
            layers.append(BatchNorm())
        layers.append(activation())
        if dropout:
            layers.append(Dropout(dropout))
    layers.append(Dense(n_outputs, kernel_initializer="glorot"))
    if softmax:
        layers.append(Softmax())
    return layers
