"""The kernel door: validated entry points to fastnn's numerical kernels.

Every function here checks its arguments (shape, dtype agreement, contiguity,
writability of outputs and state, label range, finite and in-range scalars),
allocates the outputs the caller did not pass, and then calls exactly one
kernel of the active backend:

* ``"cython"``: ``fastnn._kernels``, compiled, typed memoryviews, no bounds
  checks (so nothing may reach it unvalidated);
* ``"numpy"``: ``fastnn._numpy_kernels``, the readable reference.

This is the only module that imports a backend. Switch the whole library with
:func:`set_backend` or, for a block of code, the :func:`backend` context
manager. The backend choice is process-wide (not per thread).

Conventions shared by every function:

* Read-only inputs may be any array (read-only, memory-mapped, strided or
  broadcast): a non-contiguous input is copied once to C order.
* Outputs (``out=``, ``grad=``, ...) and state updated in place (running
  statistics, optimizer moments, parameters) must be C-contiguous, writable
  and of the right dtype; they are never copied, because a copy would lose
  the write. An output may be the very same array as the input it replaces
  where a docstring says so, and must not otherwise overlap another argument.
* float32 and float64 are supported; all floating arrays of one call must
  share one dtype (no silent promotion).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import operator
import os
import warnings
from collections.abc import Iterator

import numpy as np

from . import _numpy_kernels

__all__ = [
    "BatchNormCache",
    "FastnnBuildWarning",
    "adam_update",
    "available_backends",
    "backend",
    "batchnorm_backward",
    "batchnorm_forward",
    "cython_status",
    "get_backend",
    "rmsprop_update",
    "set_backend",
    "sgd_update",
    "softmax",
    "softmax_cross_entropy",
]

_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)
_INT32 = np.dtype(np.int32)
_INT64 = np.dtype(np.int64)
_INF = math.inf

_KERNEL_NAMES = (
    "batchnorm_forward_train",
    "batchnorm_forward_eval",
    "batchnorm_backward_train",
    "batchnorm_backward_eval",
    "softmax_cross_entropy",
    "softmax",
    "adam_update",
    "sgd_update",
    "rmsprop_update",
)


class FastnnBuildWarning(UserWarning):
    """The compiled kernels are missing or stale; fastnn runs on NumPy instead."""


# --------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------


class _Backend:
    """A backend's kernels, looked up per dtype without Cython's fused dispatch."""

    def __init__(self, name: str, module) -> None:
        self.name = name
        self.module = module
        self.info = module.build_info()
        self._table: dict[tuple, object] = {}
        for kernel in _KERNEL_NAMES:
            fn = getattr(module, kernel)
            signatures = getattr(fn, "__signatures__", None)
            for dtype in (_FLOAT32, _FLOAT64):
                ctype = "float" if dtype is _FLOAT32 else "double"
                if kernel != "softmax_cross_entropy":
                    spec = fn if signatures is None else fn[ctype]
                    self._table[(kernel, dtype.num, 0)] = spec
                    continue
                for label, label_ctype in ((_INT32, "int32_t"), (_INT64, "int64_t")):
                    spec = fn if signatures is None else fn[ctype, label_ctype]
                    self._table[(kernel, dtype.num, label.num)] = spec

    def kernel(self, name: str, dtype: np.dtype, label_dtype: np.dtype | None = None):
        """The kernel ``name`` specialised for ``dtype`` (and the labels' dtype)."""
        return self._table[(name, dtype.num, 0 if label_dtype is None else label_dtype.num)]


def _stale_reason(module) -> str | None:
    """Why a compiled module does not match the .pyx beside it, or None."""
    built = module.build_info().get("source_sha256", "")
    source = os.path.join(os.path.dirname(module.__file__), "_kernels.pyx")
    if not built or not os.path.isfile(source):
        return None  # an installed wheel ships no source to compare with
    with open(source, "rb") as fh:
        current = hashlib.sha256(fh.read()).hexdigest()
    if current != built:
        return (
            f"the compiled module {os.path.basename(module.__file__)} was built from an older "
            f"_kernels.pyx than the one beside it (an editable install not rebuilt?)"
        )
    return None


def _load_cython() -> tuple[_Backend | None, str | None]:
    try:
        from . import _kernels
    except ImportError as exc:
        return None, f"the compiled module fastnn._kernels could not be imported ({exc})"
    reason = _stale_reason(_kernels)
    if reason is not None:
        return None, reason
    return _Backend("cython", _kernels), None


_NUMPY = _Backend("numpy", _numpy_kernels)
_CYTHON, _CYTHON_PROBLEM = _load_cython()
_BACKENDS = {"numpy": _NUMPY}
if _CYTHON is not None:
    _BACKENDS["cython"] = _CYTHON
else:
    warnings.warn(
        f"fastnn: {_CYTHON_PROBLEM}; falling back to the NumPy backend, which is slower. "
        "Rebuild with `pip install .` (or `python setup.py build_ext --inplace`).",
        FastnnBuildWarning,
        stacklevel=2,
    )


def _initial_backend() -> _Backend:
    requested = os.environ.get("FASTNN_BACKEND", "").strip().lower()
    if requested in _BACKENDS:
        return _BACKENDS[requested]
    if requested and requested not in ("cython", "numpy"):
        warnings.warn(
            f"FASTNN_BACKEND must be 'cython' or 'numpy'; got {requested!r}; ignoring it",
            stacklevel=2,
        )
    return _CYTHON if _CYTHON is not None else _NUMPY


_active: _Backend = _initial_backend()


def available_backends() -> list[str]:
    """Names of the backends that can be selected here (``"numpy"`` always)."""
    return sorted(_BACKENDS)


def cython_status() -> str | None:
    """None if the compiled backend loaded, else the reason it did not."""
    return _CYTHON_PROBLEM


def get_backend() -> str:
    """The name of the active backend: ``"cython"`` or ``"numpy"``."""
    return _active.name


def set_backend(name: str) -> None:
    """Select the kernels used by the whole library: ``"cython"`` or ``"numpy"``.

    Raises
    ------
    ValueError
        If ``name`` is not a backend name.
    RuntimeError
        If ``name`` is ``"cython"`` but the compiled module could not be used.
    """
    global _active
    if name not in ("cython", "numpy"):
        raise ValueError(f"backend must be 'cython' or 'numpy'; got {name!r}")
    if name not in _BACKENDS:
        raise RuntimeError(f"the cython backend is unavailable: {_CYTHON_PROBLEM}")
    _active = _BACKENDS[name]


@contextlib.contextmanager
def backend(name: str) -> Iterator[str]:
    """Context manager running a block of code on one backend, then restoring the previous.

    Examples
    --------
    >>> import fastnn
    >>> with fastnn.backend("numpy"):
    ...     fastnn.get_backend()
    'numpy'
    """
    previous = _active.name
    set_backend(name)
    try:
        yield name
    finally:
        set_backend(previous)


def _backend_info(name: str) -> dict:
    return dict(_BACKENDS[name].info)


# --------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------


# NumPy's flag bits (stable C API): C-contiguous, aligned, writeable.
_C_ALIGNED = 0x0001 | 0x0100
_C_ALIGNED_WRITABLE = _C_ALIGNED | 0x0400


def _dtype_error(name: str, actual: np.dtype, expected: np.dtype | None) -> TypeError:
    if expected is None:
        return TypeError(f"{name} must have dtype float32 or float64; got {actual}")
    return TypeError(f"{name} must have dtype {expected} (the dtype of the data); got {actual}")


def _float_input(name: str, a, ndim: int, dtype: np.dtype | None = None) -> np.ndarray:
    """A read-only floating input: copied to aligned C order if needed, never cast."""
    if type(a) is not np.ndarray:
        if a is None:
            raise TypeError(f"{name} is required; got None")
        a = np.asarray(a)
    dt = a.dtype
    # Builtin dtypes are singletons, so `is` is the fast path; `==` catches equal copies.
    if dtype is None:
        if dt is not _FLOAT32 and dt is not _FLOAT64 and dt != _FLOAT32 and dt != _FLOAT64:
            raise _dtype_error(name, dt, None)
    elif dt is not dtype and dt != dtype:
        raise _dtype_error(name, dt, dtype)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array; got shape {a.shape}")
    if a.flags.num & _C_ALIGNED != _C_ALIGNED:
        a = np.array(a, order="C", copy=True)
    return a


def _writable(name: str, a, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """An output or in-place state array: right shape and dtype, C-contiguous, writable."""
    if type(a) is not np.ndarray and not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array; got {type(a).__name__}")
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}; got {a.shape}")
    dt = a.dtype
    if dt is not dtype and dt != dtype:
        raise _dtype_error(name, dt, dtype)
    if a.flags.num & _C_ALIGNED_WRITABLE != _C_ALIGNED_WRITABLE:
        flags = a.flags
        if not flags.writeable:
            raise ValueError(f"{name} must be writable: it is written in place")
        if not flags.c_contiguous:
            raise ValueError(
                f"{name} must be C-contiguous: it is written in place, so it cannot be copied"
            )
        raise ValueError(f"{name} must be aligned for its dtype {dt}")
    return a


def _flat_state(name: str, a, size: int, dtype: np.dtype) -> np.ndarray:
    """Optimizer state or parameters of any shape, as a flat view (no copy)."""
    if type(a) is not np.ndarray and not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array; got {type(a).__name__}")
    if a.size != size:
        raise ValueError(f"{name} must have {size} elements (as param); got shape {a.shape}")
    _writable(name, a, a.shape, dtype)
    return a if a.ndim == 1 else a.reshape(-1)


def _owner(a: np.ndarray):
    """The ndarray that owns a's memory, or None if it is not an ndarray."""
    base = a.base
    while base is not None:
        if type(base) is not np.ndarray and not isinstance(base, np.ndarray):
            return None
        a, base = base, base.base
    return a


def _disjoint(a: np.ndarray, b: np.ndarray) -> bool:
    # Arrays with different owning ndarrays cannot overlap; otherwise ask NumPy
    # (its bounds test is exact for the contiguous arrays used here).
    if a.base is None and b.base is None:
        return a is not b  # both own their memory: the common case, decided fast
    ra, rb = _owner(a), _owner(b)
    if ra is not None and rb is not None and ra is not rb:
        return True
    return not np.may_share_memory(a, b)


def _check_no_overlap(pairs) -> None:
    for (name_a, a), (name_b, b) in pairs:
        if not _disjoint(a, b):
            raise ValueError(f"{name_a} and {name_b} must not share memory")


def _check_outputs(outputs: list, inputs: list) -> None:
    """Each (name, array) output shares memory with no other output and no input."""
    named = outputs + inputs
    if len({id(a) for _, a in named}) == len(named):
        for _, a in named:
            if a.base is not None:
                break
        else:
            return  # distinct arrays that own their memory cannot overlap: decided fast
    _check_no_overlap((a, b) for i, a in enumerate(outputs) for b in named[i + 1:])


def _scalar(name: str, value, low: float, high: float, *, low_open=False, high_open=False) -> float:
    """A finite float in [low, high] (open ends where asked)."""
    if type(value) is float and low < value < high:
        return value  # strictly inside: the common case, decided fast (NaN fails it)
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number; got {value!r}") from None
    ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok or v != v:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lo}{low}, {high}{hi}; got {value!r}")
    return v


