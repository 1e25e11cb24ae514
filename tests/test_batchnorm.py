"""Batch normalisation: forward (train/eval), running statistics, backward."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REF_TOL, TOL, run_on_each_backend
from reference import batchnorm_eval, batchnorm_loss, batchnorm_train, numerical_gradient

import fastnn
from fastnn import ops

SHAPES = [(2, 1), (3, 5), (17, 33), (64, 128), (256, 7), (5, 2100), (31, 4099)]


def _inputs(rng, shape, dtype, loc=0.5, scale=2.0):
    n, d = shape
    x = (rng.standard_normal(shape) * scale + loc).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, d).astype(dtype)
    beta = rng.standard_normal(d).astype(dtype)
    return x, gamma, beta


@pytest.mark.parametrize("shape", SHAPES)
def test_bn_train_forward_matches_definition(backend, dtype, rng, shape):
    x, gamma, beta = _inputs(rng, shape, dtype)
    out, cache = ops.batchnorm_forward(x, gamma, beta)
    ref_out, ref_xhat, ref_mean, ref_var = batchnorm_train(x, gamma, beta)
    assert out.dtype == dtype and out.shape == shape
    np.testing.assert_allclose(out, ref_out, **REF_TOL[dtype])
    np.testing.assert_allclose(cache.x_hat, ref_xhat, **REF_TOL[dtype])
    np.testing.assert_allclose(cache.mean, ref_mean, **REF_TOL[dtype])
    np.testing.assert_allclose(cache.inv_std, 1 / np.sqrt(ref_var + 1e-5), **REF_TOL[dtype])


@pytest.mark.parametrize("shape", SHAPES)
def test_bn_backends_agree(dtype, rng, shape):
    x, gamma, beta = _inputs(rng, shape, dtype)
    dout = rng.standard_normal(shape).astype(dtype)

    def run():
        rm, rv = np.zeros(shape[1], dtype), np.ones(shape[1], dtype)
        out, cache = ops.batchnorm_forward(x, gamma, beta, rm, rv)
        dx, dgamma, dbeta = ops.batchnorm_backward(dout, cache)
        out_eval, _ = ops.batchnorm_forward(x, gamma, beta, rm, rv, training=False)
        return out, cache.x_hat, rm, rv, dx, dgamma, dbeta, out_eval

    results = run_on_each_backend(run)
    for a, b in zip(results["cython"], results["numpy"], strict=True):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_allclose(a, b, **TOL[dtype])


def test_bn_running_stats_update(backend, dtype, rng):
    x, gamma, beta = _inputs(rng, (10, 4), dtype)
    rm = np.array([0.5, -1.0, 0.0, 2.0], dtype)
    rv = np.array([1.0, 2.0, 0.5, 1.0], dtype)
    rm0, rv0 = rm.astype(np.float64), rv.astype(np.float64)
    ops.batchnorm_forward(x, gamma, beta, rm, rv, momentum=0.25)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(rm, 0.75 * rm0 + 0.25 * x64.mean(0), **REF_TOL[dtype])
    # The running variance stores the unbiased (n - 1) variance, as PyTorch does.
    np.testing.assert_allclose(rv, 0.75 * rv0 + 0.25 * x64.var(0, ddof=1), **REF_TOL[dtype])


def test_bn_running_stats_converge_to_population(backend, rng):
    # momentum 0.1 is an EWA with beta 0.9: after many batches from one
    # distribution the running statistics approach its mean and variance.
    rm, rv = np.zeros(3), np.ones(3)
    gamma, beta = np.ones(3), np.zeros(3)
    for _ in range(300):
        x = rng.normal([1.0, -2.0, 5.0], [0.5, 2.0, 3.0], size=(256, 3))
        ops.batchnorm_forward(x, gamma, beta, rm, rv)
    np.testing.assert_allclose(rm, [1.0, -2.0, 5.0], atol=0.1)
    np.testing.assert_allclose(rv, [0.25, 4.0, 9.0], rtol=0.1)


def test_bn_no_running_stats_leaves_nothing_to_update(backend, dtype, rng):
    x, gamma, beta = _inputs(rng, (6, 3), dtype)
    out, _ = ops.batchnorm_forward(x, gamma, beta)
    np.testing.assert_allclose(out, batchnorm_train(x, gamma, beta)[0], **REF_TOL[dtype])


@pytest.mark.parametrize("n", [1, 2, 9])
def test_bn_eval_uses_running_stats(backend, dtype, rng, n):
    x, gamma, beta = _inputs(rng, (n, 6), dtype)
    rm = rng.standard_normal(6).astype(dtype)
    rv = rng.uniform(0.1, 3.0, 6).astype(dtype)
    rm_before, rv_before = rm.copy(), rv.copy()
    out, _ = ops.batchnorm_forward(x, gamma, beta, rm, rv, training=False)
    np.testing.assert_allclose(out, batchnorm_eval(x, gamma, beta, rm, rv), **REF_TOL[dtype])
    np.testing.assert_array_equal(rm, rm_before)
    np.testing.assert_array_equal(rv, rv_before)


def test_bn_eval_prediction_independent_of_batch(backend, rng):
    x, gamma, beta = _inputs(rng, (8, 5), np.float64)
    rm, rv = rng.standard_normal(5), rng.uniform(0.5, 2, 5)
    whole, _ = ops.batchnorm_forward(x, gamma, beta, rm, rv, training=False)
    for i in range(8):
        alone, _ = ops.batchnorm_forward(x[i:i + 1], gamma, beta, rm, rv, training=False)
        np.testing.assert_array_equal(alone[0], whole[i])


def test_bn_zero_variance_feature(backend, dtype, rng):
    x, gamma, beta = _inputs(rng, (16, 4), dtype)
    x[:, 2] = 3.25  # a constant feature
    rm, rv = np.zeros(4, dtype), np.ones(4, dtype)
    out, cache = ops.batchnorm_forward(x, gamma, beta, rm, rv)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[:, 2], np.full(16, beta[2]))  # out = beta, exactly
    dy = rng.standard_normal((16, 4)).astype(dtype)
    dx, dgamma, dbeta = ops.batchnorm_backward(dy, cache)
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(dgamma)) and np.all(np.isfinite(dbeta))
    assert dgamma[2] == 0.0
    # With x_hat = 0 the closed form leaves gamma / sqrt(eps) * (dy - mean(dy)): large, finite.
    dy2 = dy[:, 2].astype(np.float64)
    np.testing.assert_allclose(dx[:, 2], gamma[2] / np.sqrt(1e-5) * (dy2 - dy2.mean()),
                               **REF_TOL[dtype])


@pytest.mark.parametrize("loc", [1e4, -3e3])
def test_bn_large_mean_small_spread_float32_is_accurate(backend, rng, loc):
    # E[x^2] - E[x]^2 would cancel catastrophically here in float32.
    x = (loc + rng.standard_normal((512, 8)) * 0.01).astype(np.float32)
    gamma, beta = np.ones(8, np.float32), np.zeros(8, np.float32)
    out, cache = ops.batchnorm_forward(x, gamma, beta)
    ref_out, _, ref_mean, ref_var = batchnorm_train(x, gamma, beta)
    np.testing.assert_allclose(1 / cache.inv_std.astype(np.float64) ** 2 - 1e-5, ref_var, rtol=1e-4)
    np.testing.assert_allclose(out, ref_out, atol=2e-4)


def test_bn_batch_of_two_is_plus_minus_one(backend, dtype):
    x = np.array([[1.0, -4.0], [3.0, 4.0]], dtype)
    out, _ = ops.batchnorm_forward(x, np.ones(2, dtype), np.zeros(2, dtype), eps=1e-12)
    np.testing.assert_allclose(out, [[-1, -1], [1, 1]], rtol=1e-6)


# ---- backward ---------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 1), (5, 3), (12, 7)])
def test_bn_backward_finite_differences(backend, rng, shape):
    x, gamma, beta = _inputs(rng, shape, np.float64)
    dout = rng.standard_normal(shape)
    _, cache = ops.batchnorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = ops.batchnorm_backward(dout, cache)
    np.testing.assert_allclose(
        dx, numerical_gradient(lambda v: batchnorm_loss(v, gamma, beta, dout), x),
        rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(
        dgamma, numerical_gradient(lambda g: batchnorm_loss(x, g, beta, dout), gamma),
        rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(
        dbeta, numerical_gradient(lambda b: batchnorm_loss(x, gamma, b, dout), beta),
        rtol=1e-6, atol=1e-8)


def test_bn_backward_eval_finite_differences(backend, rng):
    x, gamma, beta = _inputs(rng, (6, 4), np.float64)
    rm, rv = rng.standard_normal(4), rng.uniform(0.5, 2.0, 4)
    dout = rng.standard_normal((6, 4))
    _, cache = ops.batchnorm_forward(x, gamma, beta, rm, rv, training=False)
    dx, dgamma, dbeta = ops.batchnorm_backward(dout, cache)

    def loss(xv, g, b):
        return float((batchnorm_eval(xv, g, b, rm, rv) * dout).sum())

    np.testing.assert_allclose(dx, numerical_gradient(lambda v: loss(v, gamma, beta), x),
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dgamma, numerical_gradient(lambda g: loss(x, g, beta), gamma),
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dbeta, dout.sum(0), rtol=1e-12)


def test_bn_backward_matches_closed_form(backend, dtype, rng):
    # dz = gamma / (N sqrt(var + eps)) * (N dy - sum dy - x_hat * sum(dy * x_hat))
    x, gamma, beta = _inputs(rng, (40, 9), dtype)
    dy = rng.standard_normal((40, 9)).astype(dtype)
    _, cache = ops.batchnorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = ops.batchnorm_backward(dy, cache)
    _, x_hat, _, var = batchnorm_train(x, gamma, beta)
    dy64 = dy.astype(np.float64)
    n = 40
    expected = gamma / (n * np.sqrt(var + 1e-5)) * (
        n * dy64 - dy64.sum(0) - x_hat * (dy64 * x_hat).sum(0))
    np.testing.assert_allclose(dx, expected, **REF_TOL[dtype])
    np.testing.assert_allclose(dgamma, (dy64 * x_hat).sum(0), **REF_TOL[dtype])
    np.testing.assert_allclose(dbeta, dy64.sum(0), **REF_TOL[dtype])


# ---- buffers, aliasing, unusual inputs --------------------------------------


def test_bn_in_place_out_is_x(backend, dtype, rng):
    x, gamma, beta = _inputs(rng, (9, 5), dtype)
    expected, _ = ops.batchnorm_forward(x.copy(), gamma, beta)
    out, _ = ops.batchnorm_forward(x, gamma, beta, out=x)
    assert out is x
    np.testing.assert_array_equal(x, expected)


def test_bn_eval_in_place_then_backward_says_x_is_gone(backend, rng):
    x, gamma, beta = _inputs(rng, (4, 3), np.float64)
    rm, rv = np.zeros(3), np.ones(3)
    _, cache = ops.batchnorm_forward(x, gamma, beta, rm, rv, training=False, out=x)
    with pytest.raises(ValueError, match="x is gone"):
        ops.batchnorm_backward(np.ones((4, 3)), cache)


def test_bn_backward_in_place_dx_is_dout(backend, dtype, rng):
    x, gamma, beta = _inputs(rng, (9, 5), dtype)
    dout = rng.standard_normal((9, 5)).astype(dtype)
    _, cache = ops.batchnorm_forward(x, gamma, beta)
    expected = ops.batchnorm_backward(dout.copy(), cache)
    dx, dgamma, dbeta = ops.batchnorm_backward(dout, cache, dx=dout)
    assert dx is dout
    for a, b in zip((dx, dgamma, dbeta), expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_bn_cache_buffers_are_reused(backend, dtype, rng):
    x, gamma, beta = _inputs(rng, (8, 4), dtype)
    out = np.empty_like(x)
    _, cache = ops.batchnorm_forward(x, gamma, beta, out=out)
    buffers = (cache.x_hat, cache.mean, cache.inv_std)
    x2, _, _ = _inputs(rng, (8, 4), dtype)
    out2, cache2 = ops.batchnorm_forward(x2, gamma, beta, out=out, cache=cache)
    assert cache2 is cache and out2 is out
    assert all(a is b for a, b in zip((cache.x_hat, cache.mean, cache.inv_std), buffers,
                                      strict=True))
    np.testing.assert_allclose(out2, batchnorm_train(x2, gamma, beta)[0], **REF_TOL[dtype])


def test_bn_cache_of_other_shape_gets_fresh_buffers(backend, rng):
    x, gamma, beta = _inputs(rng, (8, 4), np.float64)
    _, cache = ops.batchnorm_forward(x, gamma, beta)
    x_small = x[:3]
    out, cache2 = ops.batchnorm_forward(x_small, gamma, beta, cache=cache)
    assert cache2.x_hat.shape == (3, 4)
    np.testing.assert_allclose(out, batchnorm_train(x_small, gamma, beta)[0], rtol=1e-12)


def test_bn_read_only_inputs(backend, dtype, rng):
    x, gamma, beta = _inputs(rng, (7, 3), dtype)
    for a in (x, gamma, beta):
        a.flags.writeable = False
    out, cache = ops.batchnorm_forward(x, gamma, beta)
    dout = np.ones((7, 3), dtype)
    dout.flags.writeable = False
    ops.batchnorm_backward(dout, cache)
    np.testing.assert_allclose(out, batchnorm_train(x, gamma, beta)[0], **REF_TOL[dtype])


def test_bn_non_contiguous_and_broadcast_inputs_are_copied(backend, rng):
    big = rng.standard_normal((10, 12))
    x = big[::2, ::3]  # strided view
    gamma = np.broadcast_to(np.float64(1.5), (4,))  # stride-0 view
    beta = np.zeros(8)[::2]
    out, _ = ops.batchnorm_forward(x, gamma, beta)
    np.testing.assert_allclose(out, batchnorm_train(np.array(x), 1.5, 0.0)[0], rtol=1e-12)
    x_f = np.asfortranarray(rng.standard_normal((6, 5)))
    out_f, _ = ops.batchnorm_forward(x_f, np.ones(5), np.zeros(5))
    np.testing.assert_allclose(out_f, batchnorm_train(x_f, 1.0, 0.0)[0], rtol=1e-12)


def test_bn_memmap_input(backend, rng, tmp_path):
    path = tmp_path / "x.dat"
    data = rng.standard_normal((6, 4)).astype(np.float32)
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=(6, 4))
    mm[:] = data
    mm.flush()
    ro = np.memmap(path, dtype=np.float32, mode="r", shape=(6, 4))
    out, _ = ops.batchnorm_forward(ro, np.ones(4, np.float32), np.zeros(4, np.float32))
    np.testing.assert_allclose(out, batchnorm_train(data, 1.0, 0.0)[0], rtol=1e-5, atol=1e-5)


def _buffer_at(shape, dtype, offset):
    """An uninitialised C-contiguous array starting `offset` bytes past a 64-byte boundary."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + offset
    return raw[start:start + nbytes].view(dtype).reshape(shape)


