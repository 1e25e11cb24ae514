"""Adam / AdamW / amsgrad, SGD (momentum, Nesterov), RMSprop over flat buffers."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REF_TOL, TOL, run_on_each_backend
from reference import adam_steps, rmsprop_steps, sgd_steps

from fastnn import ops

SIZES = [1, 7, 1000, 65537]


def _state(rng, n, dtype, count=5):
    param = rng.standard_normal(n).astype(dtype)
    grads = [rng.standard_normal(n).astype(dtype) for _ in range(count)]
    return param, grads


def _run_adam(param, grads, **kw):
    param = param.copy()
    m, v = np.zeros_like(param), np.zeros_like(param)
    v_max = np.zeros_like(param) if kw.get("amsgrad") else None
    for t, g in enumerate(grads, start=1):
        ops.adam_update(param, g, m, v, t, v_max=v_max, **kw)
    return param, m, v


ADAM_CASES = [
    {},
    {"lr": 0.05, "beta1": 0.5, "beta2": 0.9, "eps": 1e-3},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "decoupled": True, "lr": 0.01},
    {"amsgrad": True, "lr": 0.01},
    {"amsgrad": True, "weight_decay": 0.05, "decoupled": True},
]


@pytest.mark.parametrize("kw", ADAM_CASES, ids=lambda kw: ",".join(kw) or "default")
def test_adam_matches_definition(backend, dtype, rng, kw):
    param, grads = _state(rng, 50, dtype)
    got, m, v = _run_adam(param, grads, **kw)
    ref, ref_m, ref_v = adam_steps(param, grads, **kw)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, ref, **REF_TOL[dtype])
    np.testing.assert_allclose(m, ref_m, **REF_TOL[dtype])
    np.testing.assert_allclose(v, ref_v, **REF_TOL[dtype])


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kw", ADAM_CASES, ids=lambda kw: ",".join(kw) or "default")
def test_adam_backends_agree(dtype, rng, n, kw):
    param, grads = _state(rng, n, dtype, count=3)
    results = run_on_each_backend(lambda: _run_adam(param, grads, **kw))
    for a, b in zip(results["cython"], results["numpy"], strict=True):
        np.testing.assert_allclose(a, b, **TOL[dtype])


def test_adam_step_one_bias_correction(backend, dtype):
    # After one step m_hat = g and v_hat = g^2, so the move is lr * g / (|g| + eps).
    g = np.array([0.5, -2.0, 1e-3, 0.0], dtype)
    param = np.zeros(4, dtype)
    m, v = np.zeros(4, dtype), np.zeros(4, dtype)
    ops.adam_update(param, g, m, v, 1, lr=0.1, eps=1e-8)
    g64 = g.astype(np.float64)
    np.testing.assert_allclose(param, -0.1 * g64 / (np.abs(g64) + 1e-8), **REF_TOL[dtype])


@pytest.mark.parametrize("t", [1, 2, 10, 1000])
def test_adam_step_t_closed_form(backend, dtype, t):
    # From state (m, v) at any step count t, one update is exactly the closed form.
    rng = np.random.default_rng(t)
    param = rng.standard_normal(20).astype(dtype)
    g = rng.standard_normal(20).astype(dtype)
    m = rng.standard_normal(20).astype(dtype) * 0.1
    v = rng.uniform(0, 0.1, 20).astype(dtype)
    p64, g64, m64, v64 = (a.astype(np.float64) for a in (param, g, m, v))
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    m_new = b1 * m64 + (1 - b1) * g64
    v_new = b2 * v64 + (1 - b2) * g64**2
    expected = p64 - lr / (1 - b1**t) * m_new / (np.sqrt(v_new) / np.sqrt(1 - b2**t) + eps)
    ops.adam_update(param, g, m, v, t, lr=lr, beta1=b1, beta2=b2, eps=eps)
    np.testing.assert_allclose(param, expected, **REF_TOL[dtype])
    np.testing.assert_allclose(m, m_new, **REF_TOL[dtype])
    np.testing.assert_allclose(v, v_new, **REF_TOL[dtype])


def test_adam_constant_gradient_moves_lr_per_step(backend):
    # With a constant gradient, bias-corrected m_hat/sqrt(v_hat) = sign(g) at every t.
    param = np.zeros(3)
    g = np.array([2.0, -0.5, 3.0])
    m, v = np.zeros(3), np.zeros(3)
    for t in range(1, 51):
        ops.adam_update(param, g, m, v, t, lr=0.01, eps=0.0)
    np.testing.assert_allclose(param, -0.5 * np.sign(g), rtol=1e-12)


def test_adamw_decoupled_differs_from_l2(backend, rng):
    param, grads = _state(rng, 30, np.float64, count=4)
    l2, _, _ = _run_adam(param, grads, weight_decay=0.5, lr=0.05)
    decoupled, _, _ = _run_adam(param, grads, weight_decay=0.5, lr=0.05, decoupled=True)
    assert not np.allclose(l2, decoupled)
    np.testing.assert_allclose(decoupled, adam_steps(param, grads, weight_decay=0.5, lr=0.05,
                                                     decoupled=True)[0], rtol=1e-12)


def test_adamw_decay_alone_shrinks_by_one_minus_lr_wd(backend):
    param = np.array([1.0, -2.0, 4.0])
    m, v = np.zeros(3), np.zeros(3)
    ops.adam_update(param, np.zeros(3), m, v, 1, lr=0.1, weight_decay=0.5, decoupled=True)
    np.testing.assert_allclose(param, [0.95, -1.9, 3.8], rtol=1e-15)


def test_adam_amsgrad_keeps_max_of_v(backend, dtype):
    param = np.zeros(2, dtype)
    m, v, v_max = (np.zeros(2, dtype) for _ in range(3))
    ops.adam_update(param, np.array([3.0, 1.0], dtype), m, v, 1, amsgrad=True, v_max=v_max)
    peak = v_max.copy()
    ops.adam_update(param, np.array([0.0, 0.0], dtype), m, v, 2, amsgrad=True, v_max=v_max)
    np.testing.assert_array_equal(v_max, peak)  # v decayed; the max did not
    assert np.all(v < v_max)


def test_adam_any_shape_is_one_flat_buffer(backend, rng):
    param, grads = _state(rng, 24, np.float64, count=2)
    flat, _, _ = _run_adam(param, grads, lr=0.1)
    p2 = param.reshape(4, 6).copy()
    m, v = np.zeros((4, 6)), np.zeros(24)
    for t, g in enumerate(grads, start=1):
        ops.adam_update(p2, g.reshape(4, 6), m, v, t, lr=0.1)
    np.testing.assert_array_equal(p2.reshape(-1), flat)


def test_optimizers_accept_empty_buffers(backend):
    empty = np.zeros(0)
    ops.adam_update(empty, empty.copy(), empty.copy(), empty.copy(), 1)
    ops.sgd_update(empty, empty.copy(), lr=0.1)
    ops.rmsprop_update(empty, empty.copy(), empty.copy())


# ---- SGD -------------------------------------------------------------------

SGD_CASES = [
    {"lr": 0.1},
    {"lr": 0.1, "weight_decay": 0.01},
    {"lr": 0.05, "momentum": 0.9},
    {"lr": 0.05, "momentum": 0.9, "dampening": 0.5},
    {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
]


def _run_sgd(param, grads, **kw):
    param = param.copy()
    velocity = np.zeros_like(param) if kw.get("momentum") else None
    for t, g in enumerate(grads, start=1):
        ops.sgd_update(param, g, velocity, t, **kw)
    return param, velocity


@pytest.mark.parametrize("kw", SGD_CASES, ids=lambda kw: ",".join(kw))
def test_sgd_matches_definition(backend, dtype, rng, kw):
    param, grads = _state(rng, 40, dtype)
    got, velocity = _run_sgd(param, grads, **kw)
    ref, ref_buf = sgd_steps(param, grads, **kw)
    np.testing.assert_allclose(got, ref, **REF_TOL[dtype])
    if ref_buf is not None:
        np.testing.assert_allclose(velocity, ref_buf, **REF_TOL[dtype])


@pytest.mark.parametrize("kw", SGD_CASES, ids=lambda kw: ",".join(kw))
def test_sgd_backends_agree(dtype, rng, kw):
    param, grads = _state(rng, 3001, dtype, count=3)
    results = run_on_each_backend(lambda: _run_sgd(param, grads, **kw)[0])
    np.testing.assert_allclose(results["cython"], results["numpy"], **TOL[dtype])


def test_sgd_first_step_sets_velocity_to_gradient(backend):
    # PyTorch initialises the buffer to g on the first step (no dampening applied).
    param = np.zeros(2)
    velocity = np.full(2, 123.0)  # ignored at step 1
    ops.sgd_update(param, np.array([1.0, -1.0]), velocity, 1, lr=1.0, momentum=0.9,
                   dampening=0.5)
    np.testing.assert_array_equal(velocity, [1.0, -1.0])
    np.testing.assert_array_equal(param, [-1.0, 1.0])


# ---- RMSprop -----------------------------------------------------------------

RMSPROP_CASES = [
    {"lr": 0.01},
    {"lr": 0.01, "alpha": 0.9, "eps": 1e-4, "weight_decay": 0.1},
    {"lr": 0.01, "momentum": 0.8},
    {"lr": 0.01, "centered": True},
    {"lr": 0.01, "centered": True, "momentum": 0.5},
]


def _run_rmsprop(param, grads, **kw):
    param = param.copy()
    sq = np.zeros_like(param)
    buf = np.zeros_like(param) if kw.get("momentum") else None
    ga = np.zeros_like(param) if kw.get("centered") else None
    for g in grads:
        ops.rmsprop_update(param, g, sq, momentum_buffer=buf, grad_avg=ga, **kw)
    return param


@pytest.mark.parametrize("kw", RMSPROP_CASES, ids=lambda kw: ",".join(kw))
def test_rmsprop_matches_definition(backend, dtype, rng, kw):
    param, grads = _state(rng, 40, dtype)
    got = _run_rmsprop(param, grads, **kw)
    np.testing.assert_allclose(got, rmsprop_steps(param, grads, **kw), **REF_TOL[dtype])


@pytest.mark.parametrize("kw", RMSPROP_CASES, ids=lambda kw: ",".join(kw))
def test_rmsprop_backends_agree(dtype, rng, kw):
    param, grads = _state(rng, 3001, dtype, count=3)
    results = run_on_each_backend(lambda: _run_rmsprop(param, grads, **kw))
    np.testing.assert_allclose(results["cython"], results["numpy"], **TOL[dtype])


def test_rmsprop_centered_rounding_never_gives_nan(backend):
    # A constant gradient makes square_avg - grad_avg**2 cancel; in float32 the rounding
    # takes it below zero at many steps (checked below), where sqrt would give NaN.
    g = np.full(8, 0.7, np.float32)
    alpha, one_minus_alpha = np.float32(0.99), np.float32(1 - 0.99)  # as the kernels round them
    sq = ga = np.float32(0)
    negative = 0
    for _ in range(2000):
        sq = alpha * sq + one_minus_alpha * g[0] * g[0]
        ga = alpha * ga + one_minus_alpha * g[0]
        negative += bool(sq - ga * ga < 0)
    assert negative > 0  # the hazard is real for these inputs
    param = np.zeros(8, np.float32)
    square_avg, grad_avg = np.zeros_like(param), np.zeros_like(param)
    for _ in range(2000):
        ops.rmsprop_update(param, g, square_avg, centered=True, grad_avg=grad_avg, lr=1e-6)
    assert np.all(np.isfinite(param))