def _step_count(step) -> int:
    if isinstance(step, bool):
        raise TypeError(f"step must be an integer >= 1; got {step!r}")
    try:
        t = operator.index(step)
    except TypeError:
        raise TypeError(f"step must be an integer >= 1; got {step!r}") from None
    if t < 1:
        raise ValueError(f"step must be >= 1 (the count including this update); got {t}")
    return t


def _require_rows(name: str, n: int, minimum: int = 1, why: str = "") -> None:
    if n < minimum:
        raise ValueError(
            f"{name} must have at least {minimum} row{'s' if minimum > 1 else ''}{why}; got {n}"
        )


# --------------------------------------------------------------------------
# Batch normalisation
# --------------------------------------------------------------------------


class BatchNormCache:
    """What :func:`batchnorm_backward` needs from a :func:`batchnorm_forward` call.

    Attributes
    ----------
    training : bool
        Whether the forward used batch statistics (True) or running ones.
    x_hat : ndarray of shape (n, d) or None
        The normalised input (training mode).
    x : ndarray of shape (n, d) or None
        A reference to the input (eval mode, where x_hat is recomputed).
    mean, inv_std : ndarray of shape (d,)
        The statistics used: ``x_hat = (x - mean) * inv_std``.
    gamma : ndarray of shape (d,)
        A reference to the scale used in the forward.

    A cache may be passed back to :func:`batchnorm_forward` as ``cache=`` to
    reuse its buffers (no allocation in a steady-state training loop).
    """

    __slots__ = ("training", "x_hat", "x", "mean", "inv_std", "gamma")

    def __init__(self, training, x_hat, x, mean, inv_std, gamma):
        self.training = training
        self.x_hat = x_hat
        self.x = x
        self.mean = mean
        self.inv_std = inv_std
        self.gamma = gamma

    @property
    def shape(self) -> tuple:
        return (self.x_hat if self.training else self.x).shape

    @property
    def dtype(self) -> np.dtype:
        return self.mean.dtype

    def __repr__(self) -> str:
        mode = "training" if self.training else "eval"
        return f"BatchNormCache({mode}, shape={self.shape}, dtype={self.dtype})"


def _reuse_cache(cache, training: bool, shape: tuple, dtype: np.dtype):
    """Buffers (x_hat, mean, inv_std) from a previous cache, or fresh ones."""
    d = shape[1]
    if cache is not None:
        if not isinstance(cache, BatchNormCache):
            raise TypeError(f"cache must be a BatchNormCache; got {type(cache).__name__}")
        if cache.mean.shape == (d,) and cache.dtype == dtype:
            x_hat = cache.x_hat
            if not training:
                return None, cache.mean, cache.inv_std
            if x_hat is not None and x_hat.shape == shape:
                return x_hat, cache.mean, cache.inv_std
    x_hat = np.empty(shape, dtype) if training else None
    return x_hat, np.empty(d, dtype), np.empty(d, dtype)


