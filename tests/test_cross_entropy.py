"""Fused softmax cross-entropy and row softmax."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REF_TOL, TOL, run_on_each_backend
from reference import cross_entropy, log_softmax, numerical_gradient

from fastnn import ops

SHAPES = [(1, 1), (1, 2), (3, 5), (7, 3), (64, 10), (5, 4099), (33, 1000)]


def _logits(rng, shape, dtype, scale=3.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def _labels(rng, n, c, dtype=np.int64):
    return rng.integers(0, c, n).astype(dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_ce_matches_definition(backend, dtype, rng, shape, smoothing):
    z = _logits(rng, shape, dtype)
    y = _labels(rng, shape[0], shape[1])
    loss, grad = ops.softmax_cross_entropy(z, y, label_smoothing=smoothing)
    assert isinstance(loss, float)
    assert grad.dtype == dtype and grad.shape == shape
    np.testing.assert_allclose(loss, cross_entropy(z, y, smoothing), **REF_TOL[dtype])
    # The course's dZ = Y_hat - Y (smoothed targets), divided by N.
    q = np.full(shape, smoothing / shape[1])
    q[np.arange(shape[0]), y] += 1 - smoothing
    expected = (np.exp(log_softmax(z)) - q) / shape[0]
    np.testing.assert_allclose(grad, expected, **REF_TOL[dtype])


@pytest.mark.parametrize("shape", SHAPES)
def test_ce_backends_agree(dtype, rng, shape):
    z = _logits(rng, shape, dtype)
    y = _labels(rng, shape[0], shape[1])
    w = rng.uniform(0.2, 2.0, shape[1]).astype(dtype)

    def run():
        plain = ops.softmax_cross_entropy(z, y)
        weighted = ops.softmax_cross_entropy(z, y, label_smoothing=0.2, class_weight=w)
        return plain[0], plain[1], weighted[0], weighted[1], ops.softmax(z)

    results = run_on_each_backend(run)
    for a, b in zip(results["cython"], results["numpy"], strict=True):
        np.testing.assert_allclose(a, b, **TOL[dtype])


@pytest.mark.parametrize("smoothing", [0.0, 0.3, 1.0])
def test_ce_class_weights_match_definition(backend, dtype, rng, smoothing):
    z = _logits(rng, (20, 6), dtype)
    y = _labels(rng, 20, 6)
    w = rng.uniform(0.1, 3.0, 6).astype(dtype)
    loss, _ = ops.softmax_cross_entropy(z, y, label_smoothing=smoothing, class_weight=w)
    np.testing.assert_allclose(loss, cross_entropy(z, y, smoothing, w), **REF_TOL[dtype])


@pytest.mark.parametrize("smoothing", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_ce_gradient_finite_differences(backend, rng, smoothing, weighted):
    z = _logits(rng, (6, 5), np.float64)
    y = _labels(rng, 6, 5)
    w = rng.uniform(0.2, 2.0, 5) if weighted else None
    _, grad = ops.softmax_cross_entropy(z, y, label_smoothing=smoothing, class_weight=w)
    numeric = numerical_gradient(lambda v: cross_entropy(v, y, smoothing, w), z)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


def test_ce_extreme_logits(backend, dtype):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]], dtype)
    y = np.array([1, 2, 0])
    loss, grad = ops.softmax_cross_entropy(z, y)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(loss, (2e4 + np.log(3) + np.log(2)) / 3, rtol=1e-6)
    np.testing.assert_allclose(grad, [[1 / 3, -1 / 3, 0], [1 / 9, 1 / 9, -2 / 9],
                                      [-1 / 6, 1 / 6, 0]], atol=1e-7)


def test_ce_label_smoothing_zero_is_one_hot(backend, rng):
    z = _logits(rng, (4, 3), np.float64)
    y = np.array([0, 1, 2, 1])
    loss, _ = ops.softmax_cross_entropy(z, y, label_smoothing=0.0)
    np.testing.assert_allclose(loss, -log_softmax(z)[np.arange(4), y].mean(), rtol=1e-13)


def test_ce_label_smoothing_one_is_uniform_target(backend, rng):
    z = _logits(rng, (4, 5), np.float64)
    y = np.array([0, 1, 2, 4])
    loss, grad = ops.softmax_cross_entropy(z, y, label_smoothing=1.0)
    # Q = 1/C everywhere: the labels no longer matter.
    np.testing.assert_allclose(loss, -log_softmax(z).mean(axis=1).mean(), rtol=1e-13)
    _, grad_other = ops.softmax_cross_entropy(z, np.array([3, 3, 3, 3]), label_smoothing=1.0)
    np.testing.assert_allclose(grad, grad_other, rtol=1e-13)


def test_ce_class_weights_of_one_change_nothing(backend, dtype, rng):
    z = _logits(rng, (9, 4), dtype)
    y = _labels(rng, 9, 4)
    plain = ops.softmax_cross_entropy(z, y, label_smoothing=0.1)
    ones = ops.softmax_cross_entropy(z, y, label_smoothing=0.1, class_weight=np.ones(4, dtype))
    np.testing.assert_allclose(plain[0], ones[0], **TOL[dtype])
    np.testing.assert_allclose(plain[1], ones[1], **TOL[dtype])


def test_ce_zero_weight_class_is_ignored(backend, rng):
    z = _logits(rng, (6, 3), np.float64)
    y = np.array([0, 1, 2, 2, 0, 1])
    w = np.array([1.0, 1.0, 0.0])
    loss, grad = ops.softmax_cross_entropy(z, y, class_weight=w)
    keep = y != 2
    expected, _ = ops.softmax_cross_entropy(z[keep], y[keep])
    np.testing.assert_allclose(loss, expected, rtol=1e-13)
    np.testing.assert_array_equal(grad[~keep], 0.0)


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64, np.uint8, np.int16, np.uint64])
def test_ce_integer_label_dtypes(backend, rng, label_dtype):
    z = _logits(rng, (8, 5), np.float64)
    y = _labels(rng, 8, 5)
    expected = ops.softmax_cross_entropy(z, y)
    got = ops.softmax_cross_entropy(z, y.astype(label_dtype))
    assert got[0] == expected[0]
    np.testing.assert_array_equal(got[1], expected[1])


def test_ce_grad_in_place_over_logits(backend, dtype, rng):
    z = _logits(rng, (10, 7), dtype)
    y = _labels(rng, 10, 7)
    w = rng.uniform(0.5, 2, 7).astype(dtype)
    expected = ops.softmax_cross_entropy(z.copy(), y, label_smoothing=0.1, class_weight=w)
    loss, grad = ops.softmax_cross_entropy(z, y, label_smoothing=0.1, class_weight=w, grad=z)
    assert grad is z
    assert loss == expected[0]
    np.testing.assert_array_equal(grad, expected[1])


def test_ce_row_loss_buffer(backend, rng):
    z = _logits(rng, (5, 4), np.float64)
    y = _labels(rng, 5, 4)
    rows = np.empty(5)
    loss, _ = ops.softmax_cross_entropy(z, y, row_loss=rows)
    np.testing.assert_allclose(rows, -log_softmax(z)[np.arange(5), y], rtol=1e-13)
    np.testing.assert_allclose(loss, rows.mean(), rtol=1e-14)


def test_ce_read_only_and_strided_inputs(backend, rng):
    big = _logits(rng, (12, 10), np.float64)
    z = big[::2, 1::2]
    y = np.arange(6)[::-1] % 5
    z_ro = np.array(z)
    z_ro.flags.writeable = False
    expected = cross_entropy(np.array(z), y)
    assert np.isclose(ops.softmax_cross_entropy(z, y)[0], expected, rtol=1e-13)
    assert np.isclose(ops.softmax_cross_entropy(z_ro, y)[0], expected, rtol=1e-13)


# ---- softmax -----------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_matches_definition(backend, dtype, rng, shape):
    z = _logits(rng, shape, dtype)
    p = ops.softmax(z)
    assert p.dtype == dtype
    np.testing.assert_allclose(p, np.exp(log_softmax(z)), **REF_TOL[dtype])
    np.testing.assert_allclose(p.sum(axis=1, dtype=np.float64), 1.0, rtol=1e-5)


def test_softmax_extreme_and_in_place(backend, dtype):
    z = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, -1e4]], dtype)
    p = ops.softmax(z, out=z)
    assert p is z
    np.testing.assert_allclose(p, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)


def test_softmax_propagates_nan(backend, dtype):
    z = np.array([[0.0, np.nan, 1.0], [0.0, 1.0, 2.0]], dtype)
    p = ops.softmax(z)
    assert np.all(np.isnan(p[0]))
    assert np.all(np.isfinite(p[1]))


def test_ce_propagates_nan(backend, dtype):
    z = np.array([[0.0, np.nan, 1.0], [0.0, 1.0, 2.0]], dtype)
    loss, grad = ops.softmax_cross_entropy(z, np.array([0, 1]))
    assert np.isnan(loss)
    assert np.all(np.isnan(grad[0])) and np.all(np.isfinite(grad[1]))
