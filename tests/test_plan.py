"""Planned training steps: ``fastnn._plan.TrainPlan``, the ``ops.plan_*`` door, the compiled
ops behind it, and Adam's bound update.

What must hold (fastnn/_plan.py, fastnn/ops/bound.py, DESIGN.md):

* a planned fit trains the model the per-layer path trains: the same kernels, except that
  small products run in fastnn's C GEMM instead of BLAS, so only the last bits of float
  rounding may differ;
* each bound op computes its formula (checked here against float64 NumPy);
* bad arguments raise a TypeError/ValueError naming the argument, at plan time or (labels,
  gather indices, start) at run time, and never crash the interpreter;
* a steady-state planned step (and Adam's bound update) allocates nothing.
"""

from __future__ import annotations

import itertools
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import REF_TOL
from reference import adam_steps, cross_entropy, model_forward

import fastnn
from fastnn import _kernels, ops, trainer
from fastnn._plan import TrainPlan, plan_unsupported
from fastnn.callbacks import Callback
from fastnn.layers import BatchNorm, Dense, Dropout, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from fastnn.losses import SoftmaxCrossEntropy
from fastnn.optimizers import Adam, AdamW
from fastnn.trainer import batch_sizes

F32, F64 = np.float32, np.float64
N_FEATURES, N_CLASSES = 7, 4

# Planned vs per-layer training after a few epochs, relative to each array's largest entry.
# float64: the C GEMM and BLAS round differently (~1e-16 relative per product); after ~80
# Adam steps that stays many orders below 1e-10 unless a step computes something else.
# float32: the same rounding differences are ~1e-7 relative per product (k <= 600 terms
# summed in float32 in another order); Adam's normalised steps carry a relative
# gradient difference into the weights at about the same relative size per step, and ~80
# steps accumulate to ~1e-5 at worst. 1e-4 (REF_TOL's float32 rtol) leaves room for that
# and still fails on any real difference (a wrong gradient moves weights by >1e-2).
PLAN_REL = {F32: REF_TOL[F32]["rtol"], F64: 1e-10}
# One exception, in float64: a parameter whose exact gradient is 0 (a bias in front of a
# BatchNorm that cancels it, e.g. when every row of a batch is on one side of a LeakyReLU)
# gets rounding noise instead (a few ulps of gradient terms of size <~ 0.1: |g| <~ 1e-17),
# different on each path, which Adam (v ~ g^2, so sqrt(v) << eps) turns into a step of
# about lr * g / eps: allowed per optimizer step, absolutely (observed: ~1e-12 a step).
# In float32 that noise would be ~1e-9 and the allowance useless; the float32 cases here do
# not hit the exact invariance (a case that starts to would fail, not pass silently).
ZERO_GRAD_NOISE = 1e-17


def _drift(model):
    """The float64 allowance above, summed over the optimizer steps taken."""
    if model.dtype != np.float64:
        return 0.0
    opt = model.optimizer
    rate = opt.learning_rate
    lr = rate if isinstance(rate, float) else rate.lr  # a decaying schedule's start
    return opt.iterations * lr * ZERO_GRAD_NOISE / opt.epsilon


@pytest.fixture
def cython():
    with fastnn.backend("cython"):
        yield


class _Plans(list):
    record = True  # False: count steps only (appending to a list allocates)


@pytest.fixture
def plans(monkeypatch):
    """Spy on the TrainPlans that fit builds: a list of them, each with the ``sizes`` it
    stepped (and their ``count``)."""
    made = _Plans()

    class SpyPlan(TrainPlan):
        def __init__(self, *args):
            super().__init__(*args)
            self.sizes = []
            self.count = np.zeros(1, np.int64)
            made.append(self)

        def step(self, start, size):
            if made.record:
                self.sizes.append(size)
            self.count[0] += 1
            return super().step(start, size)

        def steps(self, start, size, count, *args):
            done = super().steps(start, size, count, *args)
            if made.record:
                self.sizes += [size] * done[0]
            self.count[0] += done[0]
            return done

    monkeypatch.setattr(trainer, "TrainPlan", SpyPlan)
    return made


def _data(n, d=N_FEATURES, classes=N_CLASSES, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-2, 2, (classes, d))
    y = rng.integers(0, classes, n)
    return centers[y] + rng.standard_normal((n, d)), y


def _f(*shape, dt=F64, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dt)


def _ro(a):
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


ARCHS = {
    "dense_bn_relu": lambda: [Dense(16), BatchNorm(), ReLU(), Dense(N_CLASSES), Softmax()],
    "dense_tanh_biases": lambda: [Dense(12), Tanh(), Dense(N_CLASSES), Softmax()],
    "leaky_bn_sigmoid": lambda: [Dense(16), LeakyReLU(0.1), Dense(10), BatchNorm(), Sigmoid(),
                                 Dense(N_CLASSES), Softmax()],
    "bn_first": lambda: [BatchNorm(), Dense(8), ReLU(), Dense(N_CLASSES), Softmax()],
    "smoothing_class_weight": lambda: [Dense(16), BatchNorm(), ReLU(), Dense(N_CLASSES),
                                       Softmax()],
    # 64 x 7 x 600 > SMALL_GEMM_MAX: the first layer's products take the MatmulOp (BLAS)
    # path, the second layer's (64 x 600 x 4) the C GEMM.
    "wide": lambda: [Dense(600), BatchNorm(), ReLU(), Dense(N_CLASSES), Softmax()],
}


def _loss(arch):
    if arch == "smoothing_class_weight":
        return SoftmaxCrossEntropy(label_smoothing=0.1, class_weight=[1.0, 2.0, 0.5, 1.5])
    return None


def _model(arch, dtype=F64, seed=1, layers=None):
    return fastnn.Sequential(ARCHS[arch]() if layers is None else layers,
                             input_dim=N_FEATURES, dtype=np.dtype(dtype).name, seed=seed,
                             loss=_loss(arch))


def _fit(arch, *, plan, dtype=F64, shuffle=True, n=201, batch_size=None, epochs=4, seed=3,
         layers=None, data_seed=0):
    X, y = _data(n, seed=data_seed)
    model = _model(arch, dtype, layers=layers)
    model.plan_steps = plan
    if batch_size is None:
        batch_size = 64 if arch == "wide" else 10
    history = model.fit(X, y, epochs=epochs, batch_size=batch_size, shuffle=shuffle, seed=seed,
                        optimizer=Adam(0.01), verbose=0)
    return model, history


def _close(actual, expected, rel, what="", atol=0.0):
    """max |actual - expected| <= rel * max |expected| (+ atol): a relative error over the
    array."""
    actual, expected = np.asarray(actual, F64), np.asarray(expected, F64)
    assert actual.shape == expected.shape, what
    if actual.size == 0:
        return
    scale = max(float(np.max(np.abs(expected))), 1e-300)
    err = float(np.max(np.abs(actual - expected)))
    assert err <= rel * scale + atol, \
        f"{what}: max error {err:.3g} > {rel:g} * {scale:.3g} + {atol:.3g}"


def _assert_same_training(a, ha, b, hb, rel, n):
    assert a.optimizer.iterations == b.optimizer.iterations
    assert a.epochs_trained == b.epochs_trained
    drift = _drift(a)
    names = [f"{type(layer).__name__}{i}.{k}" for i, layer in enumerate(a.layers)
             for k in (*layer.params, *layer.states)]
    for name, wa, wb in zip(names, a.get_weights(), b.get_weights(), strict=True):
        _close(wa, wb, rel, name, drift)  # weights and BatchNorm running statistics
    sa, sb = a.optimizer.state_arrays(), b.optimizer.state_arrays()
    assert sa.keys() == sb.keys() and {"m", "v"} <= sa.keys()
    for key in sa:
        _close(sa[key], sb[key], rel, f"optimizer {key}")
    assert ha.epoch == hb.epoch
    assert ha.history.keys() == hb.history.keys()
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=rel)
    assert ha.history["lr"] == hb.history["lr"]
    if rel <= PLAN_REL[F64]:
        assert ha.history["accuracy"] == hb.history["accuracy"]
    else:  # float32: a near-tie of two logits may flip one sample's argmax
        np.testing.assert_allclose(ha.history["accuracy"], hb.history["accuracy"],
                                   rtol=0, atol=1.5 / n)


def _moved(model, arch, dtype):
    """The largest change of any weight from its initial value (so agreement means something)."""
    start = _model(arch, dtype).get_weights()
    return max(float(np.max(np.abs(w - s))) for w, s in zip(model.get_weights(), start,
                                                             strict=True))


# ----------------------------------------------------------------------------------------
# 1. Planned and per-layer training agree
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffle", "in_order"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_planned_fit_matches_per_layer_fit(cython, plans, arch, dtype, shuffle):
    n = 201
    planned, hp = _fit(arch, plan=True, dtype=dtype, shuffle=shuffle, n=n)
    assert len(plans) == 1, "the planned fit did not take planned steps"
    has_bn = any(isinstance(layer, BatchNorm) for layer in planned.layers)
    if arch == "wide":
        expected = [64, 64, 64, 9]
    elif has_bn:
        expected = [10] * 19 + [11]  # the last batch of one merged into the one before
    else:
        expected = [10] * 20 + [1]
    assert plans[0].sizes == expected * 4
    per_layer, hl = _fit(arch, plan=False, dtype=dtype, shuffle=shuffle, n=n)
    assert len(plans) == 1, "plan_steps=False still built a TrainPlan"
    assert _moved(per_layer, arch, dtype) > 0.05  # it trained: agreement is not trivial
    _assert_same_training(planned, hp, per_layer, hl, PLAN_REL[dtype], n)
    if arch == "dense_tanh_biases":
        assert all(layer.has_bias for layer in planned.layers if isinstance(layer, Dense))
    if arch == "wide":
        kinds = {cls.__name__ for op in plans[0]._programs[64].ops for cls in type(op).__mro__}
        large = "PackedGemmOp" if ops.uses_packed_gemm(dtype, 64) else "MatmulOp"
        assert {large, "GemmOp"} <= kinds, kinds