def batchnorm_forward(
    x,
    gamma,
    beta,
    running_mean=None,
    running_var=None,
    *,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    out=None,
    cache: BatchNormCache | None = None,
) -> tuple[np.ndarray, BatchNormCache]:
    """Batch normalisation over the rows of ``x`` (PyTorch ``BatchNorm1d`` semantics).

    Training (``training=True``) uses the batch statistics: with
    ``mu = mean(x, axis=0)`` and the biased ``var = mean((x - mu)**2, axis=0)``,
    ``x_hat = (x - mu) / sqrt(var + eps)`` and ``out = gamma * x_hat + beta``.
    If running statistics are given they are updated in place:
    ``running_mean <- (1 - momentum) * running_mean + momentum * mu`` and
    ``running_var <- (1 - momentum) * running_var + momentum * var * n / (n - 1)``
    (the unbiased variance). ``momentum = 0.1`` is an exponentially weighted
    average with the course's ``beta = 1 - momentum = 0.9``.

    Eval (``training=False``) uses ``running_mean`` and ``running_var``
    instead, so each row's output is independent of the rest of the batch.

    Parameters
    ----------
    x : array of shape (n, d), float32 or float64
        The batch. ``n >= 2`` in training (a single row has no variance).
    gamma, beta : arrays of shape (d,), the dtype of ``x``
        Scale and shift (required; pass ones and zeros for no affine).
    running_mean, running_var : arrays of shape (d,), optional
        Running statistics, updated in place in training; required in eval.
    training : bool
        Batch statistics (True) or running statistics (False).
    momentum : float in [0, 1]
        Weight of the new batch statistic in the running average.
    eps : float > 0
        Added to the variance before the square root.
    out : array of shape (n, d), optional
        Output buffer; may be ``x`` itself (normalise in place).
    cache : BatchNormCache, optional
        A cache from an earlier call whose buffers are reused when the shapes
        and dtype match (no allocation in a steady-state loop).

    Returns
    -------
    out : ndarray of shape (n, d)
    cache : BatchNormCache
        Pass to :func:`batchnorm_backward`.

    Raises
    ------
    ValueError, TypeError
        On a bad shape, dtype, scalar, or a batch of fewer than 2 rows in training.

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn import ops
    >>> x = np.array([[1.0, 2.0], [3.0, 6.0]])
    >>> out, cache = ops.batchnorm_forward(x, np.ones(2), np.zeros(2))
    >>> np.round(out, 4)
    array([[-1., -1.],
           [ 1.,  1.]])
    """
    x = _float_input("x", x, 2)
    n, d = x.shape
    dtype = x.dtype
    training = bool(training)
    if n < 2:
        _require_rows("x", n, 1, " (an empty batch has no statistics)")
        if training:
            raise ValueError(
                "x must have at least 2 rows in training mode: batch statistics of a single "
                "sample have zero variance (use eval mode, or a larger batch); got 1 row"
            )
    if d < 1:
        raise ValueError(f"x must have at least one feature (column); got shape {x.shape}")
    gamma = _float_input("gamma", gamma, 1, dtype)
    beta = _float_input("beta", beta, 1, dtype)
    for name, vector in (("gamma", gamma), ("beta", beta)):
        if vector.shape != (d,):
            raise ValueError(f"{name} must have shape ({d},) to match x of shape {x.shape}; "
                             f"got {vector.shape}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (or both None)")
    has_running = running_mean is not None
    if has_running:
        if training:
            running_mean = _writable("running_mean", running_mean, (d,), dtype)
            running_var = _writable("running_var", running_var, (d,), dtype)
        else:
            running_mean = _float_input("running_mean", running_mean, 1, dtype)
            running_var = _float_input("running_var", running_var, 1, dtype)
            if running_mean.shape != (d,) or running_var.shape != (d,):
                raise ValueError(
                    f"running_mean and running_var must have shape ({d},); got "
                    f"{running_mean.shape} and {running_var.shape}"
                )
    elif not training:
        raise ValueError("eval mode (training=False) needs running_mean and running_var")
    momentum = _scalar("momentum", momentum, 0.0, 1.0)
    eps = _scalar("eps", eps, 0.0, _INF, low_open=True, high_open=True)

    # Everything written (out, reused cache buffers, running statistics in training)
    # must not overlap anything else; out may be x itself (normalised in place).
    x_hat, mean, inv_std = _reuse_cache(cache, training, x.shape, dtype)
    outputs = []
    if out is None:
        out = np.empty_like(x)
    else:
        out = _writable("out", out, x.shape, dtype)
        outputs.append(("out", out))
    if cache is not None:
        outputs += [("cache mean", mean), ("cache inv_std", inv_std)]
        if x_hat is not None:
            outputs.append(("cache x_hat", x_hat))
    if has_running and training:
        outputs += [("running_mean", running_mean), ("running_var", running_var)]
    if outputs:
        inputs = [("gamma", gamma), ("beta", beta)]
        if out is not x:
            inputs.append(("x", x))
        if has_running and not training:
            inputs += [("running_mean", running_mean), ("running_var", running_var)]
        _check_outputs(outputs, inputs)

    if training:
        _active.kernel("batchnorm_forward_train", dtype)(
            x, gamma, beta, out, x_hat, mean, inv_std,
            running_mean, running_var, has_running, momentum, eps,
        )
        x_ref = None
    else:
        _active.kernel("batchnorm_forward_eval", dtype)(
            x, gamma, beta, running_mean, running_var, out, mean, inv_std, eps,
        )
        # Backward in eval mode recomputes x_hat from x; if out overwrote x, it is gone.
        x_ref = x if out is not x else None
    if cache is None:
        cache = BatchNormCache(training, x_hat, x_ref, mean, inv_std, gamma)
    else:
        cache.training, cache.x_hat, cache.x = training, x_hat, x_ref
        cache.mean, cache.inv_std, cache.gamma = mean, inv_std, gamma
    return out, cache