# x 8 MiB: above the size (4 MiB, FASTNN_BN_STREAM_BYTES) from which the cython kernels write
# out, x_hat and dx with streaming stores.
STREAMED_SHAPES = {np.float32: (2048, 1024), np.float64: (1024, 1024)}


@pytest.mark.parametrize("layout", ["fresh", "in_place", "offset", "mixed_offsets", "odd_width"])
def test_bn_large_streamed_outputs_equal_the_same_columns_alone(dtype, rng, layout):
    """Large outputs are streamed from each row's first 16-byte aligned element (the first
    few and last few elements, and rows that cannot all be aligned alike, with plain stores),
    with the same arithmetic: each feature's results equal, bit for bit, those of the same
    columns normalised on their own (a small batch, plain stores). Layouts: fresh outputs;
    out = x and dx = dout; outputs 4 or 8 bytes past a 64-byte boundary; out and x_hat (and dx)
    at different offsets; 1023 features (rows not a multiple of 16 bytes)."""
    n, d = STREAMED_SHAPES[dtype]
    if layout == "odd_width":
        d -= 1
    x, gamma, beta = _inputs(rng, (n, d), dtype)
    dout = rng.standard_normal((n, d)).astype(dtype)
    rm, rv = rng.standard_normal(d).astype(dtype), rng.uniform(0.5, 2, d).astype(dtype)
    cols = [0, 1, 2, 3, 5, 8, d // 2 + 1, d - 2, d - 1]
    size = np.dtype(dtype).itemsize

    def run(x, dout, rm, rv, gamma, beta, layout):
        out = x_hat = dx = None
        shape = x.shape
        if layout == "in_place":
            out, dx = x, dout
        elif layout == "offset":
            out, x_hat, dx = (_buffer_at(shape, dtype, size) for _ in range(3))
        elif layout == "mixed_offsets":
            out, x_hat, dx = (_buffer_at(shape, dtype, k * size) for k in (0, 1, 2))
        cache = None
        if x_hat is not None:
            _, cache = ops.batchnorm_forward(x[:2].copy(), gamma, beta)
            cache.x_hat = x_hat  # the forward writes x_hat into the cache's buffer
        out, cache = ops.batchnorm_forward(x, gamma, beta, rm, rv, out=out, cache=cache)
        assert x_hat is None or cache.x_hat is x_hat
        dx, dgamma, dbeta = ops.batchnorm_backward(dout, cache, dx=dx)
        return out, cache.x_hat, cache.mean, cache.inv_std, rm, rv, dx, dgamma, dbeta

    with fastnn.backend("cython"):
        small = run(x[:, cols].copy(), dout[:, cols].copy(), rm[cols].copy(), rv[cols].copy(),
                    gamma[cols].copy(), beta[cols].copy(), "fresh")
        large = run(x.copy(), dout.copy(), rm, rv, gamma, beta, layout)
    names = ("out", "x_hat", "mean", "inv_std", "running_mean", "running_var", "dx", "dgamma",
             "dbeta")
    for name, a, b in zip(names, large, small, strict=True):
        np.testing.assert_array_equal(a[..., cols], b, err_msg=name)
    np.testing.assert_allclose(large[0], batchnorm_train(x, gamma, beta)[0], **REF_TOL[dtype])


def test_bn_non_contiguous_running_stats_rejected_not_silently_lost(backend):
    x = np.random.default_rng(0).standard_normal((5, 3))
    rm = np.zeros(6)[::2]  # a view: updates to a copy would be lost
    with pytest.raises(ValueError, match="running_mean must be C-contiguous"):
        ops.batchnorm_forward(x, np.ones(3), np.zeros(3), rm, np.ones(3))