@pytest.mark.parametrize(("n", "batch_size", "arch", "expected"), [
    (203, 4, "dense_bn_relu", [4] * 50 + [3]),
    (203, 4, "dense_tanh_biases", [4] * 50 + [3]),
    (50, 7, "dense_bn_relu", [7] * 6 + [8]),  # 7 * 7 + 1: the one merged
    (50, 7, "dense_tanh_biases", [7] * 7 + [1]),
    (21, 5, "leaky_bn_sigmoid", [5, 5, 5, 6]),
    (37, 64, "bn_first", [37]),  # one batch, larger than the data
    (13, 1, "dense_tanh_biases", [1] * 13),  # single-row products throughout
    (66, 33, "wide", [33, 33]),  # 33 rows: a partial block of 4 rows in the C GEMM
])
def test_planned_fit_matches_per_layer_fit_batch_remainders(cython, plans, n, batch_size,
                                                            arch, expected):
    planned, hp = _fit(arch, plan=True, n=n, batch_size=batch_size, epochs=3)
    assert plans[0].sizes == expected * 3
    assert batch_sizes(n, batch_size, "bn" in arch) == expected
    per_layer, hl = _fit(arch, plan=False, n=n, batch_size=batch_size, epochs=3)
    _assert_same_training(planned, hp, per_layer, hl, PLAN_REL[F64], n)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_planned_cython_fit_matches_numpy_backend_fit(plans, arch, dtype):
    with fastnn.backend("cython"):
        planned, hp = _fit(arch, plan=True, dtype=dtype)
    assert len(plans) == 1
    with fastnn.backend("numpy"):
        reference, hr = _fit(arch, plan=True, dtype=dtype)  # the numpy backend never plans
    assert len(plans) == 1
    _assert_same_training(planned, hp, reference, hr, PLAN_REL[dtype], 201)


def test_planned_fit_validation_and_continuing_fit_match_per_layer(cython, plans):
    # Two fit calls (a plan per call), validation data and a per-step schedule.
    X, y = _data(150, seed=4)
    Xv, yv = _data(40, seed=5)
    runs = []
    for plan in (True, False):
        model = _model("leaky_bn_sigmoid")
        model.plan_steps = plan
        opt = Adam(fastnn.schedules.ExponentialDecay(0.02, 0.99, per_step=True))
        h1 = model.fit(X, y, epochs=2, batch_size=16, optimizer=opt, seed=2, verbose=0,
                       validation_data=(Xv, yv))
        h2 = model.fit(X, y, epochs=2, batch_size=12, seed=2, verbose=0,
                       validation_data=(Xv, yv))
        runs.append((model, h1, h2))
    assert len(plans) == 2
    (a, a1, a2), (b, b1, b2) = runs
    _assert_same_training(a, a1, b, b1, PLAN_REL[F64], 150)
    _assert_same_training(a, a2, b, b2, PLAN_REL[F64], 150)
    for key in ("val_loss", "val_accuracy"):
        np.testing.assert_allclose(a2.history[key], b2.history[key], rtol=PLAN_REL[F64])


def test_planned_fit_zero_weight_batch_raises_like_per_layer(cython):
    # class_weight gives class 0 weight 0; unshuffled, the first batch holds only class 0,
    # whose weighted mean loss is undefined. The per-layer path raises a ValueError
    # (ops.softmax_cross_entropy); the planned path must not train on NaN instead.
    X, _ = _data(40, seed=6)
    y = np.repeat(np.arange(N_CLASSES), 10)
    loss = SoftmaxCrossEntropy(class_weight=[0.0, 1.0, 1.0, 1.0])
    for plan in (False, True):
        model = fastnn.Sequential(ARCHS["dense_tanh_biases"](), input_dim=N_FEATURES,
                                  dtype="float64", seed=1, loss=loss)
        model.plan_steps = plan
        with pytest.raises(ValueError, match="weight"):
            model.fit(X, y, epochs=1, batch_size=10, shuffle=False, verbose=0)


# ----------------------------------------------------------------------------------------
# 2. One planned step leaves the per-layer gradients; loss and correct vs float64
# ----------------------------------------------------------------------------------------


def _reference_loss(model, xb, yb):
    """Training-mode loss of ``model`` on (xb, yb) from reference.py's float64 forward."""
    probs = model_forward(model, xb, training=True)
    loss = model.loss
    weight = loss.class_weight
    return cross_entropy(np.log(probs), yb, loss.label_smoothing, weight), probs


@pytest.mark.parametrize("arch", ["dense_bn_relu", "dense_tanh_biases", "leaky_bn_sigmoid",
                                  "bn_first", "smoothing_class_weight", "wide"])
def test_one_planned_step_matches_per_layer_gradients(cython, arch):
    n, start, size = 90, 7, 33  # 33 rows: four full row blocks of the C GEMM and one partial
    X, y = _data(n, seed=8)
    planned, per_layer, untouched = _model(arch), _model(arch), _model(arch)
    order = np.random.default_rng(9).permutation(n)
    plan = TrainPlan(planned, X, y)
    plan.set_order(order)
    planned._grads.fill(np.nan)  # any gradient the planned step leaves out stays NaN
    loss = plan.step(start, size)
    correct = plan.correct

    rows = order[start:start + size]
    xb, yb = X[rows], y[rows]
    logits = per_layer._forward(xb, None)
    grad = per_layer._output_grad_buffer(size)
    expected_loss = per_layer.loss(logits, yb, grad)
    per_layer._backward(grad)

    tol = 1e-12
    _close(planned._grads, per_layer._grads, tol, "gradients")
    _close(planned._states, per_layer._states, tol, "running statistics")
    np.testing.assert_array_equal(planned._params, untouched._params)  # a step only
    assert loss == pytest.approx(expected_loss, rel=tol)
    assert correct == int(np.sum(np.argmax(logits, axis=1) == yb))

    # Independently, in float64 from the definitions (reference.py).
    ref_loss, probs = _reference_loss(untouched, xb, yb)
    assert loss == pytest.approx(ref_loss, rel=REF_TOL[F64]["rtol"])
    assert correct == int(np.sum(np.argmax(probs, axis=1) == yb))
    assert 0 < correct < size  # neither count is trivial

    # ... and the gradient by central differences of that reference loss, on a spread of
    # parameters (kernels, biases, BatchNorm gamma and beta).
    idx = np.unique(np.linspace(0, planned.n_params - 1, 15).astype(int))
    h = 1e-6
    for i in idx:
        keep = untouched._params[i]
        untouched._params[i] = keep + h
        up = _reference_loss(untouched, xb, yb)[0]
        untouched._params[i] = keep - h
        down = _reference_loss(untouched, xb, yb)[0]
        untouched._params[i] = keep
        assert planned._grads[i] == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-8), i


def test_planned_step_program_per_batch_size_is_reused(cython):
    X, y = _data(64, seed=10)
    model = _model("dense_bn_relu")
    plan = TrainPlan(model, X, y)
    first = plan.step(0, 16)
    grads = model._grads.copy()
    program = plan._programs[16]
    plan.step(16, 10)
    again = plan.step(0, 16)
    assert plan._programs[16] is program and set(plan._programs) == {16, 10}
    assert again == first  # the same rows through the same weights
    np.testing.assert_array_equal(model._grads, grads)


# ----------------------------------------------------------------------------------------
# 3. plan_unsupported: a reason, and fit trains per-layer
# ----------------------------------------------------------------------------------------


def _regression_data(n=120, seed=11):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, N_FEATURES))
    return X, X @ rng.standard_normal(N_FEATURES) + 0.1 * rng.standard_normal(n)


UNSUPPORTED = {
    # name: (layers, loss, backend, plan_steps, sample_weight?, regression?, keyword)
    "dropout": (lambda: [Dense(16), ReLU(), Dropout(0.2), Dense(N_CLASSES), Softmax()],
                None, "cython", True, False, False, "dropout"),
    "mse_regressor": (lambda: [Dense(16), Tanh(), Dense(1)], "mse", "cython", True, False, True,
                      "cross-entropy"),
    "cross_entropy_without_softmax": (lambda: [Dense(16), ReLU(), Dense(N_CLASSES)],
                                      "cross_entropy", "cython", True, False, False,
                                      "cross-entropy"),
    "sample_weight": (ARCHS["dense_bn_relu"], None, "cython", True, True, False, "weight"),
    "numpy_backend": (ARCHS["dense_bn_relu"], None, "numpy", True, False, False, "numpy"),
    "activation_after_activation": (
        lambda: [Dense(16), ReLU(), Tanh(), Dense(N_CLASSES), Softmax()], None, "cython", True,
        False, False, "activation"),
    "activation_first": (lambda: [Tanh(), Dense(16), Dense(N_CLASSES), Softmax()], None,
                         "cython", True, False, False, "activation"),
    "plan_steps_false": (ARCHS["dense_bn_relu"], None, "cython", False, False, False,
                         "plan_steps"),
}


@pytest.mark.parametrize("case", list(UNSUPPORTED))
def test_plan_unsupported_gives_a_reason_and_fit_trains_per_layer(plans, case):
    layers, loss, backend, plan_steps, weighted, regression, keyword = UNSUPPORTED[case]
    X, y = _regression_data() if regression else _data(120, seed=12)
    weights = np.random.default_rng(13).uniform(0.5, 2.0, len(y)) if weighted else None

    def fit(backend_name):
        with fastnn.backend(backend_name):
            model = fastnn.Sequential(layers(), input_dim=N_FEATURES, dtype="float64", seed=1,
                                      loss=loss)
            model.plan_steps = plan_steps
            reason = plan_unsupported(model, weights)
            history = model.fit(X, y, epochs=5, batch_size=10, optimizer=Adam(0.01), seed=3,
                                sample_weight=weights, verbose=0)
        return model, history, reason

    model, history, reason = fit(backend)
    assert isinstance(reason, str) and keyword in reason.lower(), reason
    assert plans == []  # fit went per-layer
    losses = history.history["loss"]
    assert all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0], losses
    if not regression:
        assert history.history["accuracy"][-1] > 0.8
    # The same fit on the other backend (numpy: per-layer; cython: whatever it takes) trains
    # the same model, with other kernels.
    other, other_history, _ = fit("numpy" if backend == "cython" else "cython")
    for wa, wb in zip(model.get_weights(), other.get_weights(), strict=True):
        _close(wa, wb, 1e-10)
    np.testing.assert_allclose(losses, other_history.history["loss"], rtol=1e-10)


SUPPORTED = {
    **{name: make for name, make in ARCHS.items()},
    "dense_dense": lambda: [Dense(8), Dense(N_CLASSES), Softmax()],
    "bn_bn": lambda: [Dense(8), BatchNorm(), BatchNorm(), ReLU(), Dense(N_CLASSES), Softmax()],
    "relu_then_bn": lambda: [Dense(8), ReLU(), BatchNorm(), Dense(N_CLASSES), Softmax()],
    "bn_last": lambda: [Dense(8), Tanh(), Dense(N_CLASSES), BatchNorm(), Softmax()],
    "activation_last": lambda: [Dense(8), ReLU(), Dense(N_CLASSES), Sigmoid(), Softmax()],
    "bn_tanh_bn_leaky": lambda: [Dense(9), BatchNorm(), Tanh(), Dense(6), BatchNorm(),
                                 LeakyReLU(0.2), Dense(N_CLASSES), Softmax()],
    "forced_bias_before_bn": lambda: [Dense(8, use_bias=True), BatchNorm(), ReLU(),
                                      Dense(N_CLASSES), Softmax()],
}


