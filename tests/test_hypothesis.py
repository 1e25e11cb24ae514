"""Property tests: the two backends agree on shapes and values hypothesis picks."""

from __future__ import annotations

import numpy as np
from conftest import TOL, run_on_each_backend
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fastnn import ops

dtypes = st.sampled_from([np.float32, np.float64])
finite = {"allow_nan": False, "allow_infinity": False, "min_value": -1e3, "max_value": 1e3,
          "width": 32}


@st.composite
def bn_case(draw):
    dtype = draw(dtypes)
    n = draw(st.integers(2, 40))
    d = draw(st.integers(1, 70))
    x = draw(arrays(dtype, (n, d), elements=st.floats(**finite)))
    dout = draw(arrays(dtype, (n, d), elements=st.floats(**finite)))
    gamma = draw(arrays(dtype, (d,), elements=st.floats(0.125, 3.0, width=32)))
    return x, dout, gamma


def _assert_backends_agree(results, dtype, scale=1.0):
    tol = dict(TOL[dtype])
    tol["atol"] = tol["atol"] * scale
    for a, b in zip(results["cython"], results["numpy"], strict=True):
        np.testing.assert_allclose(a, b, **tol)


@settings(max_examples=60, deadline=None)
@given(bn_case())
def test_bn_backends_agree_property(case):
    x, dout, gamma = case
    dtype = x.dtype.type
    beta = np.zeros_like(gamma)

    def run():
        rm, rv = np.zeros_like(gamma), np.ones_like(gamma)
        out, cache = ops.batchnorm_forward(x, gamma, beta, rm, rv)
        grads = ops.batchnorm_backward(dout, cache)
        assert all(np.all(np.isfinite(g)) for g in (out, *grads))
        return (out, rm, rv, *grads)

    results = run_on_each_backend(run)
    # dx scales with |dout| * gamma / std, which hypothesis can make large.
    scale = 1.0 + float(np.abs(dout).max()) * float(gamma.max()) / np.sqrt(1e-5)
    _assert_backends_agree(results, dtype, scale)


@st.composite
def ce_case(draw):
    dtype = draw(dtypes)
    n = draw(st.integers(1, 30))
    c = draw(st.integers(1, 40))
    z = draw(arrays(dtype, (n, c), elements=st.floats(**finite)))
    y = draw(arrays(np.int64, (n,), elements=st.integers(0, c - 1)))
    smoothing = draw(st.floats(0.0, 1.0))
    weighted = draw(st.booleans())
    w = draw(arrays(dtype, (c,), elements=st.floats(0.5, 2.0, width=32))) if weighted else None
    return z, y, smoothing, w


@settings(max_examples=80, deadline=None)
@given(ce_case())
def test_ce_backends_agree_property(case):
    z, y, smoothing, w = case
    dtype = z.dtype.type

    def run():
        loss, grad = ops.softmax_cross_entropy(z, y, label_smoothing=smoothing, class_weight=w)
        assert np.isfinite(loss) and np.all(np.isfinite(grad))
        # Each gradient row of the unweighted loss sums to zero (softmax - Q sums to 0).
        if w is None:
            np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-5)
        return np.array(loss), grad, ops.softmax(z)

    # The loss grows with the logits' spread (up to ~2e3 here): scale the absolute tolerance.
    _assert_backends_agree(run_on_each_backend(run), dtype, scale=1e3 if dtype == np.float32 else 1)


@settings(max_examples=40, deadline=None)
@given(dtypes.flatmap(lambda dt: st.tuples(
    st.just(dt),
    arrays(dt, st.integers(1, 200), elements=st.floats(-10.0, 10.0, width=32)),
    st.integers(1, 10_000),
    st.floats(1e-5, 0.5), st.booleans(), st.booleans(), st.floats(0, 0.2))))
def test_adam_backends_agree_property(case):
    dtype, grad, step, lr, amsgrad, decoupled, wd = case
    rng = np.random.default_rng(step)
    param = rng.standard_normal(grad.size).astype(dtype)
    m = (rng.standard_normal(grad.size) * 0.1).astype(dtype)
    v = rng.uniform(0, 1, grad.size).astype(dtype)

    def run():
        p, mm, vv = param.copy(), m.copy(), v.copy()
        v_max = vv.copy() if amsgrad else None
        ops.adam_update(p, grad, mm, vv, step, lr=lr, amsgrad=amsgrad, v_max=v_max,
                        decoupled=decoupled, weight_decay=wd)
        return p, mm, vv

    _assert_backends_agree(run_on_each_backend(run), dtype)
