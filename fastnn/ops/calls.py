"""Per-call kernels: validate every argument, allocate missing outputs, call one kernel.

Conventions shared by every function:

* Read-only inputs may be any array (read-only, memory-mapped, strided or broadcast): a
  non-contiguous input is copied once to C order.
* Outputs (``out=``, ``grad=``, ...) and state updated in place (running statistics,
  optimizer moments, parameters) must be C-contiguous, writable and of the right dtype;
  they are never copied, because a copy would lose the write. An output may be the very
  same array as the input it replaces where a docstring says so, and must not otherwise
  overlap another argument.
* float32 and float64 are supported; all floating arrays of one call must share one
  dtype (no silent promotion).
"""

from __future__ import annotations

import math

import numpy as np

from .. import _checks
from . import backends as _backends
from .arrays import (
    _C_ALIGNED,
    _C_ALIGNED_WRITABLE,
    _FLOAT32,
    _FLOAT64,
    _INT32,
    _INT64,
    _check_no_overlap,
    _check_outputs,
    _flat_state,
    _float_input,
    _owner,
    _require_rows,
    _step_count,
    _writable,
)

__all__ = ["BatchNormCache", "adam_update", "batchnorm_backward", "batchnorm_forward",
           "rmsprop_update", "sgd_update", "softmax", "softmax_cross_entropy"]

_INF = math.inf


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
    momentum = _checks.real("momentum", momentum, 0.0, 1.0)
    eps = _checks.real("eps", eps, 0.0, _INF, low_open=True, high_open=True)

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
        _backends._active.kernel("batchnorm_forward_train", dtype)(
            x, gamma, beta, out, x_hat, mean, inv_std,
            running_mean, running_var, has_running, momentum, eps,
        )
        x_ref = None
    else:
        _backends._active.kernel("batchnorm_forward_eval", dtype)(
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
        _backends._active.kernel("batchnorm_backward_train", dtype)(
            dout, cache.x_hat, cache.gamma, cache.inv_std, dx, dgamma, dbeta
        )
    else:
        _backends._active.kernel("batchnorm_backward_eval", dtype)(
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
    smoothing = _checks.real("label_smoothing", label_smoothing, 0.0, 1.0)
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
    loss = _backends._active.kernel("softmax_cross_entropy", dtype, labels.dtype)(
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
    _backends._active.kernel("softmax", logits.dtype)(logits, out)
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
    lr = _checks.real("lr", lr, 0.0, _INF, high_open=True)
    beta1 = _checks.real("beta1", beta1, 0.0, 1.0, high_open=True)
    beta2 = _checks.real("beta2", beta2, 0.0, 1.0, high_open=True)
    eps = _checks.real("eps", eps, 0.0, _INF, high_open=True)
    weight_decay = _checks.real("weight_decay", weight_decay, 0.0, _INF, high_open=True)
    bias_correction1 = 1.0 - beta1**t
    bias_correction2 = 1.0 - beta2**t
    _backends._active.kernel("adam_update", dtype)(
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
    lr = _checks.real("lr", lr, 0.0, _INF, high_open=True)
    momentum = _checks.real("momentum", momentum, 0.0, 1.0)
    dampening = _checks.real("dampening", dampening, 0.0, 1.0)
    weight_decay = _checks.real("weight_decay", weight_decay, 0.0, _INF, high_open=True)
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
    _backends._active.kernel("sgd_update", param.dtype)(
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
    lr = _checks.real("lr", lr, 0.0, _INF, high_open=True)
    alpha = _checks.real("alpha", alpha, 0.0, 1.0)
    eps = _checks.real("eps", eps, 0.0, _INF, high_open=True)
    weight_decay = _checks.real("weight_decay", weight_decay, 0.0, _INF, high_open=True)
    momentum = _checks.real("momentum", momentum, 0.0, 1.0)
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
    _backends._active.kernel("rmsprop_update", param.dtype)(
        param, grad, square_avg, momentum_buffer, grad_avg, lr, alpha, eps, weight_decay, momentum
    )