@pytest.mark.parametrize("case", list(SUPPORTED))
def test_supported_models_plan_and_train_like_per_layer(cython, plans, case):
    model = _model(case if case in ARCHS else "dense_bn_relu", layers=SUPPORTED[case]())
    assert plan_unsupported(model, None) is None
    planned, hp = _fit(case, plan=True, layers=SUPPORTED[case](), epochs=2, batch_size=9)
    assert len(plans) == 1 and len(plans[0].sizes) > 0
    per_layer, hl = _fit(case, plan=False, layers=SUPPORTED[case](), epochs=2, batch_size=9)
    _assert_same_training(planned, hp, per_layer, hl, PLAN_REL[F64], 201)


# ----------------------------------------------------------------------------------------
# 4. The bound ops against float64 NumPy
# ----------------------------------------------------------------------------------------

M_SIZES, K_SIZES, N_SIZES = (1, 3, 4, 5, 32, 33), (1, 7, 64, 300), (1, 10, 16, 17, 32, 40)


def _gemm_bound(A, B, bias, dtype):
    """Twice the dot-product error bound gamma_{k+1} (|A||B| + |bias|), gamma_j ~ j eps/2:
    rigorous for any summation order (blocked, FMA or BLAS); doubled because the float64
    reference rounds too (for float64 data, as much as the op)."""
    k = A.shape[1]
    mag = np.abs(A.astype(F64)) @ np.abs(B.astype(F64))
    if bias is not None:
        mag += np.abs(bias.astype(F64))
    return (k + 1) * np.finfo(dtype).eps * mag + np.finfo(dtype).tiny


@pytest.mark.parametrize(("trans_a", "trans_b"), list(itertools.product([False, True], repeat=2)),
                         ids=["nn", "nt", "tn", "tt"])
@pytest.mark.parametrize("path", ["c_gemm", "matmul_op"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_plan_matmul_matches_float64_product(cython, monkeypatch, dtype, path, trans_a, trans_b):
    monkeypatch.setattr(ops.bound, "SMALL_GEMM_MAX", 1 << 62 if path == "c_gemm" else 0)
    monkeypatch.setattr(ops.bound, "_PACKED_GEMM", False)  # BLAS (the packed: below)
    expected_type = _kernels.GemmOp if path == "c_gemm" else _kernels.MatmulOp
    rng = np.random.default_rng(14)
    sentinel = dtype(123.25)
    for m, k, n, with_bias in itertools.product(M_SIZES, K_SIZES, N_SIZES, (False, True)):
        A = rng.standard_normal((m, k)).astype(dtype)
        B = rng.standard_normal((k, n)).astype(dtype)
        a = np.ascontiguousarray(A.T) if trans_a else A
        b = np.ascontiguousarray(B.T) if trans_b else B
        bias = rng.standard_normal(n).astype(dtype) if with_bias else None
        inputs = [x.copy() for x in (a, b) + ((bias,) if with_bias else ())]
        frame = np.full((m + 2, n), sentinel)  # out is its middle rows: overruns show
        out = frame[1:m + 1]
        op = ops.plan_matmul(a, b, out, trans_a=trans_a, trans_b=trans_b, bias=bias)
        narrow = n < ops.PACKED_MIN_N and not trans_a  # the C loop at any size
        assert type(op).__base__ is (_kernels.GemmOp if narrow else expected_type)
        op()
        case = f"m={m} k={k} n={n} bias={with_bias}"
        ref = A.astype(F64) @ B.astype(F64) + (0.0 if bias is None else bias.astype(F64))
        err = np.abs(out.astype(F64) - ref)
        assert np.all(err <= _gemm_bound(A, B, bias, dtype)), (case, float(err.max()))
        assert np.all(frame[0] == sentinel) and np.all(frame[-1] == sentinel), case
        for before, after in zip(inputs, (a, b, bias), strict=False):
            np.testing.assert_array_equal(before, after, err_msg=case)  # inputs untouched
        first = out.copy()
        op()
        np.testing.assert_array_equal(out, first, err_msg=case)  # overwritten, not accumulated


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_plan_matmul_threshold_picks_the_path(cython, dtype):
    # m * k * n <= SMALL_GEMM_MAX: the C GEMM; above: the packed product (float32 on a CPU
    # with AVX-512F) or NumPy's matmul. All compute the product.
    k = ops.SMALL_GEMM_MAX // (64 * 64)
    large = _kernels.PackedGemmOp if ops.uses_packed_gemm(dtype, 64) else _kernels.MatmulOp
    for m, expected in ((64, _kernels.GemmOp), (65, large)):
        A, B = _f(m, k, dt=dtype), _f(k, 64, dt=dtype, seed=1)
        out = np.empty((m, 64), dtype)
        op = ops.plan_matmul(A, B, out)
        assert isinstance(op, expected)
        op()
        assert np.all(np.abs(out - A.astype(F64) @ B.astype(F64)) <= _gemm_bound(A, B, None,
                                                                                 dtype))


needs_packed = pytest.mark.skipif(
    not _kernels.packed_gemm_supported(),
    reason="this CPU does not run the packed product (AVX-512F); BLAS computes instead")

# Rows around the 6-row blocks, columns around the 64-column panels (and the 16-float
# vectors within them; 64 and 128: whole panels, which a row-major b gives the kernel
# where it lies, unpacked), inner dimensions around the 512-step blocks and the 16 x 16
# transposes of a transposed b.
PACKED_SHAPES = [(m, k, n) for m in (1, 5, 6, 7, 13, 100) for k in (1, 15, 17, 512, 513, 1100)
                 for n in (1, 16, 31, 64, 65, 128, 200)]


@needs_packed
@pytest.mark.parametrize(("trans_a", "trans_b"), list(itertools.product([False, True], repeat=2)),
                         ids=["nn", "nt", "tn", "tt"])
def test_packed_product_matches_float64_product(cython, monkeypatch, trans_a, trans_b):
    monkeypatch.setattr(ops.bound, "SMALL_GEMM_MAX", 0)
    monkeypatch.setattr(ops.bound, "PACKED_MIN_N", 1)  # every shape through the packed op
    monkeypatch.setattr(ops.bound, "PACKED_MIN_M", 1)
    rng = np.random.default_rng(21)
    sentinel = F32(123.25)
    for (m, k, n), with_bias in itertools.product(PACKED_SHAPES, (False, True)):
        A = rng.standard_normal((m, k)).astype(F32)
        B = rng.standard_normal((k, n)).astype(F32)
        a = np.ascontiguousarray(A.T) if trans_a else A
        b = np.ascontiguousarray(B.T) if trans_b else B
        bias = rng.standard_normal(n).astype(F32) if with_bias else None
        inputs = [x.copy() for x in (a, b) + ((bias,) if with_bias else ())]
        guard = np.full(m * n + 64, sentinel)  # out is its first m * n floats
        out = guard[:m * n].reshape(m, n)
        op = ops.plan_matmul(a, b, out, trans_a=trans_a, trans_b=trans_b, bias=bias)
        assert type(op) is _kernels.PackedGemmOp
        op()
        case = f"m={m} k={k} n={n} bias={with_bias}"
        ref = A.astype(F64) @ B.astype(F64) + (0.0 if bias is None else bias.astype(F64))
        err = np.abs(out.astype(F64) - ref)
        assert np.all(err <= _gemm_bound(A, B, bias, F32)), (case, float(err.max()))
        assert np.all(guard[m * n:] == sentinel), case  # nothing written past the end
        for before, after in zip(inputs, (a, b, bias), strict=False):
            np.testing.assert_array_equal(before, after, err_msg=case)  # inputs untouched
        first = out.copy()
        op()
        np.testing.assert_array_equal(out, first, err_msg=case)  # overwritten, not summed


@needs_packed
def test_packed_product_paths_and_switch(cython, monkeypatch):
    A, B = _f(100, 300, dt=F32), _f(300, 64, dt=F32, seed=2)
    out = np.empty((100, 64), F32)
    assert type(ops.plan_matmul(A, B, out)) is _kernels.PackedGemmOp
    # float64, and outputs narrower than PACKED_MIN_N, go to BLAS
    assert type(ops.plan_matmul(A.astype(F64), B.astype(F64), out.astype(F64))).__base__ \
        is _kernels.MatmulOp
    narrow = np.empty((100, ops.PACKED_MIN_N - 1), F32)
    assert type(ops.plan_matmul(A, _f(300, ops.PACKED_MIN_N - 1, dt=F32), narrow)).__base__ \
        is _kernels.GemmOp  # fastnn's C loop, at any size
    # a transposed a (op(a) = A.T, 300 x 100): the C loop would read it strided
    assert type(ops.plan_matmul(A, _f(100, ops.PACKED_MIN_N - 1, dt=F32),
                                np.empty((300, ops.PACKED_MIN_N - 1), F32), trans_a=True)
                ).__base__ is _kernels.MatmulOp
    few = ops.PACKED_MIN_M - 1  # and products of few rows
    assert type(ops.plan_matmul(A[:few], _f(300, 1024, dt=F32), np.empty((few, 1024), F32))
                ).__base__ is _kernels.MatmulOp
    monkeypatch.setattr(ops.bound, "_PACKED_GEMM", False)  # FASTNN_PACKED_GEMM=0
    assert not ops.uses_packed_gemm(F32, 64)
    assert type(ops.plan_matmul(A, B, out)).__base__ is _kernels.MatmulOp


@needs_packed
def test_packed_op_rejects_what_would_overrun(cython):
    A, B = _f(100, 300, dt=F32), _f(300, 64, dt=F32, seed=2)
    out = np.empty((100, 64), F32)
    work = np.empty(_kernels.packed_gemm_work(300, 64), F32)
    with pytest.raises(ValueError, match="work must hold"):
        _kernels.PackedGemmOp(A, B, out, None, False, False, work[:-1])
    with pytest.raises(ValueError, match=r"c must have shape \(100, 64\)"):
        _kernels.PackedGemmOp(A, B, out[:99], None, False, False, work)
    with pytest.raises(ValueError, match="do not chain"):
        _kernels.PackedGemmOp(A, B[:299], out, None, False, False, work)
    with pytest.raises(ValueError, match=r"bias must have shape \(64,\)"):
        _kernels.PackedGemmOp(A, B, out, np.zeros(63, F32), False, False, work)
    op = ops.plan_matmul(A, B, out)
    with pytest.raises(ValueError, match=r"a must have shape \(100, 300\)"):
        op.set_a(A[:99])
    # rebind_matmul_input reads a caller's array in place, and back
    other = _f(100, 300, dt=F32, seed=9)
    assert ops.rebind_matmul_input(op, other, A)
    op()
    np.testing.assert_allclose(out, other.astype(F64) @ B.astype(F64), rtol=1e-4, atol=1e-4)
    assert not ops.rebind_matmul_input(op, other.astype(F64), A)  # wrong dtype: refused
    assert ops.rebind_matmul_input(op, A, A)
    op()
    np.testing.assert_allclose(out, A.astype(F64) @ B.astype(F64), rtol=1e-4, atol=1e-4)


@pytest.fixture
def two_gemm_threads(monkeypatch):
    """The packed product allowed two threads on any product (restored afterwards)."""
    monkeypatch.setattr(fastnn._threads, "PARALLEL_MIN_MACS", 0)
    monkeypatch.setattr(ops.bound, "PACKED_MIN_M", 1)
    monkeypatch.setattr(ops.bound, "SMALL_GEMM_MAX", 0)
    before = _kernels.get_gemm_threads()
    _kernels.set_gemm_threads(2)
    yield
    _kernels.set_gemm_threads(before)


@needs_packed
@pytest.mark.parametrize(("trans_a", "trans_b"), list(itertools.product([False, True], repeat=2)),
                         ids=["nn", "nt", "tn", "tt"])
def test_packed_product_on_two_threads_is_bit_identical(cython, two_gemm_threads, trans_a,
                                                         trans_b):
    rng = np.random.default_rng(5)
    # columns split between the threads (2+ panels of 64), rows split (one panel), too
    # few rows to split (one thread)
    for m, k, n in [(100, 300, 200), (7, 600, 130), (100, 70, 64), (13, 50, 40), (5, 9, 64)]:
        A = rng.standard_normal((m, k)).astype(F32)
        B = rng.standard_normal((k, n)).astype(F32)
        a = np.ascontiguousarray(A.T) if trans_a else A
        b = np.ascontiguousarray(B.T) if trans_b else B
        bias = rng.standard_normal(n).astype(F32)
        out2 = np.empty((m, n), F32)
        op = ops.plan_matmul(a, b, out2, trans_a=trans_a, trans_b=trans_b, bias=bias)
        op()
        _kernels.set_gemm_threads(1)
        out1 = np.empty((m, n), F32)
        ops.plan_matmul(a, b, out1, trans_a=trans_a, trans_b=trans_b, bias=bias)()
        _kernels.set_gemm_threads(2)
        np.testing.assert_array_equal(out2, out1, err_msg=f"m={m} k={k} n={n}")
        ref = A.astype(F64) @ B.astype(F64) + bias
        assert np.all(np.abs(out2 - ref) <= _gemm_bound(A, B, bias, F32))


@needs_packed
def test_packed_products_from_many_threads_at_once(cython, two_gemm_threads):
    # one helper thread: a caller that finds it busy computes alone; all results right
    rng = np.random.default_rng(8)
    cases = []
    for i in range(6):
        A = rng.standard_normal((90 + i, 200)).astype(F32)
        B = rng.standard_normal((200, 150)).astype(F32)
        out = np.empty((90 + i, 150), F32)
        cases.append((ops.plan_matmul(A, B, out), out, A.astype(F64) @ B.astype(F64), A, B))
    errors = []

    def work(case):
        op, out, ref, A, B = case
        for _ in range(30):
            op()
            if not np.all(np.abs(out - ref) <= _gemm_bound(A, B, None, F32)):
                errors.append(out.copy())

    threads = [threading.Thread(target=work, args=(case,)) for case in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@needs_packed
def test_thread_policy_sets_the_packed_products_threads(cython):
    from threadpoolctl import threadpool_limits

    assert _kernels.get_gemm_threads() == 1  # outside fastnn's calls
    with fastnn._threads.limited(2):
        assert _kernels.get_gemm_threads() == 2
        with fastnn._threads.limited(1):  # nested: the first block's count holds
            assert _kernels.get_gemm_threads() == 2
    assert _kernels.get_gemm_threads() == 1
    with threadpool_limits(limits=1, user_api="blas"):  # never more than BLAS is allowed
        with fastnn._threads.limited(2):
            assert _kernels.get_gemm_threads() == 1


@needs_packed
def test_packed_product_on_two_threads_after_fork(cython, two_gemm_threads):
    A = _f(120, 300, dt=F32)
    B = _f(300, 256, dt=F32, seed=3)
    out = np.empty((120, 256), F32)
    op = ops.plan_matmul(A, B, out)
    op()  # the helper thread exists now; a forked child has none
    expected = out.copy()
    pid = os.fork()
    if pid == 0:  # the child: a two-thread product must not wait for a thread that is gone
        try:
            out[:] = 0
            op()
            os._exit(0 if np.array_equal(out, expected) else 1)
        except BaseException:
            os._exit(2)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.01)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung in a two-thread product")
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (33, 17), (4, 5000), (1000, 3)])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_plan_column_sum_matches_float64_sum(cython, dtype, shape):
    d = _f(*shape, dt=dtype, seed=15) * 10
    frame = np.full(shape[1] + 2, dtype(-7.5))
    out = frame[1:-1]
    ops.plan_column_sum(d, out)()
    ref = d.astype(F64).sum(axis=0)
    # Summed in double in row order, then rounded once to the dtype.
    bound = (np.finfo(dtype).eps * np.abs(ref)
             + (shape[0] + 1) * np.finfo(F64).eps * np.abs(d.astype(F64)).sum(axis=0))
    assert np.all(np.abs(out - ref) <= bound)
    assert frame[0] == -7.5 and frame[-1] == -7.5


