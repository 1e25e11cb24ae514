"""Layers: Dense, BatchNorm, activations, Dropout, Softmax.

A layer declares its parameters (shapes, in Keras order) and its
non-trainable state; the model owns one flat parameter buffer, one flat
gradient buffer and one flat state buffer, and binds each layer to views into
them. Activations and gradients live in buffers the layer keeps per batch
size, so a steady-state training step allocates no arrays. Numerical kernels
come only from :mod:`fastnn.ops`; the rest is NumPy with ``out=``.
"""

from __future__ import annotations

import math

import numpy as np

from . import _checks, ops

__all__ = [
    "BatchNorm",
    "BatchNormalization",
    "Dense",
    "Dropout",
    "Layer",
    "LeakyReLU",
    "ReLU",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "from_config",
    "mlp",
]

_INITIALIZERS = ("he", "glorot", "lecun", "normal", "zeros")


class Layer:
    """Base class of all layers.

    Subclasses set ``params`` / ``states`` (name -> shape) in :meth:`build` and
    implement :meth:`forward` and :meth:`backward`.
    """

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
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units < 1:
            raise ValueError(f"units must be an integer >= 1; got {units!r}")
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
        followed_by_bn = isinstance(next_layer, BatchNorm)
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

    def backward(self, dout, need_dx=True):
        np.matmul(self._x.T, dout, out=self.g["kernel"])
        if self.has_bias:
            np.sum(dout, axis=0, out=self.g["bias"])
        if not need_dx:
            return None
        dx = self._buffer("dx", (dout.shape[0], self.input_dim))
        np.matmul(dout, self.p["kernel"].T, out=dx)
        return dx

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

    def scale_shift(self) -> tuple[np.ndarray, np.ndarray]:
        """The eval-mode affine map ``out = x * scale + shift`` (float64), for BN folding."""
        scale = self.p["gamma"].astype(np.float64) / np.sqrt(
            self.s["running_var"].astype(np.float64) + self.eps)
        shift = self.p["beta"] - self.s["running_mean"] * scale
        return scale, shift

    def get_config(self) -> dict:
        return {"momentum": self.momentum, "eps": self.eps}


BatchNormalization = BatchNorm


class ReLU(Layer):
    """``max(x, 0)``."""

    def forward(self, x, training, rng=None):
        out = self._buffer("out", x.shape)
        np.maximum(x, 0, out=out)
        self._out = out
        return out

    def backward(self, dout, need_dx=True):
        dx = self._buffer("dx", dout.shape)
        np.sign(self._out, out=dx)  # 1 where the unit was active, 0 elsewhere
        dx *= dout
        return dx


class LeakyReLU(Layer):
    """``x`` where positive, ``alpha * x`` elsewhere (0 <= alpha < 1)."""

    def __init__(self, alpha: float = 0.01) -> None:
        super().__init__()
        self.alpha = _checks.real("alpha", alpha, 0.0, 1.0, high_open=True)

    def forward(self, x, training, rng=None):
        out = self._buffer("out", x.shape)
        np.multiply(x, self.dtype.type(self.alpha), out=out)
        np.maximum(x, out, out=out)
        self._x = x
        return out

    def backward(self, dout, need_dx=True):
        positive = self._buffer("positive", dout.shape, np.bool_)
        np.greater(self._x, 0, out=positive)
        dx = self._buffer("dx", dout.shape)
        np.multiply(dout, self.dtype.type(self.alpha), out=dx)
        np.copyto(dx, dout, where=positive)
        return dx

    def get_config(self) -> dict:
        return {"alpha": self.alpha}


class Tanh(Layer):
    """``tanh(x)``."""

    def forward(self, x, training, rng=None):
        out = self._buffer("out", x.shape)
        np.tanh(x, out=out)
        self._out = out
        return out

    def backward(self, dout, need_dx=True):
        dx = self._buffer("dx", dout.shape)
        np.multiply(self._out, self._out, out=dx)
        np.subtract(1, dx, out=dx)
        dx *= dout
        return dx


class Sigmoid(Layer):
    """``1 / (1 + exp(-x))``, computed as ``(1 + tanh(x / 2)) / 2`` (no overflow)."""

    def forward(self, x, training, rng=None):
        out = self._buffer("out", x.shape)
        half = self.dtype.type(0.5)
        np.multiply(x, half, out=out)
        np.tanh(out, out=out)
        out *= half
        out += half
        self._out = out
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

    def forward(self, x, training, rng=None):
        out = self._buffer("out", x.shape)
        ops.softmax(x, out=out)
        self._out = out
        return out

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

    def get_config(self) -> dict:
        return {"rate": self.rate}


_CLASSES = {cls.__name__: cls for cls in (Dense, BatchNorm, ReLU, LeakyReLU, Tanh, Sigmoid,
                                          Softmax, Dropout)}
_CLASSES["BatchNormalization"] = BatchNorm


def from_config(config: dict) -> Layer:
    """Rebuild a layer from ``{"class": name, "config": {...}}``."""
    name = config.get("class")
    if name not in _CLASSES:
        raise ValueError(f"unknown layer class {name!r}; expected one of {sorted(_CLASSES)}")
    return _CLASSES[name](**config.get("config", {}))


_ACTIVATION_NAMES = {"relu": ReLU, "leaky_relu": LeakyReLU, "tanh": Tanh, "sigmoid": Sigmoid,
                     "logistic": Sigmoid}


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
        "relu", "leaky_relu", "tanh", "sigmoid" (alias "logistic"), or a Layer subclass.
    batch_norm, dropout, softmax : as described above.

    >>> [type(layer).__name__ for layer in mlp([8], 3)]
    ['Dense', 'BatchNorm', 'ReLU', 'Dense', 'Softmax']
    """
    if isinstance(activation, str):
        if activation not in _ACTIVATION_NAMES:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATION_NAMES)} or a "
                             f"Layer class; got {activation!r}")
        activation = _ACTIVATION_NAMES[activation]
    init = "he" if activation in (ReLU, LeakyReLU) else "glorot"
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
