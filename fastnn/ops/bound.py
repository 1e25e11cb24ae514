"""Bound ops: a training step's kernels validated once, then run many times.

A training step runs the same kernels on the same arrays for every batch of one size.
The ``plan_*`` functions validate those arrays once and return bound ops (compiled
objects that keep the arrays as typed memoryviews); :func:`program` strings ops into one
pass that runs with a single call. An op reads and writes its arrays in place on every
run, so they must be the live arrays themselves (C-contiguous, of the right dtype,
writable where written) and nothing is ever copied. Values that change from run to run
are re-checked by the op where reading them unchecked could go out of bounds (labels,
gather indices). Only the cython backend plans: with the NumPy backend :func:`can_plan`
is False and callers use the per-call functions of :mod:`fastnn.ops.calls`.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .. import _checks, _threads
from . import backends as _backends
from .arrays import (
    _C_ALIGNED,
    _FLOAT32,
    _FLOAT64,
    _INT64,
    _check_outputs,
    _dtype_error,
    _require_rows,
    _writable,
)
from .calls import BatchNormCache, _check_states

__all__ = ["PACKED_MIN_M", "PACKED_MIN_N", "SMALL_GEMM_MAX", "bind_adam", "can_plan",
           "plan_activation",
           "plan_batchnorm_backward", "plan_batchnorm_eval", "plan_batchnorm_train",
           "plan_column_sum", "plan_finite", "plan_gather", "plan_matmul", "plan_softmax",
           "plan_softmax_cross_entropy", "plan_standardize", "program",
           "fuse_epilogues", "rebind_matmul_input", "uses_packed_gemm"]

_INF = math.inf

#: Products with m * k * n up to this run in fastnn's register-blocked C loop (a BLAS
#: call costs ~4 us whatever its size); larger ones go to fastnn's packed float32
#: product where the CPU runs it (AVX-512F), else NumPy's matmul (BLAS).
SMALL_GEMM_MAX = 1 << 18

#: Products narrower than this (n columns of output) go to BLAS: the packed product
#: computes 64 columns at a time, and would waste most of them.
PACKED_MIN_N = 32
#: Products of fewer rows than this go to BLAS: packing b costs more than it saves
#: (4 x 784 x 256: 42 us packed, 21 us in OpenBLAS; 8 rows: even).
PACKED_MIN_M = 8

#: ``FASTNN_PACKED_GEMM=0`` sends every large product to BLAS (read at import).
_PACKED_GEMM = os.environ.get("FASTNN_PACKED_GEMM", "1").strip() != "0"


if _backends._CYTHON is not None:  # the packed product's second thread follows the policy
    _threads.on_limit(_backends._CYTHON.module.set_gemm_threads)


def uses_packed_gemm(dtype, n: int) -> bool:
    """Whether a large planned product of ``dtype`` with ``n`` output columns runs in
    fastnn's packed product (float32 on a CPU with AVX-512F, with the compiled backend,
    unless ``FASTNN_PACKED_GEMM=0``)."""
    compiled = _backends._CYTHON
    return (_PACKED_GEMM and compiled is not None and np.dtype(dtype) == _FLOAT32
            and n >= PACKED_MIN_N and compiled.module.packed_gemm_supported())


def can_plan() -> bool:
    """True if the active backend supports planned steps (the cython backend)."""
    return _backends._active.name == "cython"


def _planning_module():
    if not can_plan():
        raise RuntimeError(f"planned steps need the cython backend; the active backend is "
                           f"{_backends._active.name!r}")
    return _backends._active.module


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


def _op_class(kind: str, dtype: np.dtype):
    """The compiled class of op ``kind`` for ``dtype``: ``GemmOp32`` or ``GemmOp64``, ..."""
    return getattr(_planning_module(), f"{kind}{64 if dtype is _FLOAT64 else 32}")


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
    return _op_class("GatherOp", dtype)(X, labels, order, x_out, labels_out)


def plan_matmul(a, b, out, *, trans_a: bool = False, trans_b: bool = False, bias=None):
    """Bound op: ``out = op(a) @ op(b) (+ bias)``, op the transpose where asked.

    Small products (``m * k * n <= SMALL_GEMM_MAX``) run in a register-blocked C loop
    (a transposed ``a`` is read in place; a transposed ``b`` is first copied to a scratch
    buffer made here); larger ones in fastnn's packed float32 product where
    :func:`uses_packed_gemm` (its workspace made here), else NumPy's matmul (BLAS), on
    the live arrays.
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
    # Narrow outputs (a classifier's last layer) with a row-major a: fastnn's C loop
    # beats BLAS at any size (1024 x 256 x 10: 87 us against OpenBLAS's 114).
    small = m * k * n <= SMALL_GEMM_MAX or (n < PACKED_MIN_N and not trans_a)
    if not small:
        if m >= PACKED_MIN_M and uses_packed_gemm(dtype, n):
            module = _planning_module()
            work = np.empty(module.packed_gemm_work(k, n), dtype)
            return module.PackedGemmOp(a, b, out, bias, bool(trans_a), bool(trans_b), work,
                                       float(_threads.PARALLEL_MIN_MACS))
        return _op_class("MatmulOp", dtype)(np.matmul, A, B, out, bias)
    bt = np.empty((k, n), dtype) if trans_b else None
    return _op_class("GemmOp", dtype)(a, b, out, bias, bool(trans_a), bool(trans_b), bt)