ACTIVATIONS = {
    "relu": (lambda x, a: np.maximum(x, 0.0), lambda y, a: (y > 0).astype(F64)),
    "leaky_relu": (lambda x, a: np.where(x > 0, x, a * x), lambda y, a: np.where(y > 0, 1.0, a)),
    "tanh": (lambda x, a: np.tanh(x), lambda y, a: 1.0 - y * y),
    "sigmoid": (lambda x, a: (1.0 + np.tanh(x / 2.0)) / 2.0, lambda y, a: y * (1.0 - y)),
}


def _activation_input(dtype):
    x = _f(37, 19, dt=dtype, seed=16) * 3
    x[0, :8] = [0.0, -0.0, 30.0, -30.0, 1e-30, -1e-30, np.inf, -np.inf]
    return x


@pytest.mark.parametrize(("name", "alpha"), [("relu", 0.0), ("leaky_relu", 0.0),
                                             ("leaky_relu", 0.1), ("leaky_relu", 0.75),
                                             ("tanh", 0.0), ("sigmoid", 0.0)])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_plan_activation_forward_and_backward_match_formulas(cython, dtype, name, alpha):
    forward, derivative = ACTIVATIONS[name]
    eps = np.finfo(dtype).eps
    x = _activation_input(dtype)
    y = x.copy()
    ops.plan_activation(y, name, alpha=alpha)()
    with np.errstate(invalid="ignore"):  # LeakyReLU(0) of -inf: 0 * -inf, NaN on both sides
        ref = forward(x.astype(F64), alpha)
    # ReLU is exact; LeakyReLU rounds alpha and one product; tanh/tanhf are within ~2 ulp,
    # and sigmoid adds a halving and an addition (values in [0, 1]).
    np.testing.assert_allclose(y, ref, rtol=4 * eps, atol=4 * eps if name in ("tanh", "sigmoid")
                               else 0)
    # Backward: d *= act'(x), from the output y.
    d = _f(37, 19, dt=dtype, seed=17)
    d_in = d.copy()
    ops.plan_activation(y, name, alpha=alpha, dout=d)()
    ref_d = d_in.astype(F64) * derivative(y.astype(F64), alpha)
    if name == "relu":
        np.testing.assert_array_equal(d, ref_d)  # d or 0: exact
    bound = 4 * eps * (np.abs(ref_d) + np.abs(d_in.astype(F64)))
    assert np.all(np.abs(d.astype(F64) - ref_d) <= bound), name


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_plan_activation_forward_propagates_nan(cython, dtype, name):
    x = _f(5, 6, dt=dtype, seed=18)
    x[1, 2] = x[4, 0] = np.nan
    ops.plan_activation(x, name, alpha=0.1)()
    assert np.isnan(x[1, 2]) and np.isnan(x[4, 0])
    assert np.count_nonzero(np.isnan(x)) == 2


