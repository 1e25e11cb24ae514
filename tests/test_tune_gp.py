"""fastnn.tune.gp: Matérn 5/2 kernel, fitted hyperparameters, posterior, expected improvement.

Expected values come from independent float64 formulas written here (scalar loops
with the math module, numpy.linalg.solve/slogdet), never from the module itself.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastnn.tune.gp import (
    PRIOR,
    GaussianProcess,
    expected_improvement,
    log_expected_improvement,
    matern52,
    power_warp,
    yeo_johnson,
)


def matern_reference(X1, X2, length_scale, variance):
    """Scalar-loop Matérn 5/2."""
    ell = np.broadcast_to(length_scale, (X1.shape[1],))
    K = np.empty((len(X1), len(X2)))
    for i, a in enumerate(X1):
        for j, b in enumerate(X2):
            r = math.sqrt(sum(((p - q) / s) ** 2 for p, q, s in zip(a, b, ell, strict=True)))
            s5r = math.sqrt(5) * r
            K[i, j] = variance * (1 + s5r + 5 * r * r / 3) * math.exp(-s5r)
    return K


def ei_reference(mean, std, best, xi):
    if std == 0:
        return max(mean - best - xi, 0.0)
    z = (mean - best - xi) / std
    cdf = 0.5 * (1 + math.erf(z / math.sqrt(2)))
    pdf = math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    return (mean - best - xi) * cdf + std * pdf


# ---------------------------------------------------------------------------- kernel

def test_matern_matches_the_formula_with_ard():
    rng = np.random.default_rng(0)
    X1, X2 = rng.random((7, 3)), rng.random((5, 3))
    ell = np.array([0.3, 1.2, 0.05])
    np.testing.assert_allclose(matern52(X1, X2, ell, 2.5), matern_reference(X1, X2, ell, 2.5),
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(matern52(X1, X2, 0.4), matern_reference(X1, X2, 0.4, 1.0),
                               rtol=1e-12, atol=1e-14)


def test_matern_known_values():
    # r = 1: (1 + √5 + 5/3) e^{-√5}; r = 0: the variance
    expected = (1 + math.sqrt(5) + 5 / 3) * math.exp(-math.sqrt(5))
    K = matern52(np.array([[0.0], [2.0]]), np.array([[0.0], [2.0]]), 2.0, variance=3.0)
    np.testing.assert_allclose(K, [[3.0, 3 * expected], [3 * expected, 3.0]], rtol=1e-14)


def test_matern_decreases_with_distance():
    r = np.linspace(0, 5, 200)[:, None]
    k = matern52(np.zeros((1, 1)), r, 1.0)[0]
    assert np.all(np.diff(k) < 0)
    assert k[0] == 1.0 and k[-1] < 1e-3


@settings(max_examples=50, deadline=None)
@given(X=hnp.arrays(np.float64, st.tuples(st.integers(2, 25), st.integers(1, 4)),
                    elements=st.floats(0, 1), unique=False),
       ell=st.floats(0.05, 3.0))
def test_matern_is_positive_semidefinite(X, ell):
    K = matern52(X, X, ell)
    np.testing.assert_allclose(K, K.T, rtol=0, atol=0)
    assert np.linalg.eigvalsh(K).min() > -1e-9


def test_matern_is_positive_definite_on_distinct_points():
    X = np.random.default_rng(1).random((40, 3))
    assert np.linalg.eigvalsh(matern52(X, X, 0.5)).min() > 1e-8


def test_matern_rejects_bad_arguments():
    with pytest.raises(ValueError, match="length_scale"):
        matern52(np.zeros((2, 2)), np.zeros((2, 2)), [1.0, 0.0])
    with pytest.raises(ValueError, match="columns"):
        matern52(np.zeros((2, 2)), np.zeros((2, 3)), 1.0)


# ---------------------------------------------------------------------------- fit and posterior

def sine_data(n=12, freq=6.0):
    X = np.linspace(0, 1, n)[:, None]
    return X, np.sin(freq * X[:, 0])


def test_interpolates_noise_free_data():
    X, y = sine_data()
    gp = GaussianProcess(seed=0).fit(X, y)
    mean, std = gp.predict(X)
    np.testing.assert_allclose(mean, y, atol=1e-3)
    assert std.max() < 0.02
    # and between the points, a smooth function is predicted well
    Xt = np.linspace(0.02, 0.98, 50)[:, None]
    np.testing.assert_allclose(gp.predict(Xt, return_std=False), np.sin(6 * Xt[:, 0]), atol=0.02)


def test_posterior_std_small_at_data_and_large_away():
    X, y = sine_data(6)
    gp = GaussianProcess(seed=0, prior=False).fit(X, y)  # the prior's noise blurs 6 points
    _, at_data = gp.predict(X)
    _, mid = gp.predict((X[:-1] + X[1:]) / 2)
    _, far = gp.predict(np.array([[4.0], [-3.0]]))
    prior_std = math.sqrt(gp.variance_) * gp.y_std_
    assert at_data.max() < 0.05 * mid.min()
    np.testing.assert_allclose(far, prior_std, rtol=1e-3)
    assert np.all(mid < far[0])


def test_predict_matches_the_posterior_formulas():
    rng = np.random.default_rng(2)
    X, Xt = rng.random((15, 2)), rng.random((6, 2))
    y = 3.0 + 2.0 * np.cos(4 * X[:, 0]) + X[:, 1]
    gp = GaussianProcess(seed=0).fit(X, y)
    ys = (y - y.mean()) / y.std()
    ell, s2, sn2 = gp.length_scale_, gp.variance_, gp.noise_
    K = matern_reference(X, X, ell, s2) + sn2 * np.eye(len(X))
    Ks = matern_reference(Xt, X, ell, s2)
    mean = Ks @ np.linalg.solve(K, ys) * y.std() + y.mean()
    var = s2 - np.einsum("ij,ji->i", Ks, np.linalg.solve(K, Ks.T))
    m, s = gp.predict(Xt)
    np.testing.assert_allclose(m, mean, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(s, np.sqrt(var) * y.std(), rtol=1e-6, atol=1e-8)


def test_log_marginal_likelihood_matches_the_formula():
    rng = np.random.default_rng(3)
    X = rng.random((20, 2))
    y = np.sin(3 * X[:, 0]) + 0.1 * rng.standard_normal(20)
    gp = GaussianProcess(seed=0).fit(X, y)
    ys = (y - y.mean()) / y.std()
    for ell, s2, sn2 in [(gp.length_scale_, gp.variance_, gp.noise_), ([0.2, 0.7], 1.5, 0.05)]:
        K = matern_reference(X, X, np.asarray(ell), s2) + sn2 * np.eye(20)
        expected = (-0.5 * ys @ np.linalg.solve(K, ys) - 0.5 * np.linalg.slogdet(K)[1]
                    - 10 * math.log(2 * math.pi))
        assert gp.log_marginal_likelihood(ell, s2, sn2) == pytest.approx(expected, rel=1e-10)
    assert gp.log_marginal_likelihood_ == pytest.approx(gp.log_marginal_likelihood(), abs=1e-8)


def test_lml_gradient_matches_finite_differences():
    rng = np.random.default_rng(4)
    X = rng.random((25, 3))
    y = np.sin(5 * X[:, 0]) + X[:, 1] ** 2 + 0.05 * rng.standard_normal(25)
    ys = (y - y.mean()) / y.std()
    D = np.moveaxis((X[:, None, :] - X[None, :, :]) ** 2, 2, 0).reshape(3, -1)
    for ard, theta in [(True, np.log([0.3, 0.8, 2.0, 1.3, 0.02])),
                       (False, np.log([0.5, 0.7, 0.1]))]:
        gp = GaussianProcess(ard=ard)
        _, grad = gp._lml_and_grad(theta, D, ys)
        for i in range(len(theta)):
            e = np.zeros_like(theta)
            e[i] = 1e-6
            numeric = (gp._lml_and_grad(theta + e, D, ys)[0]
                       - gp._lml_and_grad(theta - e, D, ys)[0]) / 2e-6
            assert grad[i] == pytest.approx(numeric, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("prior", [False, True])
def test_fit_is_a_local_maximum_of_the_objective(prior):
    # without the prior the likelihood, with it the posterior (likelihood + log prior)
    rng = np.random.default_rng(5)
    X = rng.random((30, 2))
    y = np.sin(6 * X[:, 0]) * np.cos(2 * X[:, 1]) + 0.05 * rng.standard_normal(30)
    gp = GaussianProcess(seed=1, prior=prior).fit(X, y)

    def objective(**kw):
        return gp.log_marginal_likelihood(**kw) + gp.log_prior(**kw)

    best = objective()
    params = {"length_scale": gp.length_scale_, "variance": gp.variance_, "noise": gp.noise_}
    for name, value in params.items():
        for factor in (0.8, 1.25):
            trial = dict(params, **{name: np.asarray(value) * factor})
            assert objective(**trial) <= best + 1e-6


def test_log_prior_is_the_normal_of_the_documented_parameters():
    X = np.random.default_rng(0).random((5, 3))
    gp = GaussianProcess(seed=0).fit(X, X[:, 0])
    (m_ell, s_ell), (m_var, s_var), (m_noise, s_noise) = (
        PRIOR["length_scale"], PRIOR["variance"], PRIOR["noise"])
    m_ell += 0.5 * math.log(3)
    ell = [0.2, 0.5, 2.0]
    expected = -0.5 * (sum(((math.log(v) - m_ell) / s_ell) ** 2 for v in ell)
                       + ((math.log(1.5) - m_var) / s_var) ** 2
                       + ((math.log(1e-3) - m_noise) / s_noise) ** 2)
    assert gp.log_prior(ell, 1.5, 1e-3) == pytest.approx(expected, rel=1e-12)
    assert GaussianProcess(prior=False).fit(X, X[:, 0]).log_prior() == 0.0


def test_a_categorical_dimension_has_its_own_length_scale_prior():
    rng = np.random.default_rng(1)
    X = np.column_stack([rng.random(6), (rng.integers(3, size=6) + 0.5) / 3])
    gp = GaussianProcess(seed=0, categorical=[False, True]).fit(X, X[:, 0])
    (m_ell, s_ell), (m_cat, s_cat) = PRIOR["length_scale"], PRIOR["category_length_scale"]
    m_ell, m_cat = m_ell + 0.5 * math.log(2), m_cat + 0.5 * math.log(2)
    both = GaussianProcess(seed=0).fit(X, X[:, 0])
    ell = [0.3, 0.8]
    rest = gp.log_prior(ell, 1.0, 1e-3) + 0.5 * (((math.log(0.3) - m_ell) / s_ell) ** 2
                                                 + ((math.log(0.8) - m_cat) / s_cat) ** 2)
    assert rest == pytest.approx(both.log_prior(ell, 1.0, 1e-3) + 0.5 * (
        ((math.log(0.3) - m_ell) / s_ell) ** 2 + ((math.log(0.8) - m_ell) / s_ell) ** 2),
        rel=1e-12)
    assert m_cat > m_ell  # options share more than the points of an ordered coordinate


def test_length_scale_follows_a_rescaling_of_the_inputs():
    X, y = sine_data(15, freq=8.0)
    a = GaussianProcess(seed=0).fit(X, y)
    assert 0.05 < a.length_scale_[0] < 1.0
    # the likelihood alone is equivariant (the prior pulls both fits to the same median)
    ml_a = GaussianProcess(seed=0, prior=False).fit(X, y)
    ml_b = GaussianProcess(seed=0, prior=False).fit(3 * X, y)
    assert ml_b.length_scale_[0] / ml_a.length_scale_[0] == pytest.approx(3.0, rel=0.05)
    # a slower function has a longer length scale
    slow = GaussianProcess(seed=0).fit(X, np.sin(2.0 * X[:, 0]))
    assert slow.length_scale_[0] > 2 * a.length_scale_[0]


def test_ard_finds_the_irrelevant_dimension():
    rng = np.random.default_rng(6)
    X = rng.random((40, 2))
    gp = GaussianProcess(seed=0).fit(X, np.sin(5 * X[:, 0]))
    assert gp.length_scale_[1] > 5 * gp.length_scale_[0]
    shared = GaussianProcess(ard=False, seed=0).fit(X, np.sin(5 * X[:, 0]))
    assert shared.length_scale_[0] == shared.length_scale_[1]


def test_noise_is_fitted_to_noisy_data():
    rng = np.random.default_rng(7)
    X = rng.random((60, 1))
    y = np.sin(4 * X[:, 0]) + 0.3 * rng.standard_normal(60)
    gp = GaussianProcess(seed=0).fit(X, y)
    noise_var = gp.noise_ * gp.y_std_ ** 2  # back in the units of y
    assert 0.3 ** 2 / 3 < noise_var < 0.3 ** 2 * 3
    clean = GaussianProcess(seed=0).fit(*sine_data(20, 4.0))
    assert clean.noise_ < 1e-3


def test_fit_is_deterministic():
    rng = np.random.default_rng(8)
    X, y = rng.random((20, 3)), rng.random(20)
    a = GaussianProcess(seed=3).fit(X, y)
    b = GaussianProcess(seed=3).fit(X, y)
    np.testing.assert_array_equal(a.length_scale_, b.length_scale_)
    assert (a.variance_, a.noise_) == (b.variance_, b.noise_)


def test_degenerate_data():
    X = np.array([[0.2], [0.2], [0.5], [0.9]])  # a repeated point
    gp = GaussianProcess(seed=0).fit(X, [1.0, 1.2, 0.0, 0.5])
    assert np.all(np.isfinite(gp.predict(np.linspace(0, 1, 5)[:, None])[0]))
    flat = GaussianProcess(seed=0).fit(np.random.default_rng(0).random((5, 2)), np.full(5, 7.0))
    np.testing.assert_allclose(flat.predict(np.array([[0.5, 0.5]]))[0], 7.0)
    one = GaussianProcess(seed=0).fit([[0.5]], [2.0])
    assert one.predict([[0.5]])[0][0] == pytest.approx(2.0)


def test_condition_believes_a_fantasy():
    X, y = sine_data(6)
    gp = GaussianProcess(seed=0).fit(X, y)
    x = np.array([[0.5]])
    m, s = gp.predict(x)
    believer = gp.condition(x, m)
    m2, s2 = believer.predict(x)
    assert m2[0] == pytest.approx(m[0], abs=1e-6)
    assert s2[0] < 0.1 * s[0]
    np.testing.assert_array_equal(believer.length_scale_, gp.length_scale_)
    assert len(believer.y_train_) == len(y) + 1 and len(gp.y_train_) == len(y)


def test_errors():
    with pytest.raises(ValueError, match="2-D"):
        GaussianProcess().fit(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="same"):
        GaussianProcess().fit(np.zeros((3, 1)), np.zeros(2))
    with pytest.raises(ValueError, match="finite"):
        GaussianProcess().fit(np.zeros((2, 1)), [0.0, np.nan])
    with pytest.raises(RuntimeError, match="fit"):
        GaussianProcess().predict(np.zeros((1, 1)))
    with pytest.raises(ValueError, match="noise"):
        GaussianProcess(noise=-1.0)
    with pytest.raises(ValueError, match="length_scale_bounds"):
        GaussianProcess(length_scale_bounds=(1.0, 0.1))


# ---------------------------------------------------------------------------- expected improvement

def test_ei_matches_the_closed_form():
    means = [-3.0, -0.5, 0.0, 0.2, 1.0, 4.0]
    stds = [0.0, 1e-3, 0.1, 1.0, 2.5]
    mean, std = np.meshgrid(means, stds)
    ei = expected_improvement(mean.ravel(), std.ravel(), best=0.1, xi=0.05)
    expected = [ei_reference(m, s, 0.1, 0.05) for m, s in zip(mean.ravel(), std.ravel(),
                                                               strict=True)]
    np.testing.assert_allclose(ei, expected, rtol=1e-9, atol=1e-15)


def test_ei_is_zero_where_the_mean_is_far_below_best():
    ei = expected_improvement([-10.0, -30.0], [1.0, 1.0], best=0.0, xi=0.0)
    assert np.all(ei >= 0) and ei[0] < 1e-20 and ei[1] < 1e-150


def test_ei_is_the_gain_where_the_mean_is_far_above_best():
    ei = expected_improvement([10.0], [0.5], best=0.0, xi=0.01)
    assert ei[0] == pytest.approx(10.0 - 0.01, rel=1e-12)


def test_ei_grows_with_mean_and_with_uncertainty():
    stds = np.linspace(0.01, 3, 50)
    assert np.all(np.diff(expected_improvement(np.zeros(50), stds, best=0.5)) > 0)
    means = np.linspace(-2, 2, 50)
    assert np.all(np.diff(expected_improvement(means, np.full(50, 0.3), best=0.5)) > 0)


def test_ei_with_gp_prefers_the_unexplored_peak():
    # data on a slope rising to the right edge: EI is largest beyond the best point
    X = np.linspace(0, 0.6, 7)[:, None]
    gp = GaussianProcess(seed=0).fit(X, X[:, 0])
    grid = np.linspace(0, 1, 101)[:, None]
    mean, std = gp.predict(grid)
    ei = expected_improvement(mean, std, best=0.6, xi=0.01)
    assert grid[np.argmax(ei), 0] > 0.6
    assert np.all(ei[grid[:, 0] < 0.5] < 1e-3 * ei.max())


# ---------------------------------------------------------------------------- log EI

def log_h_reference(z):
    """log(z Φ(z) + φ(z)) with 50-digit arithmetic (mpmath; needs no fastnn code)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    zz = mpmath.mpf(float(z))
    return float(mpmath.log(zz * mpmath.ncdf(zz) + mpmath.npdf(zz)))