def fuse_epilogues(op_list: list) -> list:
    """The ops of an inference pass with what a packed product can do as it stores its
    results taken over by it: a finite check of its output, then an in-place eval-mode
    batch norm (with no activation, ReLU or LeakyReLU) of it. Saves a pass over the
    output each; results are bit-identical (the same arithmetic, in the same order)."""
    module = _planning_module()
    fused, i = [], 0
    while i < len(op_list):
        op = op_list[i]
        i += 1
        if not isinstance(op, module.PackedGemmOp):
            fused.append(op)
            continue
        finite = bn = None
        if i < len(op_list) and isinstance(op_list[i], module.FiniteOp32):
            finite = op_list[i]
            i += 1
        if i < len(op_list) and isinstance(op_list[i], module.BatchNormEvalOp32):
            bn = op_list[i]
            i += 1
        for candidate in ((finite, bn), (finite, None), (None, None)):
            try:
                op.fuse(*candidate, np.empty(3 * op.n, _FLOAT32))
            except ValueError:
                continue
            break
        fused.append(op)
        # what the product did not take over runs as before
        fused += [o for o in (finite, bn) if o is not None and o not in candidate]
    return fused


def rebind_matmul_input(op, a, bound) -> bool:
    """Make the bound product ``op`` read ``a`` in place of ``bound``, the array it was
    planned on (and back, with ``a = bound``): True if it did, False if ``op`` cannot (a
    small product in fastnn's C loop reads the planned buffer only) or ``a`` is not an
    array ``op`` may read in place (``bound``'s shape and dtype, C-contiguous, aligned).
    Saves copying a large input into a plan's buffer."""
    module = _planning_module()
    if (not isinstance(op, module.MatmulOp | module.PackedGemmOp)
            or not isinstance(a, np.ndarray)):
        return False
    if (a.shape != bound.shape or a.dtype != bound.dtype
            or a.flags.num & _C_ALIGNED != _C_ALIGNED):
        return False
    op.set_a(a)
    return True


def plan_column_sum(d, out):
    """Bound op: ``out = d.sum(axis=0)`` (summed in float64, in row order)."""
    dtype = _plan_dtype("d", d)
    d = _live("d", d, None, dtype, ndim=2)
    out = _live("out", out, (d.shape[1],), dtype, writable=True)
    _check_outputs([("out", out)], [("d", d)])
    return _op_class("ColumnSumOp", dtype)(d, out)


def plan_activation(y, activation: str, *, alpha: float = 0.0, dout=None):
    """Bound op: ``y = act(y)`` in place, or with ``dout``: ``dout *= act'`` computed from
    the activation's output ``y`` (backward, in place).

    ``activation`` is "relu", "leaky_relu" (slope ``alpha`` below 0), "tanh" or "sigmoid".
    """
    code = _activation_code(activation)
    if code == 0:
        raise ValueError("activation must be a nonlinearity here; got 'identity'")
    alpha = _checks.real("alpha", alpha, 0.0, 1.0, high_open=True)
    dtype = _plan_dtype("y", y)
    y = _live("y", y, None, dtype, writable=dout is None, ndim=2)
    if dout is None:
        return _op_class("ActivationOp", dtype)(y, code, alpha)
    dout = _live("dout", dout, y.shape, dtype, writable=True)
    _check_outputs([("dout", dout)], [("y", y)])
    return _op_class("ActivationBackwardOp", dtype)(y, dout, code, alpha)