@pytest.mark.parametrize("activation", ["identity", "relu", "tanh", "sigmoid", "leaky_relu"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_plan_batchnorm_ops_match_per_call_batchnorm(cython, dtype, activation):
    # The fused BatchNorm(+activation) ops against ops.batchnorm_forward/backward (the
    # per-layer path, itself tested against float64 references) and the activation formula.
    x = _f(19, 6, dt=dtype, seed=19) * 2 + 1
    gamma, beta = _f(6, dt=dtype, seed=20), _f(6, dt=dtype, seed=21)
    rm, rv = np.zeros(6, dtype), np.ones(6, dtype)
    out = np.empty_like(x)
    cache = ops.BatchNormCache(True, np.empty_like(x), None, np.empty(6, dtype),
                               np.empty(6, dtype), gamma)
    ops.plan_batchnorm_train(x, gamma, beta, rm, rv, out=out, cache=cache, momentum=0.2,
                             activation=activation, alpha=0.1)()
    rm2, rv2 = np.zeros(6, dtype), np.ones(6, dtype)
    bn_out, bn_cache = ops.batchnorm_forward(x, gamma, beta, rm2, rv2, momentum=0.2)
    forward = ACTIVATIONS.get(activation, (lambda z, a: z, lambda y, a: 1.0))[0]
    tol = {"rtol": 8 * np.finfo(dtype).eps, "atol": 8 * np.finfo(dtype).eps}
    np.testing.assert_allclose(out, forward(bn_out.astype(F64), 0.1), **tol)
    np.testing.assert_array_equal(cache.x_hat, bn_cache.x_hat)
    np.testing.assert_array_equal(rm, rm2)
    np.testing.assert_array_equal(rv, rv2)

    dout = _f(19, 6, dt=dtype, seed=22)
    derivative = ACTIVATIONS.get(activation, (None, lambda y, a: 1.0))[1]
    d_pre = (dout.astype(F64) * derivative(out.astype(F64), 0.1)).astype(dtype)
    dx_ref, dg_ref, db_ref = ops.batchnorm_backward(d_pre, bn_cache)
    d = dout.copy()
    dgamma, dbeta = np.empty(6, dtype), np.empty(6, dtype)
    ops.plan_batchnorm_backward(d, cache, dx=d, dgamma=dgamma, dbeta=dbeta,
                                y=None if activation == "identity" else out,
                                activation=activation, alpha=0.1)()
    scale = float(np.max(np.abs(dx_ref)))
    np.testing.assert_allclose(d, dx_ref, rtol=0, atol=16 * np.finfo(dtype).eps * scale)
    for got, ref in ((dgamma, dg_ref), (dbeta, db_ref)):
        np.testing.assert_allclose(got, ref, rtol=0,
                                   atol=16 * np.finfo(dtype).eps * np.abs(dout).sum(axis=0).max())


# ----------------------------------------------------------------------------------------
# 5. Bad input never crashes
# ----------------------------------------------------------------------------------------


def _gather_kw(dt=F64):
    return {"X": _f(10, 3, dt=dt), "labels": np.arange(10, dtype=np.int64) % 3,
            "order": np.arange(10, dtype=np.int64), "x_out": np.empty((4, 3), dt),
            "labels_out": np.empty(4, np.int64)}


def _matmul_kw(dt=F64):
    return {"a": _f(5, 3, dt=dt), "b": _f(3, 4, dt=dt, seed=1), "out": np.empty((5, 4), dt),
            "bias": _f(4, dt=dt, seed=2)}


def _colsum_kw(dt=F64):
    return {"d": _f(5, 3, dt=dt), "out": np.empty(3, dt)}


def _act_kw(dt=F64):
    return {"y": _f(5, 3, dt=dt), "activation": "leaky_relu", "alpha": 0.1}


def _act_bwd_kw(dt=F64):
    return {"y": _f(5, 3, dt=dt), "activation": "tanh", "dout": _f(5, 3, dt=dt, seed=1)}


def _bn_cache(n=6, d=3, dt=F64):
    return ops.BatchNormCache(True, _f(n, d, dt=dt, seed=3), None, np.zeros(d, dt),
                              np.ones(d, dt), np.ones(d, dt))


def _bn_kw(dt=F64):
    return {"x": _f(6, 3, dt=dt), "gamma": np.ones(3, dt), "beta": np.zeros(3, dt),
            "running_mean": np.zeros(3, dt), "running_var": np.ones(3, dt),
            "out": np.empty((6, 3), dt), "cache": _bn_cache(dt=dt)}


def _bn_bwd_kw(dt=F64):
    return {"dout": _f(6, 3, dt=dt), "cache": _bn_cache(dt=dt), "dx": np.empty((6, 3), dt),
            "dgamma": np.empty(3, dt), "dbeta": np.empty(3, dt), "y": _f(6, 3, dt=dt, seed=1),
            "activation": "relu"}


def _ce_kw(dt=F64):
    return {"logits": _f(5, 4, dt=dt), "labels": np.arange(5, dtype=np.int64) % 4,
            "grad": np.empty((5, 4), dt), "row_loss": np.empty(5), "class_weight":
            np.ones(4, dt), "label_smoothing": 0.1}


def _adam_kw(dt=F64):
    return {"param": _f(10, dt=dt), "grad": _f(10, dt=dt, seed=1), "m": np.zeros(10, dt),
            "v": np.zeros(10, dt), "v_max": np.zeros(10, dt)}


PLANNERS = {
    "plan_gather": (ops.plan_gather, _gather_kw),
    "plan_matmul": (ops.plan_matmul, _matmul_kw),
    "plan_column_sum": (ops.plan_column_sum, _colsum_kw),
    "plan_activation": (ops.plan_activation, _act_kw),
    "plan_activation_backward": (ops.plan_activation, _act_bwd_kw),
    "plan_batchnorm_train": (ops.plan_batchnorm_train, _bn_kw),
    "plan_batchnorm_backward": (ops.plan_batchnorm_backward, _bn_bwd_kw),
    "plan_softmax_cross_entropy": (ops.plan_softmax_cross_entropy, _ce_kw),
    "bind_adam": (ops.bind_adam, _adam_kw),
}


def _set(**changes):
    """A mutation of the valid keyword arguments: values may be functions of them."""
    def mutate(kw):
        for key, value in changes.items():
            kw[key] = value(kw) if callable(value) else value
    return mutate


def _strided(shape, dt=F64):
    return np.zeros(shape[:-1] + (2 * shape[-1],), dt)[..., ::2]


def _cache_with(**arrays):
    def make(kw):
        c = kw["cache"]
        fields = {"x_hat": c.x_hat, "mean": c.mean, "inv_std": c.inv_std, "gamma": c.gamma}
        fields.update({k: v(kw) if callable(v) else v for k, v in arrays.items()})
        return ops.BatchNormCache(True, fields["x_hat"], None, fields["mean"],
                                  fields["inv_std"], fields["gamma"])
    return make


# Memory placed right after a too-short vector, so an overrun lands in the test's own array
# (the test can fail, the interpreter cannot crash).
def _short(n, dt=F64, fill=0.0):
    return np.full(n + 16, fill, dt)[:n]


BAD_INPUTS = [
    # plan_gather
    ("plan_gather", "X_int", _set(X=lambda kw: kw["X"].astype(np.int64)), TypeError, "X"),
    ("plan_gather", "X_1d", _set(X=np.zeros(10)), ValueError, "X"),
    ("plan_gather", "X_strided", _set(X=_strided((10, 3))), ValueError, "X"),
    ("plan_gather", "X_list", _set(X=[[0.0] * 3] * 10), TypeError, "X"),
    ("plan_gather", "labels_float", _set(labels=np.zeros(10)), TypeError, "labels"),
    ("plan_gather", "labels_short", _set(labels=np.zeros(9, np.int64)), ValueError, "labels"),
    ("plan_gather", "labels_int32", _set(labels=np.zeros(10, np.int32)), TypeError, "labels"),
    ("plan_gather", "order_int32", _set(order=np.arange(10, dtype=np.int32)), TypeError,
     "order"),
    ("plan_gather", "order_2d", _set(order=np.zeros((2, 5), np.int64)), ValueError, "order"),
    ("plan_gather", "order_strided", _set(order=np.arange(20, dtype=np.int64)[::2]),
     ValueError, "order"),
    ("plan_gather", "x_out_wrong_width", _set(x_out=np.empty((4, 2))), ValueError, "x_out"),
    ("plan_gather", "x_out_empty", _set(x_out=np.empty((0, 3))), ValueError, "x_out"),
    ("plan_gather", "x_out_float32", _set(x_out=np.empty((4, 3), F32)), TypeError, "x_out"),
    ("plan_gather", "x_out_read_only", _set(x_out=_ro(np.empty((4, 3)))), ValueError, "x_out"),
    ("plan_gather", "x_out_strided", _set(x_out=_strided((4, 3))), ValueError, "x_out"),
    ("plan_gather", "x_out_overlaps_X", _set(x_out=lambda kw: kw["X"][2:6]), ValueError,
     "x_out"),
    ("plan_gather", "labels_out_short", _set(labels_out=np.empty(3, np.int64)), ValueError,
     "labels_out"),
    ("plan_gather", "labels_out_overlaps_labels",
     _set(labels_out=lambda kw: kw["labels"][:4]), ValueError, "labels_out"),
    ("plan_gather", "labels_out_overlaps_order", _set(labels_out=lambda kw: kw["order"][6:]),
     ValueError, "labels_out"),
    # plan_matmul
    ("plan_matmul", "a_int", _set(a=np.ones((5, 3), np.int64)), TypeError, "a"),
    ("plan_matmul", "b_float32", _set(b=np.ones((3, 4), F32)), TypeError, "b"),
    ("plan_matmul", "a_1d", _set(a=np.ones(3)), ValueError, "a"),
    ("plan_matmul", "a_strided", _set(a=_strided((5, 3))), ValueError, "a"),
    ("plan_matmul", "b_strided", _set(b=_strided((3, 4))), ValueError, "b"),
    ("plan_matmul", "b_broadcast", _set(b=np.broadcast_to(np.ones(4), (3, 4))), ValueError, "b"),
    ("plan_matmul", "chain", _set(b=np.ones((4, 4))), ValueError, "a and b"),
    ("plan_matmul", "chain_trans_a", _set(trans_a=True), ValueError, "a and b"),
    ("plan_matmul", "empty", _set(a=np.ones((5, 0)), b=np.ones((0, 4))), ValueError, "empty"),
    ("plan_matmul", "out_shape", _set(out=np.empty((4, 5))), ValueError, "out"),
    ("plan_matmul", "out_read_only", _set(out=_ro(np.empty((5, 4)))), ValueError, "out"),
    ("plan_matmul", "out_strided", _set(out=_strided((5, 4))), ValueError, "out"),
    ("plan_matmul", "out_fortran", _set(out=np.empty((5, 4), order="F")), ValueError, "out"),
    ("plan_matmul", "out_float32", _set(out=np.empty((5, 4), F32)), TypeError, "out"),
    ("plan_matmul", "out_is_a", _set(a=np.ones((4, 4)), b=np.ones((4, 4)),
                                     out=lambda kw: kw["a"]), ValueError, "out"),
    ("plan_matmul", "out_overlaps_b", _set(
        b=lambda kw: np.ones((8, 4))[:3], out=lambda kw: kw["b"].base[2:7]), ValueError, "out"),
    ("plan_matmul", "bias_shape", _set(bias=np.ones(5)), ValueError, "bias"),
    ("plan_matmul", "bias_float32", _set(bias=np.ones(4, F32)), TypeError, "bias"),
    ("plan_matmul", "bias_strided", _set(bias=np.ones(8)[::2]), ValueError, "bias"),
    ("plan_matmul", "bias_is_out_row", _set(bias=lambda kw: kw["out"][2]), ValueError, "out"),
    # plan_column_sum
    ("plan_column_sum", "d_int", _set(d=np.ones((5, 3), np.int32)), TypeError, "d"),
    ("plan_column_sum", "d_1d", _set(d=np.ones(5)), ValueError, "d"),
    ("plan_column_sum", "d_strided", _set(d=_strided((5, 3))), ValueError, "d"),
    ("plan_column_sum", "out_shape", _set(out=np.empty(4)), ValueError, "out"),
    ("plan_column_sum", "out_read_only", _set(out=_ro(np.empty(3))), ValueError, "out"),
    ("plan_column_sum", "out_float32", _set(out=np.empty(3, F32)), TypeError, "out"),
    ("plan_column_sum", "out_is_d_row", _set(out=lambda kw: kw["d"][1]), ValueError, "out"),
    # plan_activation (forward, in place)
    ("plan_activation", "unknown", _set(activation="softplus"), ValueError, "activation"),
    ("plan_activation", "alpha_one", _set(alpha=1.0), ValueError, "alpha"),
    ("plan_activation", "alpha_nan", _set(alpha=float("nan")), ValueError, "alpha"),
    ("plan_activation", "y_read_only", _set(y=_ro(np.ones((5, 3)))), ValueError, "y"),
    ("plan_activation", "y_strided", _set(y=_strided((5, 3))), ValueError, "y"),
    ("plan_activation", "y_int", _set(y=np.ones((5, 3), np.int64)), TypeError, "y"),
    ("plan_activation", "y_1d", _set(y=np.ones(5)), ValueError, "y"),
    # plan_activation (backward)
    ("plan_activation_backward", "dout_shape", _set(dout=np.ones((5, 4))), ValueError, "dout"),
    ("plan_activation_backward", "dout_read_only", _set(dout=_ro(np.ones((5, 3)))), ValueError,
     "dout"),
    ("plan_activation_backward", "dout_float32", _set(dout=np.ones((5, 3), F32)), TypeError,
     "dout"),
    ("plan_activation_backward", "dout_strided", _set(dout=_strided((5, 3))), ValueError,
     "dout"),
    ("plan_activation_backward", "dout_is_y", _set(dout=lambda kw: kw["y"]), ValueError, "dout"),
    ("plan_activation_backward", "y_strided", _set(y=_strided((5, 3))), ValueError, "y"),
    # plan_batchnorm_train
    ("plan_batchnorm_train", "one_row", _set(x=np.ones((1, 3)), out=np.empty((1, 3)),
                                             cache=_bn_cache(1)), ValueError, "x"),
    ("plan_batchnorm_train", "x_strided", _set(x=_strided((6, 3))), ValueError, "x"),
    ("plan_batchnorm_train", "x_float32", _set(x=np.ones((6, 3), F32)), TypeError,
     "gamma|x"),
    ("plan_batchnorm_train", "gamma_shape", _set(gamma=np.ones(4)), ValueError, "gamma"),
    ("plan_batchnorm_train", "beta_float32", _set(beta=np.zeros(3, F32)), TypeError, "beta"),
    ("plan_batchnorm_train", "running_mean_read_only", _set(running_mean=_ro(np.zeros(3))),
     ValueError, "running_mean"),
    ("plan_batchnorm_train", "running_var_shape", _set(running_var=np.ones(4)), ValueError,
     "running_var"),
    ("plan_batchnorm_train", "running_var_is_mean",
     _set(running_var=lambda kw: kw["running_mean"]), ValueError, "running_mean|running_var"),
    ("plan_batchnorm_train", "out_is_x", _set(out=lambda kw: kw["x"]), ValueError, "out"),
    ("plan_batchnorm_train", "out_read_only", _set(out=_ro(np.empty((6, 3)))), ValueError,
     "out"),
    ("plan_batchnorm_train", "out_is_gamma_memory",
     _set(out=lambda kw: np.empty(21)[:18].reshape(6, 3),
          gamma=lambda kw: kw["out"].base[15:18]), ValueError, "out"),
    ("plan_batchnorm_train", "cache_none", _set(cache=None), ValueError, "cache"),
    ("plan_batchnorm_train", "cache_other_shape", _set(cache=_bn_cache(7)), ValueError, "cache"),
    ("plan_batchnorm_train", "cache_float32", _set(cache=_bn_cache(dt=F32)), TypeError,
     "cache"),
    ("plan_batchnorm_train", "cache_eval",
     _set(cache=ops.BatchNormCache(False, None, np.ones((6, 3)), np.zeros(3), np.ones(3),
                                   np.ones(3))), ValueError, "cache"),
    ("plan_batchnorm_train", "cache_x_hat_is_x",
     _set(cache=_cache_with(x_hat=lambda kw: kw["x"])), ValueError, "cache"),
    # a cache whose statistics are shorter than x is wide: the op would write past them
    ("plan_batchnorm_train", "cache_mean_too_short",
     _set(cache=_cache_with(mean=_short(1), inv_std=_short(1))), ValueError, "cache|mean"),
    ("plan_batchnorm_train", "cache_x_hat_strided",
     _set(cache=_cache_with(x_hat=_strided((6, 3)))), ValueError, "cache|x_hat"),
    ("plan_batchnorm_train", "momentum", _set(momentum=1.5), ValueError, "momentum"),
    ("plan_batchnorm_train", "eps", _set(eps=0.0), ValueError, "eps"),
    ("plan_batchnorm_train", "activation", _set(activation="gelu"), ValueError, "activation"),
    # plan_batchnorm_backward
    ("plan_batchnorm_backward", "cache_none", _set(cache=None), ValueError, "cache"),
    ("plan_batchnorm_backward", "dout_shape", _set(dout=np.ones((6, 4))), ValueError, "dout"),
    ("plan_batchnorm_backward", "dout_read_only_relu", _set(dout=_ro(np.ones((6, 3)))),
     ValueError, "dout"),
    ("plan_batchnorm_backward", "dx_read_only", _set(dx=_ro(np.ones((6, 3)))), ValueError,
     "dx"),
    ("plan_batchnorm_backward", "dx_float32", _set(dx=np.ones((6, 3), F32)), TypeError, "dx"),
    ("plan_batchnorm_backward", "dgamma_shape", _set(dgamma=np.empty(4)), ValueError, "dgamma"),
    ("plan_batchnorm_backward", "dbeta_float32", _set(dbeta=np.empty(3, F32)), TypeError,
     "dbeta"),
    ("plan_batchnorm_backward", "y_missing", _set(y=None), ValueError, "y"),
    ("plan_batchnorm_backward", "y_shape", _set(y=np.ones((5, 3))), ValueError, "y"),
    ("plan_batchnorm_backward", "dx_is_x_hat", _set(dx=lambda kw: kw["cache"].x_hat),
     ValueError, "dx"),
    ("plan_batchnorm_backward", "dout_is_y", _set(dout=lambda kw: kw["y"]), ValueError, "dout"),
    ("plan_batchnorm_backward", "dgamma_is_dbeta", _set(dbeta=lambda kw: kw["dgamma"]),
     ValueError, "dgamma|dbeta"),
    # dx may be dout itself, but that array is written: it must not overlap the cache
    ("plan_batchnorm_backward", "dx_is_dout_overlapping_x_hat", _set(
        activation="identity", y=None,
        dout=lambda kw: np.ones(21)[:18].reshape(6, 3),
        dx=lambda kw: kw["dout"],
        cache=_cache_with(x_hat=lambda kw: kw["dout"].base[3:].reshape(6, 3))),
     ValueError, "dx|dout"),
    # an inverse std shorter than the batch is wide: the op would read past it
    ("plan_batchnorm_backward", "cache_inv_std_too_short",
     _set(cache=_cache_with(inv_std=_short(1, fill=1.0))), ValueError, "cache|inv_std"),
    # plan_softmax_cross_entropy
    ("plan_softmax_cross_entropy", "logits_int", _set(logits=np.ones((5, 4), np.int64)),
     TypeError, "logits"),
    ("plan_softmax_cross_entropy", "logits_strided", _set(logits=_strided((5, 4))), ValueError,
     "logits"),
    ("plan_softmax_cross_entropy", "labels_int32", _set(labels=np.zeros(5, np.int32)),
     TypeError, "labels"),
    ("plan_softmax_cross_entropy", "labels_short", _set(labels=np.zeros(4, np.int64)),
     ValueError, "labels"),
    ("plan_softmax_cross_entropy", "grad_read_only", _set(grad=_ro(np.ones((5, 4)))),
     ValueError, "grad"),
    ("plan_softmax_cross_entropy", "grad_is_logits", _set(grad=lambda kw: kw["logits"]),
     ValueError, "grad"),
    ("plan_softmax_cross_entropy", "grad_float32", _set(grad=np.ones((5, 4), F32)), TypeError,
     "grad"),
    ("plan_softmax_cross_entropy", "row_loss_float32", _set(row_loss=np.empty(5, F32)),
     TypeError, "row_loss"),
    ("plan_softmax_cross_entropy", "row_loss_short", _set(row_loss=np.empty(4)), ValueError,
     "row_loss"),
    ("plan_softmax_cross_entropy", "class_weight_shape", _set(class_weight=np.ones(3)),
     ValueError, "class_weight"),
    ("plan_softmax_cross_entropy", "class_weight_negative",
     _set(class_weight=np.array([1.0, -1.0, 1.0, 1.0])), ValueError, "class_weight"),
    ("plan_softmax_cross_entropy", "class_weight_nan",
     _set(class_weight=np.array([1.0, np.nan, 1.0, 1.0])), ValueError, "class_weight"),
    ("plan_softmax_cross_entropy", "label_smoothing", _set(label_smoothing=1.5), ValueError,
     "label_smoothing"),
    # bind_adam
    ("bind_adam", "param_read_only", _set(param=_ro(np.ones(10))), ValueError, "param"),
    ("bind_adam", "param_2d", _set(param=np.ones((2, 5))), ValueError, "param"),
    ("bind_adam", "grad_shape", _set(grad=np.ones(9)), ValueError, "grad"),
    ("bind_adam", "m_float32", _set(m=np.zeros(10, F32)), TypeError, "m"),
    ("bind_adam", "v_is_param", _set(v=lambda kw: kw["param"]), ValueError, "v|param"),
    ("bind_adam", "v_max_shape", _set(v_max=np.zeros(11)), ValueError, "v_max"),
]


@pytest.mark.parametrize("planner", list(PLANNERS))
def test_valid_plan_arguments_bind(cython, planner):
    fn, make = PLANNERS[planner]
    for dt in (F32, F64):
        op = fn(**make(dt))
        if planner != "bind_adam":
            op()  # runs


@pytest.mark.parametrize(("planner", "mutate", "exc", "name"),
                         [case[:1] + case[2:] for case in BAD_INPUTS],
                         ids=[f"{case[0]}-{case[1]}" for case in BAD_INPUTS])
def test_bad_plan_arguments_raise_naming_the_argument(cython, planner, mutate, exc, name):
    fn, make = PLANNERS[planner]
    kw = make()
    mutate(kw)
    with pytest.raises(exc, match=rf"\b({name})\b"):
        fn(**kw)


READ_ONLY_INPUTS = {
    "plan_gather": ("X", "labels", "order"),
    "plan_matmul": ("a", "b", "bias"),
    "plan_column_sum": ("d",),
    "plan_activation_backward": ("y",),
    "plan_batchnorm_train": ("x", "gamma", "beta"),
    "plan_softmax_cross_entropy": ("logits", "labels", "class_weight"),
    "bind_adam": ("grad",),
}


@pytest.mark.parametrize("planner", list(READ_ONLY_INPUTS))
def test_plan_inputs_may_be_read_only(cython, planner):
    # DESIGN.md: inputs are const memoryviews; read-only arrays must work.
    fn, make = PLANNERS[planner]
    kw = make()
    for key in READ_ONLY_INPUTS[planner]:
        kw[key] = _ro(kw[key])
    op = fn(**kw)
    if planner != "bind_adam":
        op()


def _bn_backward_identity_kw():
    kw = _bn_bwd_kw()
    kw.update(activation="identity", y=None)
    return kw


def test_plan_batchnorm_backward_cache_may_be_read_only(cython):
    kw = _bn_backward_identity_kw()
    cache = kw["cache"]
    kw["cache"] = ops.BatchNormCache(True, _ro(cache.x_hat), None, cache.mean,
                                     _ro(cache.inv_std), _ro(cache.gamma))
    ops.plan_batchnorm_backward(**kw)()


def test_plan_batchnorm_backward_dout_may_be_read_only_without_activation(cython):
    # Without an activation dout is only read (dx is another array here): the door accepts
    # a read-only dout (writable=code != 0), so the op must too.
    kw = _bn_backward_identity_kw()
    kw["dout"] = _ro(kw["dout"])
    ops.plan_batchnorm_backward(**kw)()
    dx_ref, _, _ = ops.batchnorm_backward(kw["dout"], kw["cache"])
    np.testing.assert_allclose(kw["dx"], dx_ref, **REF_TOL[F64])


def _matmul_op():
    kw = _matmul_kw()
    return ops.plan_matmul(**kw)


def _ce_program():
    kw = _ce_kw()
    op = ops.plan_softmax_cross_entropy(**kw)
    return op, kw


def test_program_rejects_ops_it_does_not_hold(cython):
    gather = ops.plan_gather(**_gather_kw())
    loss, _ = _ce_program()
    matmul = _matmul_op()
    adam = ops.bind_adam(**_adam_kw())
    for bad in (5, None, np.ones(3), adam, "op"):
        with pytest.raises(TypeError):
            ops.program([matmul, bad])
    with pytest.raises(ValueError, match="gather"):
        ops.program([matmul, loss], gather=gather, loss=loss)
    with pytest.raises(ValueError, match="loss"):
        ops.program([gather, matmul], gather=gather, loss=loss)
    with pytest.raises(ValueError, match="gather"):
        ops.program([gather, loss], gather=loss, loss=loss)
    with pytest.raises(ValueError, match="loss"):
        ops.program([gather, loss], gather=gather, loss=gather)
    program = ops.program([gather, matmul, loss], gather=gather, loss=loss)
    assert program.run(0) == pytest.approx(loss.loss)


@pytest.mark.parametrize("planner", list(PLANNERS) + ["program"])
def test_planning_needs_the_cython_backend(planner):
    with fastnn.backend("numpy"):
        assert not ops.can_plan()
        with pytest.raises(RuntimeError, match="cython"):
            if planner == "program":
                ops.program([])
            else:
                fn, make = PLANNERS[planner]
                fn(**make())
    with fastnn.backend("cython"):
        assert ops.can_plan()


def test_ce_op_checks_labels_on_every_run(cython):
    op, kw = _ce_program()
    program = ops.program([op], loss=op)
    first = program.run(0)
    labels = kw["labels"]
    for bad in (N_CLASSES, -1, 2**40, -(2**62)):
        labels[3] = bad
        with pytest.raises(ValueError, match="labels"):
            program.run(0)
    labels[3] = 3
    assert program.run(0) == first
    assert first == pytest.approx(cross_entropy(kw["logits"], labels, 0.1, kw["class_weight"]),
                                  rel=REF_TOL[F64]["rtol"])


def test_ce_op_zero_weight_batch_raises_like_per_call(cython):
    # ops.softmax_cross_entropy rejects a batch whose labels all weigh 0; the bound op
    # must not return NaN (the trainer would read that as divergence) instead.
    kw = _ce_kw()
    kw["labels"][:] = 1
    kw["class_weight"][:] = [1.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="weight"):
        ops.softmax_cross_entropy(kw["logits"], kw["labels"], class_weight=kw["class_weight"])
    op = ops.plan_softmax_cross_entropy(**kw)
    with pytest.raises(ValueError, match="weight"):
        ops.program([op], loss=op).run(0)


def test_train_plan_rejects_targets_changed_out_of_range(cython):
    X, y = _data(40, seed=23)
    model = _model("dense_bn_relu")
    plan = TrainPlan(model, X, y)
    plan.step(0, 10)
    y[4] = N_CLASSES  # the plan reads the caller's targets in place
    with pytest.raises(ValueError, match="labels"):
        plan.step(0, 10)
    y[4] = -3
    with pytest.raises(ValueError, match="labels"):
        plan.step(0, 10)
    plan.step(10, 10)  # rows without the bad label still run
    y[4] = 0
    plan.step(0, 10)


def _gather_program():
    kw = _gather_kw()
    op = ops.plan_gather(**kw)
    return ops.program([op], gather=op), kw


def test_gather_rejects_bad_indices_at_run_time(cython):
    program, kw = _gather_program()
    program.run(6)
    np.testing.assert_array_equal(kw["x_out"], kw["X"][6:10])
    for bad in (10, -1, 2**40, -(2**62)):
        order = np.arange(10, dtype=np.int64)
        order[7] = bad
        program.set_order(order)
        with pytest.raises(ValueError, match="order"):
            program.run(5)
        program.run(0)  # rows 0..3 of that order are fine
    with pytest.raises((TypeError, ValueError)):
        program.set_order(np.arange(10, dtype=np.int32))
    with pytest.raises((TypeError, ValueError)):
        program.set_order(np.arange(20, dtype=np.int64)[::2])


def test_train_plan_rejects_bad_order(cython):
    X, y = _data(30, seed=24)
    plan = TrainPlan(_model("dense_tanh_biases"), X, y)
    order = np.arange(30, dtype=np.int64)
    order[12] = 30
    plan.set_order(order)
    with pytest.raises(ValueError):
        plan.step(10, 5)
    order[12] = -1
    with pytest.raises(ValueError):
        plan.step(10, 5)
    with pytest.raises(ValueError):
        plan.step(28, 5)  # past the end of the order
    order[12] = 12
    plan.step(10, 5)


@pytest.mark.parametrize("start", [7, 10, 2**40, -1, -(2**40), sys.maxsize - 1, sys.maxsize,
                                   -sys.maxsize - 1])
def test_gather_run_past_the_end_of_the_order_raises(cython, start):
    # order is a view into zeros (valid row 0 everywhere around it): a start that escapes
    # the range check reads those zeros instead of failing, and the test sees it.
    kw = _gather_kw()
    kw["order"] = np.zeros(64, np.int64)[20:30]
    kw["order"][:] = np.arange(10)
    op = ops.plan_gather(**kw)
    program = ops.program([op], gather=op)
    with pytest.raises(ValueError, match="order"):
        program.run(start)
    op.start = start  # the op alone (its start is public)
    with pytest.raises(ValueError, match="order"):
        op()
    program.run(6)  # and it still works
    np.testing.assert_array_equal(kw["x_out"], kw["X"][6:10])


def _run_isolated(code):
    root = Path(fastnn.__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, env=env, cwd=str(root))


def test_program_ops_list_cannot_be_made_to_crash():
    # Program.ops is exposed; putting a non-op into it must raise, not segfault.
    proc = _run_isolated("""
        import numpy as np
        from fastnn import ops
        a, b, c = np.ones((4, 3)), np.ones((3, 2)), np.empty((4, 2))
        program = ops.program([ops.plan_matmul(a, b, c)])
        try:
            program.ops.append(None)
            program.run(0)
        except (AttributeError, TypeError, ValueError) as exc:
            print("raised", type(exc).__name__)
        else:
            print("ran")
    """)
    assert proc.returncode == 0, f"the interpreter died (status {proc.returncode}): " \
                                 f"{proc.stderr[-500:]}"
    assert "raised" in proc.stdout


# ----------------------------------------------------------------------------------------
# 6. A planned step allocates nothing
# ----------------------------------------------------------------------------------------


def _tiny():
    rng = np.random.default_rng(25)
    X = rng.standard_normal((256, 64)).astype(F32)
    y = rng.integers(0, 10, 256)
    model = fastnn.Sequential([Dense(32), BatchNorm(), ReLU(), Dense(10), Softmax()],
                              input_dim=64, seed=0)
    return model, X, y


def test_planned_step_and_bound_adam_allocate_nothing(cython):
    model, X, y = _tiny()
    model.optimizer = opt = Adam()
    plan = TrainPlan(model, X, y)
    plan.set_order(np.random.default_rng(26).permutation(256))
    starts = list(range(0, 256, 32))
    params, grads = model._params, model._grads
    loss = 0.0
    for i in range(20):  # warm-up: the program and the Adam binding
        loss = plan.step(starts[i % 8], 32)
        opt.step(params, grads)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for i in range(100):
            loss = plan.step(starts[i % 8], 32)
            opt.step(params, grads)
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert opt._bound is not None  # the bound update ran
    assert np.isfinite(loss) and opt.iterations == 120
    assert after == before, after - before
    assert peak - before < 1024, peak - before  # no array (the smallest is 32 x 10 floats)


class _TraceWindow(Callback):
    """Traced memory between the ends of batches ``base`` and ``last``. Tracing starts at the
    end of batch ``start`` (< base), so the loop's live objects at ``base`` (the batch logs,
    the loss, counters past the small-int cache) were allocated under tracing like their
    successors at ``last``; readings go to a preallocated array (storing them allocates
    nothing that outlives the reading)."""

    # Growth counts only memory allocated with fastnn's code on the stack, not by this
    # callback (its readings): another thread of the test process (one an earlier test
    # left running) may allocate meanwhile.
    _FASTNN = [tracemalloc.Filter(True, "*/fastnn/*", all_frames=True),
               tracemalloc.Filter(False, __file__, all_frames=True),
               tracemalloc.Filter(False, tracemalloc.__file__, all_frames=True)]

    def __init__(self, start, base, last):
        self.start, self.base, self.last = start, base, last
        self.memory = np.zeros(3, np.int64)  # base, growth, peak above base
        self.done = False

    def _fastnn_bytes(self) -> int:
        snapshot = tracemalloc.take_snapshot().filter_traces(self._FASTNN)
        return sum(stat.size for stat in snapshot.statistics("filename"))

    def on_batch_end(self, batch, logs=None):
        if batch == self.start:
            tracemalloc.start(64)
        elif batch == self.base:
            self.memory[0] = self._fastnn_bytes()
            tracemalloc.reset_peak()
            self._base_total = tracemalloc.get_traced_memory()[0]
        elif batch == self.last and tracemalloc.is_tracing():
            peak = tracemalloc.get_traced_memory()[1]
            current = self._fastnn_bytes()
            tracemalloc.stop()
            self.memory[1:] = current - self.memory[0], peak - self._base_total
            self.done = True


@pytest.mark.parametrize("shuffle", [False, True])
def test_planned_fit_steps_allocate_nothing(cython, plans, shuffle):
    model, X, y = _tiny()
    X, y = np.concatenate([X] * 30), np.concatenate([y] * 30)  # 240 batches of 32
    tracer = _TraceWindow(2, 110, 239)  # 129 traced steps
    plans.record = False
    try:
        model.fit(X, y, epochs=1, batch_size=32, shuffle=shuffle, verbose=0,
                  callbacks=[tracer])
    finally:
        if tracemalloc.is_tracing():
            tracemalloc.stop()
    assert len(plans) == 1 and plans[0].count[0] == 240
    assert tracer.done
    growth, peak = tracer.memory[1:]
    assert growth == 0, growth
    assert peak < 1024, peak  # the per-batch logs dict and floats, no array


# ----------------------------------------------------------------------------------------
# 7. Adam's bound update
# ----------------------------------------------------------------------------------------

ADAMS = {
    "adam": lambda: Adam(0.01),
    "adamw": lambda: AdamW(0.01, weight_decay=0.05),
    "amsgrad": lambda: Adam(0.01, amsgrad=True),
    "l2_weight_decay": lambda: Adam(0.01, weight_decay=0.05),
    "adamw_amsgrad_betas": lambda: AdamW(0.02, beta_1=0.8, beta_2=0.99, epsilon=1e-6,
                                         weight_decay=0.1, amsgrad=True),
}


def _reference_adam_step(opt, param, grad, state, t):
    ops.adam_update(param, grad, state["m"], state["v"], t, lr=opt.lr, beta1=opt.beta_1,
                    beta2=opt.beta_2, eps=opt.epsilon, weight_decay=opt.weight_decay,
                    decoupled=opt.decoupled, amsgrad=opt.amsgrad, v_max=state.get("v_max"))


def _zero_state(opt, size, dtype):
    names = ("m", "v", "v_max") if opt.amsgrad else ("m", "v")
    return {name: np.zeros(size, dtype) for name in names}


def _assert_state_equal(opt, state):
    arrays = opt.state_arrays()
    assert arrays.keys() == state.keys()
    for key in state:
        np.testing.assert_array_equal(arrays[key], state[key], err_msg=key)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("config", list(ADAMS))
def test_bound_adam_step_equals_adam_update_bit_for_bit(cython, config, dtype):
    rng = np.random.default_rng(27)
    opt = ADAMS[config]()
    param = rng.standard_normal(1003).astype(dtype)
    grad = np.empty_like(param)
    ref_param, ref_state = param.copy(), _zero_state(opt, param.size, dtype)
    grads = []
    for t in range(1, 7):
        grad[...] = rng.standard_normal(param.size) * (0.1 if t % 2 else 3.0)
        grads.append(grad.copy())
        opt.step(param, grad)
        assert opt._bound is not None and opt._bound.arrays[0] is param  # the bound path
        _reference_adam_step(opt, ref_param, grad, ref_state, t)
        np.testing.assert_array_equal(param, ref_param)
        _assert_state_equal(opt, ref_state)
    assert opt.iterations == 6
    if dtype is F64:  # and the independent float64 pseudocode (reference.py)
        start = np.random.default_rng(27).standard_normal(1003)
        theta, _, _ = adam_steps(start, grads, lr=opt.lr, beta1=opt.beta_1,
                                 beta2=opt.beta_2, eps=opt.epsilon,
                                 weight_decay=opt.weight_decay, decoupled=opt.decoupled,
                                 amsgrad=opt.amsgrad)
        np.testing.assert_allclose(param, theta, **REF_TOL[F64])


@pytest.mark.parametrize("config", list(ADAMS))
def test_bound_adam_follows_loaded_state_arrays(cython, config):
    rng = np.random.default_rng(28)
    opt = ADAMS[config]()
    param, grad = rng.standard_normal(300), rng.standard_normal(300)
    for _ in range(3):
        opt.step(param, grad)
    names = tuple(opt.state_arrays())
    loaded = {name: np.abs(rng.standard_normal(300)) * 0.1 for name in names}
    opt.load_state_arrays(loaded)
    before = param.copy()
    opt.step(param, grad)

    fresh = ADAMS[config]()
    fresh.load_state_arrays(loaded)
    fresh.iterations = 3
    fresh_param = before.copy()
    fresh.step(fresh_param, grad)
    np.testing.assert_array_equal(param, fresh_param)
    ref_param, ref_state = before.copy(), {k: v.copy() for k, v in loaded.items()}
    _reference_adam_step(opt, ref_param, grad, ref_state, 4)
    np.testing.assert_array_equal(param, ref_param)
    _assert_state_equal(opt, ref_state)
    _assert_state_equal(fresh, ref_state)


@pytest.mark.parametrize("config", list(ADAMS))
def test_bound_adam_follows_build(cython, config):
    rng = np.random.default_rng(29)
    opt = ADAMS[config]()
    param, grad = rng.standard_normal(300), rng.standard_normal(300)
    for _ in range(3):
        opt.step(param, grad)
    # Rebuilt for another size and dtype (a new model): fresh zero buffers, bound anew.
    opt.build(120, F32)
    p32, g32 = rng.standard_normal(120).astype(F32), rng.standard_normal(120).astype(F32)
    fresh = ADAMS[config]()
    fresh.iterations = 3
    fresh_param = p32.copy()
    opt.step(p32, g32)
    fresh.step(fresh_param, g32)
    np.testing.assert_array_equal(p32, fresh_param)
    _assert_state_equal(opt, {k: v for k, v in fresh.state_arrays().items()})
    # Rebuilt for the same size and dtype: the buffers (and moments) are kept, still bound.
    opt.build(120, F32)
    fresh.build(120, F32)
    opt.step(p32, g32)
    fresh.step(fresh_param, g32)
    np.testing.assert_array_equal(p32, fresh_param)


def test_bound_adam_follows_the_optimizer_into_a_new_model(cython):
    X, y = _data(100, seed=30)
    shared = Adam(0.01)
    first = _model("dense_bn_relu")
    first.fit(X, y, epochs=1, batch_size=20, optimizer=shared, verbose=0)
    runs = []
    for opt in (shared, Adam(0.01)):
        opt.iterations = 5
        model = _model("dense_tanh_biases", seed=4)  # another parameter count
        model.fit(X, y, epochs=2, batch_size=20, optimizer=opt, verbose=0, seed=1)
        runs.append(model)
    for a, b in zip(runs[0].get_weights(), runs[1].get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_bound_adam_uses_numpy_kernels_on_the_numpy_backend(monkeypatch):
    calls = []
    table = ops.backends._BACKENDS["numpy"]._table
    key = ("adam_update", np.dtype(F32).num, 0)
    kernel = table[key]

    def counting(*args):
        calls.append(1)
        return kernel(*args)

    monkeypatch.setitem(table, key, counting)
    rng = np.random.default_rng(31)
    opt = Adam(0.01, amsgrad=True)
    param = rng.standard_normal(513).astype(F32)
    grad = np.empty_like(param)
    ref_param, ref_state = param.copy(), _zero_state(opt, param.size, F32)
    for t, backend in enumerate(["cython"] * 3 + ["numpy"] * 3 + ["cython"] * 2, start=1):
        grad[...] = rng.standard_normal(param.size)
        with fastnn.backend(backend):
            n_calls = len(calls)
            opt.step(param, grad)
            assert len(calls) - n_calls == (backend == "numpy"), (t, backend)
            _reference_adam_step(opt, ref_param, grad, ref_state, t)
        np.testing.assert_array_equal(param, ref_param, err_msg=f"step {t} ({backend})")
        _assert_state_equal(opt, ref_state)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_unpickled_batchnorm_model_fits_planned(cython, plans, dtype):
    # Unpickling gives the model an equal but distinct np.dtype object; the plan must not
    # care which float64 descriptor its arrays carry.
    X, y = _data(60, seed=33)
    model = _model("dense_bn_relu", dtype)
    clone = pickle.loads(pickle.dumps(model))
    assert clone.dtype == model.dtype
    h_model = model.fit(X, y, epochs=2, batch_size=16, seed=1, verbose=0)
    h_clone = clone.fit(X, y, epochs=2, batch_size=16, seed=1, verbose=0)
    assert len(plans) == 2
    for a, b in zip(model.get_weights(), clone.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert h_model.history == h_clone.history


def test_pickled_model_keeps_training_identically(cython):
    X, y = _data(120, seed=32)
    model = _model("leaky_bn_sigmoid")
    model.fit(X, y, epochs=2, batch_size=16, optimizer=AdamW(0.01, amsgrad=True), seed=5,
              verbose=0)
    assert model.optimizer._bound is not None
    clone = pickle.loads(pickle.dumps(model))
    assert clone.optimizer._bound is None
    original = [w.copy() for w in model.get_weights()]
    h_clone = clone.fit(X, y, epochs=2, batch_size=16, verbose=0)
    for a, b in zip(model.get_weights(), original, strict=True):
        np.testing.assert_array_equal(a, b)  # training the clone left the original alone
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(clone.get_weights(), original,
                                                             strict=True)) > 1e-3
    h_model = model.fit(X, y, epochs=2, batch_size=16, verbose=0)
    for a, b in zip(model.get_weights(), clone.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    _assert_state_equal(clone.optimizer, model.optimizer.state_arrays())
    assert clone.optimizer.iterations == model.optimizer.iterations
    assert h_clone.history == h_model.history


# ----------------------------------------------------------------------------------------
# 8. Determinism
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("arch", ["leaky_bn_sigmoid", "wide"])
def test_planned_fits_with_one_seed_are_bit_identical(cython, plans, arch, dtype):
    (a, ha), (b, hb) = (_fit(arch, plan=True, dtype=dtype) for _ in range(2))
    assert len(plans) == 2
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    assert ha.history == hb.history
    c, hc = _fit(arch, plan=True, dtype=dtype, seed=4)  # the seed matters: this can fail
    assert hc.history["loss"] != ha.history["loss"]