def batchnorm_backward(dout, cache: BatchNormCache, *, dx=None, dgamma=None, dbeta=None):
    """Gradients of :func:`batchnorm_forward` w.r.t. ``x``, ``gamma`` and ``beta``.

    Training mode (batch statistics, which depend on x):
    ``dbeta = sum(dout, 0)``, ``dgamma = sum(dout * x_hat, 0)``,
    ``dx = gamma * inv_std / n * (n * dout - dbeta - x_hat * dgamma)``.
    Eval mode (constant statistics): the same ``dbeta`` and ``dgamma``, and
    ``dx = gamma * inv_std * dout``.

    Parameters
    ----------
    dout : array of shape (n, d)
        Gradient of the loss w.r.t. the forward's output, the forward's dtype.
    cache : BatchNormCache
        From the forward call.
    dx : array of shape (n, d), optional
        Output buffer; may be ``dout`` itself.
    dgamma, dbeta : arrays of shape (d,), optional
        Output buffers.

    Returns
    -------
    dx, dgamma, dbeta : ndarrays
    """
    if not isinstance(cache, BatchNormCache):
        raise TypeError(f"cache must be the BatchNormCache returned by batchnorm_forward; got "
                        f"{type(cache).__name__}")
    if not cache.training and cache.x is None:
        raise ValueError(
            "this eval-mode cache cannot be differentiated: the forward normalised x in place "
            "(out=x), so x is gone; call batchnorm_forward without out=x to keep it"
        )
    dtype = cache.dtype
    shape = cache.shape
    dout = _float_input("dout", dout, 2, dtype)
    if dout.shape != shape:
        raise ValueError(f"dout must have shape {shape} (the forward's output); got {dout.shape}")
    d = shape[1]
    outputs = []
    if dx is None:
        dx = np.empty(shape, dtype)
    else:
        outputs.append(("dx", _writable("dx", dx, shape, dtype)))
    if dgamma is None:
        dgamma = np.empty(d, dtype)
    else:
        outputs.append(("dgamma", _writable("dgamma", dgamma, (d,), dtype)))
    if dbeta is None:
        dbeta = np.empty(d, dtype)
    else:
        outputs.append(("dbeta", _writable("dbeta", dbeta, (d,), dtype)))
    if outputs:
        inputs = [("cache mean", cache.mean), ("cache inv_std", cache.inv_std),
                  ("cache x_hat", cache.x_hat) if cache.training else ("cache x", cache.x),
                  ("gamma", cache.gamma)]
        if dx is not dout:  # dx may be dout itself
            inputs.append(("dout", dout))
        _check_outputs(outputs, inputs)
    if cache.training:
        _active.kernel("batchnorm_backward_train", dtype)(
            dout, cache.x_hat, cache.gamma, cache.inv_std, dx, dgamma, dbeta
        )
    else:
        _active.kernel("batchnorm_backward_eval", dtype)(
            dout, cache.x, cache.gamma, cache.mean, cache.inv_std, dx, dgamma, dbeta
        )
    return dx, dgamma, dbeta


# --------------------------------------------------------------------------
# Softmax and cross-entropy
# --------------------------------------------------------------------------


def _labels(labels, n: int, n_classes: int) -> np.ndarray:
    """Integer labels of shape (n,), all in [0, n_classes); int32/int64, C order."""
    if type(labels) is not np.ndarray:
        if labels is None:
            raise TypeError("labels is required; got None")
        labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be an integer array; got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match logits with {n} rows; "
                         f"got {labels.shape}")
    if labels.dtype != _INT64 and labels.dtype != _INT32:
        if labels.dtype.kind == "u" and labels.dtype.itemsize == 8 and n and labels.max() > 2**62:
            raise ValueError(f"labels must be in [0, {n_classes}) for logits with {n_classes} "
                             f"classes; got max label {labels.max()}")
        labels = labels.astype(_INT64)
    elif not labels.flags.c_contiguous:
        labels = np.ascontiguousarray(labels)
    # One reduction checks both ends: negative labels are huge when seen as unsigned.
    unsigned = labels.view(np.uint32 if labels.dtype == _INT32 else np.uint64)
    if int(np.maximum.reduce(unsigned)) >= n_classes:
        low, high = int(labels.min()), int(labels.max())
        bad = low if low < 0 else high
        which = "min" if low < 0 else "max"
        raise ValueError(f"labels must be in [0, {n_classes}) for logits with {n_classes} "
                         f"classes; got {which} label {bad}")
    return labels


def softmax_cross_entropy(
    logits,
    labels,
    *,
    label_smoothing: float = 0.0,
    class_weight=None,
    grad=None,
    row_loss=None,
) -> tuple[float, np.ndarray]:
    """Fused softmax + cross-entropy from logits: mean loss and its gradient.

    PyTorch ``CrossEntropyLoss`` semantics (mean reduction). With ``s`` the
    label smoothing, ``C`` classes, ``w`` the class weights (default 1),
    ``lsm = log_softmax(logits)`` computed with the row max subtracted::

        row_n = -(1 - s) w[y_n] lsm[n, y_n] - (s / C) sum_c w[c] lsm[n, c]
        loss  = sum_n row_n / sum_n w[y_n]
        grad[n, c] = ((1 - s) w[y_n] (p[n, c] - [c == y_n])
                      + (s / C)(sum(w) p[n, c] - w[c])) / sum_n w[y_n]

    Without weights the gradient is ``(softmax(logits) - Q) / n`` with the
    smoothed targets ``Q = (1 - s) onehot(y) + s / C``: the course's
    ``dZ = Y_hat - Y`` divided by ``n``. (With weights *and* smoothing, the
    smoothing term is weighted per class, as PyTorch does, not by ``w[y_n]``.)

    Parameters
    ----------
    logits : array of shape (n, C), float32 or float64, n >= 1
    labels : integer array of shape (n,), values in [0, C)
        int32 and int64 are used as they are; other integer types are converted.
    label_smoothing : float in [0, 1]
    class_weight : array of shape (C,), the dtype of ``logits``, optional
        Finite, non-negative; the labels' weights must not all be zero.
    grad : array of shape (n, C), optional
        Output buffer for the gradient; may be ``logits`` itself.
    row_loss : float64 array of shape (n,), optional
        Output buffer receiving each row's weighted loss ``row_n``.

    Returns
    -------
    loss : float
    grad : ndarray of shape (n, C)

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn import ops
    >>> loss, grad = ops.softmax_cross_entropy(np.zeros((2, 4)), np.array([0, 3]))
    >>> round(loss, 6) == round(float(np.log(4)), 6)
    True
    >>> grad[0]
    array([-0.375,  0.125,  0.125,  0.125])
    """
    logits = _float_input("logits", logits, 2)
    n, n_classes = logits.shape
    dtype = logits.dtype
    _require_rows("logits", n, 1, " (an empty batch has no mean loss)")
    if n_classes < 1:
        raise ValueError(f"logits must have at least one class (column); got shape {logits.shape}")
    labels = _labels(labels, n, n_classes)
    smoothing = _scalar("label_smoothing", label_smoothing, 0.0, 1.0)
    if class_weight is not None:
        class_weight = _float_input("class_weight", class_weight, 1, dtype)
        if class_weight.shape != (n_classes,):
            raise ValueError(f"class_weight must have shape ({n_classes},) for logits with "
                             f"{n_classes} classes; got {class_weight.shape}")
        if not np.all(np.isfinite(class_weight)) or np.any(class_weight < 0):
            raise ValueError("class_weight must be finite and non-negative; got "
                             f"{class_weight!r}")
        total = float(np.sum(class_weight[labels], dtype=np.float64))
        if total <= 0.0:
            raise ValueError("class_weight gives every label of this batch zero weight: "
                             "the weighted mean loss is undefined")
        inv_norm = 1.0 / total
    else:
        inv_norm = 1.0 / n
    outputs = []
    if grad is None:
        grad = np.empty_like(logits)
    else:
        outputs.append(("grad", _writable("grad", grad, logits.shape, dtype)))
    if row_loss is None:
        row_loss = np.empty(n, _FLOAT64)
    else:
        outputs.append(("row_loss", _writable("row_loss", row_loss, (n,), _FLOAT64)))
    if outputs:
        inputs = [("labels", labels)]
        if grad is not logits:  # grad may be logits itself
            inputs.append(("logits", logits))
        if class_weight is not None:
            inputs.append(("class_weight", class_weight))
        _check_outputs(outputs, inputs)
    loss = _active.kernel("softmax_cross_entropy", dtype, labels.dtype)(
        logits, labels, class_weight, grad, row_loss, smoothing, inv_norm
    )
    return float(loss), grad