def plan_batchnorm_train(x, gamma, beta, running_mean, running_var, *, out, cache,
                         momentum: float = 0.1, eps: float = 1e-5,
                         activation: str = "identity", alpha: float = 0.0):
    """Bound op: training-mode :func:`batchnorm_forward` (running statistics updated),
    then ``activation`` on ``out`` in place; statistics and ``x_hat`` go to ``cache``
    (a training :class:`BatchNormCache` of x's shape, e.g. from a previous forward)."""
    code = _activation_code(activation)
    alpha = _checks.real("alpha", alpha, 0.0, 1.0, high_open=True)
    momentum = _checks.real("momentum", momentum, 0.0, 1.0)
    eps = _checks.real("eps", eps, 0.0, _INF, low_open=True, high_open=True)
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
    return _op_class("BatchNormTrainOp", dtype)(
        x, gamma, beta, out, x_hat, mean, inv_std, running_mean,
        running_var, momentum, eps, code, alpha)



def plan_batchnorm_eval(x, gamma, beta, running_mean, running_var, *, out,
                        eps: float = 1e-5, activation: str = "identity", alpha: float = 0.0):
    """Bound op: eval-mode :func:`batchnorm_forward` from the running statistics, then
    ``activation`` on ``out`` in place. ``out`` may be ``x`` itself (in place). Every run
    reads the live gamma, beta and running statistics: nothing is folded or copied, so
    the op never goes stale when the weights change."""
    code = _activation_code(activation)
    alpha = _checks.real("alpha", alpha, 0.0, 1.0, high_open=True)
    eps = _checks.real("eps", eps, 0.0, _INF, low_open=True, high_open=True)
    dtype = _plan_dtype("x", x)
    x = _live("x", x, None, dtype, ndim=2)
    dim = x.shape[1]
    vec = (dim,)
    gamma, beta = _live("gamma", gamma, vec, dtype), _live("beta", beta, vec, dtype)
    running_mean = _live("running_mean", running_mean, vec, dtype)
    running_var = _live("running_var", running_var, vec, dtype)
    out = _live("out", out, x.shape, dtype, writable=True)
    mean, inv_std = np.empty(dim, dtype), np.empty(dim, dtype)  # the op's own scratch
    inputs = [("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
              ("running_var", running_var)]
    _check_outputs([("out", out)], inputs if out is x else [("x", x), *inputs])
    return _op_class("BatchNormEvalOp", dtype)(
        x, gamma, beta, running_mean, running_var, out, mean, inv_std, eps, code, alpha)


def plan_softmax(z):
    """Bound op: row softmax of ``z`` in place (the row max subtracted)."""
    dtype = _plan_dtype("z", z)
    z = _live("z", z, None, dtype, writable=True, ndim=2)
    if z.shape[1] < 1:
        raise ValueError(f"z must have at least one column; got shape {z.shape}")
    return _op_class("SoftmaxOp", dtype)(z)

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
    alpha = _checks.real("alpha", alpha, 0.0, 1.0, high_open=True)
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
    return _op_class("BatchNormTrainBackwardOp", dtype)(
        dout, y, x_hat, gamma, inv_std, dx, dgamma, dbeta, code, alpha)


def plan_softmax_cross_entropy(logits, labels, grad, row_loss, *, class_weight=None,
                               label_smoothing: float = 0.0):
    """Bound op: :func:`softmax_cross_entropy` of ``logits`` against int64 ``labels``
    (mean, or class-weighted mean) into ``grad`` and ``row_loss`` (float64); the op's
    ``loss`` and ``correct`` (rows whose first largest logit is the label) after a run.
    Each run checks the labels it reads are in ``[0, classes)``."""
    label_smoothing = _checks.real("label_smoothing", label_smoothing, 0.0, 1.0)
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
    return _op_class("SoftmaxCrossEntropyOp", dtype)(
        logits, labels, class_weight, grad, row_loss, label_smoothing)


def plan_standardize(x, mean, std, out):
    """Bound op: ``out = (x - mean) / std`` per column, reading the live ``mean`` and
    ``std`` on every run (``std`` > 0 is the caller's to keep). ``out`` may be ``x``."""
    dtype = _plan_dtype("x", x)
    x = _live("x", x, None, dtype, ndim=2)
    vec = (x.shape[1],)
    mean, std = _live("mean", mean, vec, dtype), _live("std", std, vec, dtype)
    out = _live("out", out, x.shape, dtype, writable=True)
    inputs = [("mean", mean), ("std", std)]
    _check_outputs([("out", out)], inputs if out is x else [("x", x), *inputs])
    return _op_class("StandardizeOp", dtype)(x, mean, std, out, np.empty(vec, dtype))

def plan_finite(z):
    """Bound op: after a run, its ``finite`` says whether every value of ``z`` is finite."""
    dtype = _plan_dtype("z", z)
    return _op_class("FiniteOp", dtype)(_live("z", z, None, dtype, ndim=2))

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
    return _op_class("AdamOp", dtype)(param, grad, buffers[0], buffers[1],
                                      buffers[2] if v_max is not None else None)