def test_log_ei_is_the_log_of_ei_where_ei_is_representable():
    mean = np.linspace(-6.0, 3.0, 37)
    for std in (0.05, 0.5, 2.0):
        ei = expected_improvement(mean, np.full_like(mean, std), best=0.2, xi=0.01)
        log_ei = log_expected_improvement(mean, np.full_like(mean, std), best=0.2, xi=0.01)
        ok = ei > 1e-300
        np.testing.assert_allclose(log_ei[ok], np.log(ei[ok]), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("z", [-1.0, -3.0, -10.0, -19.99, -20.01, -38.0, -40.0, -100.0, -1e4])
def test_log_ei_stays_finite_and_accurate_where_ei_underflows(z):
    # EI(z = -40, σ = 1) ≈ 1e-350: plain EI is 0, log EI keeps its value
    log_ei = log_expected_improvement([z], [1.0], best=0.0, xi=0.0)[0]
    assert np.isfinite(log_ei)
    assert log_ei == pytest.approx(log_h_reference(z), rel=1e-12)
    if z <= -40:
        assert expected_improvement([z], [1.0], best=0.0, xi=0.0)[0] == 0.0


def test_log_ei_with_zero_std():
    out = log_expected_improvement([1.0, -1.0], [0.0, 0.0], best=0.0, xi=0.0)
    assert out[0] == pytest.approx(0.0) and out[1] == -np.inf


def test_log_ei_is_increasing_in_mean_and_std_far_in_the_tail():
    means = np.linspace(-300.0, -20.0, 50)
    assert np.all(np.diff(log_expected_improvement(means, np.ones(50), best=0.0)) > 0)
    stds = np.linspace(0.01, 1.0, 50)
    assert np.all(np.diff(log_expected_improvement(np.full(50, -5.0), stds, best=0.0)) > 0)


def test_log_ei_gradient_matches_finite_differences():
    rng = np.random.default_rng(9)
    X = rng.random((20, 3))
    y = np.sin(5 * X[:, 0]) + X[:, 1] * X[:, 2]
    gp = GaussianProcess(seed=0).fit(X, y)
    best = float(y.max())
    from fastnn.tune.gp import _log_ei_and_grad

    def f(U):
        return log_expected_improvement(*gp.predict(U), best, 0.0)

    U = rng.random((6, 3))
    _, grad = _log_ei_and_grad(*gp.predict(U, return_grad=True), best, 0.0)
    h = 1e-5  # log EI reaches -1e3 here: at h = 1e-6 its rounding sways the difference by 1e-5
    for j in range(3):
        e = np.zeros(3)
        e[j] = h
        numeric = (f(U + e) - f(U - e)) / (2 * h)
        np.testing.assert_allclose(grad[:, j], numeric, rtol=1e-5, atol=1e-6)


def test_log_ei_where_the_posterior_has_no_spread():
    # at a trial the GP interpolates, σ rounds to 0 while the gain is one rounding error:
    # log EI is log max(gain, 0), with the gradient of log(gain), and nothing overflows
    from fastnn.tune.gp import _log_ei_and_grad
    gain = (1.0 + 1e-15) - 1.0
    mean = np.array([1.0 + gain, 1.0, 0.5, 1.2])
    std = np.array([0.0, 0.0, 1e-300, 0.1])
    dmean = np.array([[2.0], [1.0], [1.0], [0.5]])
    dstd = np.array([[0.0], [0.0], [0.0], [0.3]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, grad = _log_ei_and_grad(mean, std, dmean, dstd, 1.0, 0.0)
        plain = log_expected_improvement(mean, std, 1.0)
    np.testing.assert_array_equal(value[:3], [math.log(gain), -np.inf, -np.inf])
    np.testing.assert_allclose(grad[0], [2.0 / gain])
    np.testing.assert_array_equal(grad[1:3], [[0.0], [0.0]])
    np.testing.assert_allclose(value, plain, rtol=1e-12)
    assert np.all(np.isfinite(grad[3]))


def test_posterior_gradients_match_finite_differences():
    rng = np.random.default_rng(10)
    X = rng.random((15, 2))
    gp = GaussianProcess(seed=0).fit(X, np.cos(4 * X[:, 0]) + X[:, 1])
    U = rng.random((5, 2))
    _, _, dmean, dstd = gp.predict(U, return_grad=True)
    h = 1e-6
    for j in range(2):
        e = np.zeros(2)
        e[j] = h
        (mp, sp), (mm, sm) = gp.predict(U + e), gp.predict(U - e)
        np.testing.assert_allclose(dmean[:, j], (mp - mm) / (2 * h), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(dstd[:, j], (sp - sm) / (2 * h), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------- incremental updates

def test_incremental_condition_equals_a_full_factorisation():
    rng = np.random.default_rng(11)
    X, X_new = rng.random((25, 3)), rng.random((4, 3))
    y = np.sin(3 * X).sum(1)
    gp = GaussianProcess(seed=0).fit(X, y)
    y_new = rng.standard_normal(4)
    inc = gp.condition(X_new, y_new)
    full = GaussianProcess(seed=0).fit(np.vstack([X, X_new]), np.concatenate([y, y_new]),
                                       hyperparameters=gp.hyperparameters_)
    # the same standardisation: refit on the original data's mean and std
    full.y_mean_, full.y_std_ = gp.y_mean_, gp.y_std_
    full._condition(full.X_train_, (np.concatenate([y, y_new]) - gp.y_mean_) / gp.y_std_)
    K = matern_reference(inc.X_train_, inc.X_train_, gp.length_scale_, gp.variance_) + (
        gp.noise_ * np.eye(29))
    np.testing.assert_allclose(inc._L_inv @ K @ inc._L_inv.T, np.eye(29), atol=1e-8)
    np.testing.assert_allclose(inc._L_inv, full._L_inv, rtol=1e-8, atol=1e-8)
    Xt = rng.random((7, 3))
    for a, b in zip(inc.predict(Xt), full.predict(Xt), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


def test_fit_with_given_hyperparameters_does_not_refit():
    rng = np.random.default_rng(12)
    X = rng.random((12, 2))
    hyper = {"length_scale": [0.3, 0.9], "variance": 1.7, "noise": 1e-3}
    gp = GaussianProcess(seed=0).fit(X, X[:, 0], hyperparameters=hyper)
    np.testing.assert_array_equal(gp.length_scale_, [0.3, 0.9])
    assert (gp.variance_, gp.noise_) == (1.7, 1e-3)
    with pytest.raises(ValueError, match="hyperparameters"):
        GaussianProcess().fit(X, X[:, 0], hyperparameters={"variance": 1.0})


# ---------------------------------------------------------------------------- ARD, categories, warp

def test_ard_recovers_a_known_length_scale_structure():
    # a draw from a GP with length scales (0.15, 0.6, 5): the fit orders them and finds
    # the short one within a factor of 2
    rng = np.random.default_rng(13)
    X = rng.random((80, 3))
    true = np.array([0.15, 0.6, 5.0])
    K = matern_reference(X, X, true, 1.0) + 1e-8 * np.eye(80)
    y = np.linalg.cholesky(K) @ rng.standard_normal(80)
    ell = GaussianProcess(seed=0).fit(X, y).length_scale_
    assert ell[0] < ell[1] < ell[2]
    assert 0.5 * true[0] < ell[0] < 2 * true[0]
    assert ell[2] > 2.0


def test_categorical_dims_use_the_hamming_distance():
    X1 = np.array([[0.1, 0.125], [0.1, 0.875]])
    X2 = np.array([[0.1, 0.375], [0.1, 0.125]])
    K = matern52(X1, X2, [1.0, 0.5], categorical=[False, True])
    r_diff = math.sqrt(1 / 0.25)  # one differing category, ℓ = 0.5
    k_diff = (1 + math.sqrt(5) * r_diff + 5 * r_diff ** 2 / 3) * math.exp(-math.sqrt(5) * r_diff)
    np.testing.assert_allclose(K, [[k_diff, 1.0], [k_diff, k_diff]], rtol=1e-12)
    # the order of the options does not matter: 0.125 vs 0.375 and vs 0.875 are equally far
    assert K[0, 0] == K[1, 0]


def test_yeo_johnson_known_values_and_warp_is_increasing():
    x = np.array([-2.0, -0.5, 0.0, 0.5, 3.0])
    np.testing.assert_allclose(yeo_johnson(x, 1.0), x, rtol=1e-14)
    np.testing.assert_allclose(yeo_johnson(x, 0.0)[2:], np.log1p(x[2:]), rtol=1e-14)
    np.testing.assert_allclose(yeo_johnson(x, 2.0)[:2], -np.log1p(-x[:2]), rtol=1e-14)
    np.testing.assert_allclose(yeo_johnson(np.array([3.0]), 0.5), [(4 ** 0.5 - 1) / 0.5])
    y = -np.exp(np.random.default_rng(14).random(40) * 6)  # a long tail of bad values
    w = power_warp(y)
    assert np.all(np.argsort(w, kind="stable") == np.argsort(y, kind="stable"))
    assert abs(w.mean()) < 1e-12 and w.std() == pytest.approx(1.0)
    skew = lambda v: float(((v - v.mean()) ** 3).mean() / v.std() ** 3)  # noqa: E731
    assert abs(skew(w)) < 0.5 * abs(skew(y))


def test_power_warp_leaves_a_tail_of_good_values_alone():
    # a few good values far above the rest (Hartmann-6): a concave warp would flatten
    # the peak the search climbs, so the warp is the identity (after standardising)
    y = np.exp(np.random.default_rng(15).random(40) * 6)
    np.testing.assert_allclose(power_warp(y), (y - y.mean()) / y.std(), rtol=1e-12)


# ---------------------------------------------------------------------------- edge cases

def test_log_expected_improvement_of_scalars_equals_the_array_form():
    # a 0-d gain went through frompyfunc, which returns a Python float for it
    for mean, std in ((0.5, 1.0), (-3.0, 1.0), (0.2, 0.0)):
        scalar = log_expected_improvement(mean, std, 0.0)
        array = log_expected_improvement([mean], [std], 0.0)[0]
        assert float(scalar) == float(array)
        assert float(expected_improvement(mean, std, 0.0)) == float(
            expected_improvement([mean], [std], 0.0)[0])


def test_warp_grid_rows_are_the_one_lambda_transforms():
    from fastnn.tune.gp import _LAMBDAS, _yeo_johnson_grid
    x = np.array([-3.0, -1.0, -1e-9, 0.0, 1e-9, 0.5, 4.0])
    grid = _yeo_johnson_grid(x, _LAMBDAS)
    for lam, row in zip(_LAMBDAS, grid, strict=True):
        np.testing.assert_array_equal(row, yeo_johnson(x, lam))  # the same arithmetic
    assert 2.0 in _LAMBDAS  # the λ = 2 branch of the negative side is covered


def test_cholesky_adds_jitter_to_a_singular_kernel_and_refuses_an_indefinite_one():
    from fastnn.tune.gp import _cholesky
    v = np.array([1.0, 2.0, 3.0])
    K = np.outer(v, v)  # rank one: positive semi-definite, singular
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(K)
    L = _cholesky(K)
    err = np.abs(L @ L.T - K).max()
    assert 0 < err <= 1e-4 * np.trace(K) / 3 * 1.0001  # within the largest jitter's size
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        _cholesky(np.diag([1.0, -1.0]))


def test_posterior_gradients_with_a_categorical_dimension_match_finite_differences():
    rng = np.random.default_rng(12)
    X = rng.random((18, 3))
    X[:, 1] = (rng.integers(0, 3, 18) + 0.5) / 3  # a choice of three: cell centres
    y = np.cos(3 * X[:, 0]) + (X[:, 1] > 0.5) - X[:, 2] ** 2
    gp = GaussianProcess(seed=0, categorical=[False, True, False]).fit(X, y)
    U = rng.random((4, 3))
    U[:, 1] = X[:4, 1]
    _, _, dmean, dstd = gp.predict(U, return_grad=True)
    np.testing.assert_array_equal(dmean[:, 1], 0.0)
    np.testing.assert_array_equal(dstd[:, 1], 0.0)
    h = 1e-6
    for j in (0, 2):
        e = np.zeros(3)
        e[j] = h
        (mp, sp), (mm, sm) = gp.predict(U + e), gp.predict(U - e)
        np.testing.assert_allclose(dmean[:, j], (mp - mm) / (2 * h), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(dstd[:, j], (sp - sm) / (2 * h), rtol=1e-5, atol=1e-7)