def softmax(logits, *, out=None) -> np.ndarray:
    """Row-wise softmax ``exp(z - max(z)) / sum(exp(z - max(z)))``.

    Parameters
    ----------
    logits : array of shape (n, C), float32 or float64, n >= 1
    out : array of shape (n, C), optional
        Output buffer; may be ``logits`` itself.

    Returns
    -------
    probs : ndarray of shape (n, C); each row sums to 1.

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn import ops
    >>> ops.softmax(np.array([[0.0, np.log(3.0)]]))
    array([[0.25, 0.75]])
    """
    logits = _float_input("logits", logits, 2)
    n, n_classes = logits.shape
    _require_rows("logits", n, 1, " (an empty batch)")
    if n_classes < 1:
        raise ValueError(f"logits must have at least one class (column); got shape {logits.shape}")
    if out is None:
        out = np.empty_like(logits)
    else:
        out = _writable("out", out, logits.shape, logits.dtype)
        if out is not logits:  # out may be logits itself
            _check_outputs([("out", out)], [("logits", logits)])
    _active.kernel("softmax", logits.dtype)(logits, out)
    return out


# --------------------------------------------------------------------------
# Optimizer updates
# --------------------------------------------------------------------------


def _param_and_grad(param, grad) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(param, np.ndarray):
        raise TypeError(f"param must be a NumPy array; got {type(param).__name__}")
    dtype = param.dtype
    if dtype is not _FLOAT32 and dtype is not _FLOAT64:
        if dtype == _FLOAT32 or dtype == _FLOAT64:
            dtype = _FLOAT32 if dtype == _FLOAT32 else _FLOAT64
        else:
            raise TypeError(f"param must have dtype float32 or float64; got {dtype}")
    _writable("param", param, param.shape, dtype)
    if type(grad) is not np.ndarray:
        if grad is None:
            raise TypeError("grad is required; got None")
        grad = np.asarray(grad)
    if grad.shape != param.shape:
        raise ValueError(f"grad must have the shape of param {param.shape}; got {grad.shape}")
    if grad.dtype is not dtype and grad.dtype != dtype:
        raise TypeError(f"grad must have dtype {dtype} (the dtype of param); got {grad.dtype}")
    if grad.flags.num & _C_ALIGNED != _C_ALIGNED:
        grad = np.array(grad, order="C", copy=True)
    if param.ndim != 1:
        param, grad = param.reshape(-1), grad.reshape(-1)
    return param, grad


def _optimizer_buffers(param, grad, states) -> tuple[np.ndarray, np.ndarray, list]:
    """Validated flat views of param, grad and the named state buffers.

    The fast path takes the common case, 1-D arrays that each own distinct
    memory (so they cannot overlap), with every rule of the general path
    checked; anything else goes through the general path and its messages.
    """
    if (type(param) is np.ndarray and type(grad) is np.ndarray and param.ndim == 1
            and param.base is None and grad.base is None):
        dtype, shape = param.dtype, param.shape
        if ((dtype is _FLOAT32 or dtype is _FLOAT64) and grad.dtype is dtype
                and grad.shape == shape and param is not grad
                and param.flags.num & _C_ALIGNED_WRITABLE == _C_ALIGNED_WRITABLE
                and grad.flags.num & _C_ALIGNED == _C_ALIGNED):
            seen = {id(param), id(grad)}
            arrays = []
            for _, a in states:
                if not (type(a) is np.ndarray and a.base is None and a.dtype is dtype
                        and a.shape == shape and id(a) not in seen
                        and a.flags.num & _C_ALIGNED_WRITABLE == _C_ALIGNED_WRITABLE):
                    break
                seen.add(id(a))
                arrays.append(a)
            else:
                return param, grad, arrays
    param, grad = _param_and_grad(param, grad)
    flat = [(name, _flat_state(name, a, param.size, param.dtype)) for name, a in states]
    _check_states(param, grad, flat)
    return param, grad, [a for _, a in flat]


def _check_states(param, grad, states) -> None:
    """No two of param, grad and the state buffers share memory."""
    named = [("param", param), ("grad", grad), *states]
    owners = {id(_owner(a)) for _, a in named}
    if len(owners) == len(named) and id(None) not in owners:
        return  # every array has its own owner: the common case, decided fast
    _check_no_overlap((a, b) for i, a in enumerate(named) for b in named[i + 1:])


def adam_update(
    param,
    grad,
    m,
    v,
    step: int,
    *,
    lr: float = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled: bool = False,
    amsgrad: bool = False,
    v_max=None,
) -> None:
    """One Adam (or AdamW) step over a flat parameter buffer, in place.

    PyTorch's ``torch.optim.Adam``/``AdamW`` arithmetic, with ``t = step``::

        g = grad + weight_decay * param        (L2; not when decoupled)
        param *= 1 - lr * weight_decay          (AdamW: decoupled=True)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        v_max = max(v_max, v)                   (amsgrad; then used for v)
        param -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    Parameters
    ----------
    param : array, float32 or float64, C-contiguous, writable
        Parameters (any shape; treated as one flat buffer), updated in place.
    grad : array of param's shape and dtype
    m, v : arrays of param's size and dtype, C-contiguous, writable
        First and second moment estimates (start at zeros), updated in place.
    step : int >= 1
        The step count including this update (1 on the first call).
    lr : float >= 0
    beta1, beta2 : float in [0, 1)
    eps : float >= 0
    weight_decay : float >= 0
    decoupled : bool
        AdamW's decoupled weight decay instead of L2 added to the gradient.
    amsgrad : bool
        Use the running maximum of ``v``, kept in ``v_max`` (required then).
    v_max : array like ``v``, optional
    """
    states = [("m", m), ("v", v)]
    if amsgrad:
        if v_max is None:
            raise ValueError("amsgrad=True needs v_max (the running maximum of v; start at zeros)")
        states.append(("v_max", v_max))
    elif v_max is not None:
        raise ValueError("v_max is only used with amsgrad=True; got amsgrad=False")
    param, grad, buffers = _optimizer_buffers(param, grad, states)
    m, v = buffers[0], buffers[1]
    v_max = buffers[2] if amsgrad else None
    dtype = param.dtype
    t = _step_count(step)
    lr = _scalar("lr", lr, 0.0, _INF, high_open=True)
    beta1 = _scalar("beta1", beta1, 0.0, 1.0, high_open=True)
    beta2 = _scalar("beta2", beta2, 0.0, 1.0, high_open=True)
    eps = _scalar("eps", eps, 0.0, _INF, high_open=True)
    weight_decay = _scalar("weight_decay", weight_decay, 0.0, _INF, high_open=True)
    bias_correction1 = 1.0 - beta1**t
    bias_correction2 = 1.0 - beta2**t
    _active.kernel("adam_update", dtype)(
        param, grad, m, v, v_max, lr, beta1, beta2, eps, weight_decay, bool(decoupled),
        bias_correction1, bias_correction2,
    )


def sgd_update(
    param,
    grad,
    velocity=None,
    step: int = 1,
    *,
    lr: float = 1e-3,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> None:
    """One SGD step (with momentum / Nesterov) over a flat buffer, in place.

    PyTorch's ``torch.optim.SGD`` arithmetic::

        g = grad + weight_decay * param
        velocity = g                                   (step 1)
        velocity = momentum * velocity + (1 - dampening) * g   (later steps)
        g = g + momentum * velocity if nesterov else velocity
        param -= lr * g

    Parameters
    ----------
    param, grad : arrays (see :func:`adam_update`)
    velocity : array of param's size and dtype, optional
        Momentum buffer, required when ``momentum > 0``, updated in place.
    step : int >= 1
        The step count including this update; step 1 initialises the velocity.
    lr : float >= 0
    momentum : float in [0, 1]
    dampening : float in [0, 1]
    nesterov : bool
        Needs ``momentum > 0`` and ``dampening == 0``.
    weight_decay : float >= 0
    """
    t = _step_count(step)
    lr = _scalar("lr", lr, 0.0, _INF, high_open=True)
    momentum = _scalar("momentum", momentum, 0.0, 1.0)
    dampening = _scalar("dampening", dampening, 0.0, 1.0)
    weight_decay = _scalar("weight_decay", weight_decay, 0.0, _INF, high_open=True)
    nesterov = bool(nesterov)
    if nesterov and (momentum == 0.0 or dampening != 0.0):
        raise ValueError("nesterov=True needs momentum > 0 and dampening == 0; got "
                         f"momentum={momentum}, dampening={dampening}")
    if momentum > 0.0:
        if velocity is None:
            raise ValueError(f"momentum={momentum} needs velocity (start at zeros)")
        param, grad, (velocity,) = _optimizer_buffers(param, grad, [("velocity", velocity)])
    elif velocity is not None:
        raise ValueError("velocity is only used with momentum > 0; got momentum=0")
    else:
        param, grad, _ = _optimizer_buffers(param, grad, [])
    _active.kernel("sgd_update", param.dtype)(
        param, grad, velocity, lr, momentum, dampening, nesterov, weight_decay, t == 1
    )


def rmsprop_update(
    param,
    grad,
    square_avg,
    *,
    lr: float = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    momentum_buffer=None,
    grad_avg=None,
) -> None:
    """One RMSprop step over a flat buffer, in place.

    PyTorch's ``torch.optim.RMSprop`` arithmetic::

        g = grad + weight_decay * param
        square_avg = alpha * square_avg + (1 - alpha) * g**2
        grad_avg = alpha * grad_avg + (1 - alpha) * g            (centered)
        avg = sqrt(square_avg - grad_avg**2) + eps if centered else sqrt(square_avg) + eps
        momentum_buffer = momentum * momentum_buffer + g / avg   (momentum > 0)
        param -= lr * momentum_buffer   (or lr * g / avg without momentum)

    (Centered: the difference is clamped at 0 against rounding, where PyTorch
    would return NaN.)

    Parameters
    ----------
    param, grad : arrays (see :func:`adam_update`)
    square_avg : array of param's size and dtype, updated in place (start at zeros)
    lr : float >= 0
    alpha : float in [0, 1]
    eps : float >= 0
    weight_decay : float >= 0
    momentum : float in [0, 1]
    centered : bool
        Needs ``grad_avg``.
    momentum_buffer, grad_avg : arrays like ``square_avg``, optional
        Required with ``momentum > 0`` and ``centered=True`` respectively.
    """
    lr = _scalar("lr", lr, 0.0, _INF, high_open=True)
    alpha = _scalar("alpha", alpha, 0.0, 1.0)
    eps = _scalar("eps", eps, 0.0, _INF, high_open=True)
    weight_decay = _scalar("weight_decay", weight_decay, 0.0, _INF, high_open=True)
    momentum = _scalar("momentum", momentum, 0.0, 1.0)
    states = [("square_avg", square_avg)]
    if momentum > 0.0:
        if momentum_buffer is None:
            raise ValueError(f"momentum={momentum} needs momentum_buffer (start at zeros)")
        states.append(("momentum_buffer", momentum_buffer))
    elif momentum_buffer is not None:
        raise ValueError("momentum_buffer is only used with momentum > 0; got momentum=0")
    if centered:
        if grad_avg is None:
            raise ValueError("centered=True needs grad_avg (start at zeros)")
        states.append(("grad_avg", grad_avg))
    elif grad_avg is not None:
        raise ValueError("grad_avg is only used with centered=True; got centered=False")
    param, grad, buffers = _optimizer_buffers(param, grad, states)
    square_avg = buffers[0]
    momentum_buffer = buffers[1] if momentum > 0.0 else None
    grad_avg = buffers[-1] if centered else None
    _active.kernel("rmsprop_update", param.dtype)(
        param, grad, square_avg, momentum_buffer, grad_avg, lr, alpha, eps, weight_decay, momentum
    )


# --------------------------------------------------------------------------
# Planned steps: validated once, run many times
# --------------------------------------------------------------------------
# A training step runs the same kernels on the same arrays for every batch of one size.
# The ``plan_*`` functions validate those arrays once and return bound ops (compiled
# objects that keep the arrays as typed memoryviews); :func:`program` strings ops into
# one pass that runs with a single call. An op reads and writes its arrays in place on
# every run, so they must be the live arrays themselves — C-contiguous, of the right
# dtype, writable where written — and nothing is ever copied. Values that change from
# run to run are re-checked by the op where reading them unchecked could go out of
# bounds (labels, gather indices). Only the cython backend plans: with the NumPy
# backend :func:`can_plan` is False and callers use the per-call functions above.

#: Products with m * k * n up to this run in fastnn's register-blocked C loop (a BLAS
#: call costs ~4 us whatever its size); larger ones go to NumPy's matmul (BLAS).
SMALL_GEMM_MAX = 1 << 18


def can_plan() -> bool:
    """True if the active backend supports planned steps (the cython backend)."""
    return _active.name == "cython"


def _planning_module():
    if not can_plan():
        raise RuntimeError(f"planned steps need the cython backend; the active backend is "
                           f"{_active.name!r}")
    return _active.module


def _live(name: str, a, shape: tuple | None, dtype: np.dtype, *, writable: bool = False,
          ndim: int | None = None) -> np.ndarray:
    """An array a planned op will use in place on every run: never copied."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array; got {type(a).__name__}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array; got shape {a.shape}")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}; got {a.shape}")
    if a.dtype != dtype:
        raise _dtype_error(name, a.dtype, dtype)
    if writable:
        return _writable(name, a, a.shape, dtype)
    if a.flags.num & _C_ALIGNED != _C_ALIGNED:
        raise ValueError(f"{name} must be C-contiguous and aligned: a planned step reads it "
                         "in place, so it cannot be copied")
    return a


def _plan_dtype(name: str, a) -> np.dtype:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array; got {type(a).__name__}")
    if a.dtype != _FLOAT32 and a.dtype != _FLOAT64:
        raise _dtype_error(name, a.dtype, None)
    return _FLOAT64 if a.dtype == _FLOAT64 else _FLOAT32


def _activation_code(activation: str) -> int:
    codes = _planning_module().ACTIVATIONS
    if activation not in codes:
        raise ValueError(f"activation must be one of {sorted(codes)}; got {activation!r}")
    return codes[activation]


def plan_gather(X, labels, order, x_out, labels_out):
    """Bound op: ``x_out = X[order[start:start+n]]``, ``labels_out = labels[same]``.

    ``start`` is set per run by :func:`program`'s ``run(start)``; ``order`` (int64, a
    permutation of the rows, or any valid row indices) can be replaced between runs
    with ``Program.set_order``. Each run checks its indices against the rows of X.
    """
    dtype = _plan_dtype("X", X)
    X = _live("X", X, None, dtype, ndim=2)
    n_rows, width = X.shape
    x_out = _live("x_out", x_out, None, dtype, writable=True, ndim=2)
    n = x_out.shape[0]
    if x_out.shape[1] != width or n < 1:
        raise ValueError(f"x_out must have shape (n >= 1, {width}); got {x_out.shape}")
    labels = _live("labels", labels, (n_rows,), _INT64)
    labels_out = _live("labels_out", labels_out, (n,), _INT64, writable=True)
    order = _live("order", order, None, _INT64, ndim=1)
    _check_outputs([("x_out", x_out), ("labels_out", labels_out)],
                   [("X", X), ("labels", labels), ("order", order)])
    return _planning_module().GatherOp(X, labels, order, x_out, labels_out,
                                       dtype is _FLOAT64)


def plan_matmul(a, b, out, *, trans_a: bool = False, trans_b: bool = False, bias=None):
    """Bound op: ``out = op(a) @ op(b) (+ bias)``, op the transpose where asked.

    Small products (``m * k * n <= SMALL_GEMM_MAX``) run in a register-blocked C loop
    (a transposed ``a`` is read in place; a transposed ``b`` is first copied to a scratch
    buffer made here); larger ones
    call NumPy's matmul (BLAS) on the live arrays.
    """
    dtype = _plan_dtype("a", a)
    a = _live("a", a, None, dtype, ndim=2)
    b = _live("b", b, None, dtype, ndim=2)
    A = a.T if trans_a else a
    B = b.T if trans_b else b
    (m, k), (k2, n) = A.shape, B.shape
    if k != k2:
        raise ValueError(f"a and b do not chain: op(a) has shape {A.shape}, op(b) {B.shape}")
    if min(m, k, n) < 1:
        raise ValueError(f"empty product: op(a) {A.shape} @ op(b) {B.shape}")
    out = _live("out", out, (m, n), dtype, writable=True)
    inputs = [("a", a), ("b", b)]
    if bias is not None:
        bias = _live("bias", bias, (n,), dtype)
        inputs.append(("bias", bias))
    _check_outputs([("out", out)], inputs)
    module = _planning_module()
    f64 = dtype is _FLOAT64
    if m * k * n > SMALL_GEMM_MAX:
        return module.MatmulOp(np.matmul, A, B, out, bias, f64)
    bt = np.empty((k, n), dtype) if trans_b else None
    return module.GemmOp(a, b, out, bias, bool(trans_a), bool(trans_b), bt, f64)


def plan_column_sum(d, out):
    """Bound op: ``out = d.sum(axis=0)`` (summed in float64, in row order)."""
    dtype = _plan_dtype("d", d)
    d = _live("d", d, None, dtype, ndim=2)
    out = _live("out", out, (d.shape[1],), dtype, writable=True)
    _check_outputs([("out", out)], [("d", d)])
    return _planning_module().ColumnSumOp(d, out, dtype is _FLOAT64)


def plan_activation(y, activation: str, *, alpha: float = 0.0, dout=None):
    """Bound op: ``y = act(y)`` in place, or with ``dout``: ``dout *= act'`` computed from
    the activation's output ``y`` (backward, in place).

    ``activation`` is "relu", "leaky_relu" (slope ``alpha`` below 0), "tanh" or "sigmoid".
    """
    code = _activation_code(activation)
    if code == 0:
        raise ValueError("activation must be a nonlinearity here; got 'identity'")
    alpha = _scalar("alpha", alpha, 0.0, 1.0, high_open=True)
    dtype = _plan_dtype("y", y)
    y = _live("y", y, None, dtype, writable=dout is None, ndim=2)
    module = _planning_module()
    if dout is None:
        return module.ActivationOp(y, code, alpha, dtype is _FLOAT64)
    dout = _live("dout", dout, y.shape, dtype, writable=True)
    _check_outputs([("dout", dout)], [("y", y)])
    return module.ActivationBackwardOp(y, dout, code, alpha, dtype is _FLOAT64)


def plan_batchnorm_train(x, gamma, beta, running_mean, running_var, *, out, cache,
                         momentum: float = 0.1, eps: float = 1e-5,
                         activation: str = "identity", alpha: float = 0.0):
    """Bound op: training-mode :func:`batchnorm_forward` (running statistics updated),
    then ``activation`` on ``out`` in place; statistics and ``x_hat`` go to ``cache``
    (a training :class:`BatchNormCache` of x's shape, e.g. from a previous forward)."""
    code = _activation_code(activation)
    alpha = _scalar("alpha", alpha, 0.0, 1.0, high_open=True)
    momentum = _scalar("momentum", momentum, 0.0, 1.0)
    eps = _scalar("eps", eps, 0.0, _INF, low_open=True, high_open=True)
    dtype = _plan_dtype("x", x)
    x = _live("x", x, None, dtype, ndim=2)
    n, dim = x.shape
    _require_rows("x", n, 2, " (batch statistics need two samples)")
    vec = (dim,)
    gamma, beta = _live("gamma", gamma, vec, dtype), _live("beta", beta, vec, dtype)
    running_mean = _live("running_mean", running_mean, vec, dtype, writable=True)
    running_var = _live("running_var", running_var, vec, dtype, writable=True)
    out = _live("out", out, x.shape, dtype, writable=True)
    x_hat, mean, inv_std = _training_cache(cache, x.shape, dtype, writable=True)
    outputs = [("out", out), ("cache.x_hat", x_hat), ("cache.mean", mean),
               ("cache.inv_std", inv_std), ("running_mean", running_mean),
               ("running_var", running_var)]
    _check_outputs(outputs, [("x", x), ("gamma", gamma), ("beta", beta)])
    cache.gamma = gamma
    return _planning_module().BatchNormTrainOp(
        x, gamma, beta, out, x_hat, mean, inv_std, running_mean,
        running_var, momentum, eps, code, alpha, dtype is _FLOAT64)


def _training_cache(cache, shape: tuple, dtype: np.dtype, *, writable: bool) -> tuple:
    """A training BatchNormCache's (x_hat, mean, inv_std), checked as live arrays."""
    if not isinstance(cache, BatchNormCache) or not cache.training:
        raise ValueError(f"cache must be a training BatchNormCache; got {cache!r}")
    for name in ("x_hat", "mean", "inv_std"):
        if not isinstance(getattr(cache, name), np.ndarray):
            raise TypeError(f"cache.{name} must be a NumPy array; got "
                            f"{type(getattr(cache, name)).__name__}")
    vec = (shape[1],)
    return (_live("cache.x_hat", cache.x_hat, shape, dtype, writable=writable),
            _live("cache.mean", cache.mean, vec, dtype, writable=writable),
            _live("cache.inv_std", cache.inv_std, vec, dtype, writable=writable))


def plan_batchnorm_backward(dout, cache, *, dx, dgamma, dbeta, y=None,
                            activation: str = "identity", alpha: float = 0.0):
    """Bound op: ``dout *= act'`` (from the activation's output ``y``), then the training
    batch-norm backward from ``cache`` (see :func:`plan_batchnorm_train`) into ``dx``
    (which may be ``dout`` itself), ``dgamma`` and ``dbeta``."""
    code = _activation_code(activation)
    alpha = _scalar("alpha", alpha, 0.0, 1.0, high_open=True)
    if not isinstance(cache, BatchNormCache) or not cache.training:
        raise ValueError(f"cache must be a training BatchNormCache; got {cache!r}")
    dtype = _plan_dtype("cache.x_hat", cache.x_hat)
    if cache.x_hat.ndim != 2:
        raise ValueError(f"cache.x_hat must be a 2-D array; got shape {cache.x_hat.shape}")
    shape = cache.x_hat.shape
    x_hat, mean, inv_std = _training_cache(cache, shape, dtype, writable=False)
    dout_written = code != 0 or dx is dout
    dout = _live("dout", dout, shape, dtype, writable=dout_written)
    dx = _live("dx", dx, shape, dtype, writable=True)
    vec = (shape[1],)
    dgamma = _live("dgamma", dgamma, vec, dtype, writable=True)
    dbeta = _live("dbeta", dbeta, vec, dtype, writable=True)
    gamma = _live("cache.gamma", cache.gamma, vec, dtype)
    inputs = [("cache.x_hat", x_hat), ("cache.gamma", gamma), ("cache.inv_std", inv_std)]
    if code != 0:
        if y is None:
            raise ValueError(f"activation={activation!r} needs y, the activation's output")
        y = _live("y", y, shape, dtype)
        inputs.append(("y", y))
    # dout is written (the activation's derivative, or dx when dx is dout): it must not
    # overlap anything it is read with; the other outputs must not overlap each other,
    # dout or the inputs.
    outputs = [("dgamma", dgamma), ("dbeta", dbeta)] + ([] if dx is dout else [("dx", dx)])
    _check_outputs(outputs, inputs + [("dout", dout)])
    if dout_written:
        _check_outputs([("dout", dout)], inputs)
    return _planning_module().BatchNormTrainBackwardOp(
        dout, y, x_hat, gamma, inv_std, dx, dgamma, dbeta, code, alpha, dtype is _FLOAT64)


def plan_softmax_cross_entropy(logits, labels, grad, row_loss, *, class_weight=None,
                               label_smoothing: float = 0.0):
    """Bound op: :func:`softmax_cross_entropy` of ``logits`` against int64 ``labels``
    (mean, or class-weighted mean) into ``grad`` and ``row_loss`` (float64); the op's
    ``loss`` and ``correct`` (rows whose first largest logit is the label) after a run.
    Each run checks the labels it reads are in ``[0, classes)``."""
    label_smoothing = _scalar("label_smoothing", label_smoothing, 0.0, 1.0)
    dtype = _plan_dtype("logits", logits)
    logits = _live("logits", logits, None, dtype, ndim=2)
    n, ncls = logits.shape
    labels = _live("labels", labels, (n,), _INT64)
    grad = _live("grad", grad, logits.shape, dtype, writable=True)
    row_loss = _live("row_loss", row_loss, (n,), _FLOAT64, writable=True)
    inputs = [("logits", logits), ("labels", labels)]
    if class_weight is not None:
        class_weight = _live("class_weight", class_weight, (ncls,), dtype)
        if not np.all(np.isfinite(class_weight)) or np.any(class_weight < 0):
            raise ValueError("class_weight must be finite and non-negative")
        inputs.append(("class_weight", class_weight))
    _check_outputs([("grad", grad), ("row_loss", row_loss)], inputs)
    return _planning_module().SoftmaxCrossEntropyOp(
        logits, labels, class_weight, grad, row_loss, label_smoothing, dtype is _FLOAT64)


def program(ops: list, *, gather=None, loss=None):
    """The ops of one planned pass, run in order by ``Program.run(start)``, which returns
    ``loss``'s value (and exposes ``correct``). ``gather`` (one of the ops) receives
    ``start``; ``loss`` is the pass's cross-entropy op."""
    module = _planning_module()
    for name, op, cls in (("gather", gather, module.GatherOp),
                          ("loss", loss, module.SoftmaxCrossEntropyOp)):
        if op is not None and (not isinstance(op, cls) or op not in ops):
            raise ValueError(f"{name} must be a {cls.__name__} among ops; got {op!r}")
    return module.Program(list(ops), gather, loss)


def bind_adam(param, grad, m, v, v_max=None):
    """An Adam update bound to its flat buffers (validated once, as by
    :func:`adam_update`): ``op.update(lr, beta1, beta2, eps, weight_decay, decoupled,
    bias_correction1, bias_correction2)`` then costs one C call. The caller passes
    valid scalars (``fastnn.optimizers.Adam`` checks its own)."""
    dtype = _plan_dtype("param", param)
    param = _live("param", param, None, dtype, writable=True, ndim=1)
    shape = param.shape
    grad = _live("grad", grad, shape, dtype)
    states = [("m", m), ("v", v)] + ([] if v_max is None else [("v_max", v_max)])
    states = [(name, _live(name, a, shape, dtype, writable=True)) for name, a in states]
    _check_states(param, grad, states)
    buffers = [a for _, a in states]
    return _planning_module().AdamOp(param, grad, buffers[0], buffers[1],
                                     buffers[2] if v_max is not None else None,
                                     dtype is _FLOAT64)
