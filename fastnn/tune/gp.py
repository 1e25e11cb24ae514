"""A small Gaussian process in NumPy: Matérn 5/2 kernel, fitted hyperparameters, log-EI.

The kernel is Matérn 5/2 with one length scale per input dimension (ARD) or
one shared length scale::

    r² = Σ_d δ_d(x_d, x'_d) / ℓ_d²
    k(x, x') = σ² (1 + √5 r + 5 r² / 3) exp(-√5 r)

where ``δ_d = (x_d - x'_d)²`` on an ordered dimension and, on a categorical one,
``δ_d = 1`` if the two categories differ and 0 if they are equal (a Hamming
distance: the options of a choice have no order).

The targets are standardised (zero mean, unit variance) before the fit, and the
hyperparameters θ = log(ℓ, σ², σₙ²) (σ² and σₙ² in standardised units) maximise
the log posterior ``log p(y | X, θ) + log p(θ)``, where

    log p(y | X) = -½ yᵀ K⁻¹ y - ½ log |K| - (n / 2) log 2π,   K = k(X, X) + σₙ² I

and the prior ``p(θ)`` (``prior=True``, the default) is an independent normal
on each log hyperparameter (see :data:`PRIOR`): it keeps a fit on a few points
from length scales that the data cannot tell apart. The maximisation uses the
analytic gradient, a limited-memory BFGS written here and a few starting points
(the first fixed, the others drawn from ``seed``). The bounds are kept by
optimising an unconstrained ``z`` with ``log θ = lo + (hi - lo) · sigmoid(z)``.
The Cholesky factorisation adds a growing jitter if K is numerically not
positive definite.

The fitted process keeps the inverse of its Cholesky factor, so that adding a
point (:meth:`GaussianProcess.condition`, for the fantasised points of a
batch) costs O(n²), not a new O(n³) factorisation.

>>> import numpy as np
>>> from fastnn.tune.gp import GaussianProcess, expected_improvement
>>> X = np.linspace(0, 1, 8)[:, None]
>>> gp = GaussianProcess(seed=0).fit(X, np.sin(6 * X[:, 0]))
>>> mean, std = gp.predict(X)
>>> bool(np.allclose(mean, np.sin(6 * X[:, 0]), atol=1e-3))
True
"""

from __future__ import annotations

import math

import numpy as np

from .. import _checks

__all__ = ["PRIOR", "GaussianProcess", "expected_improvement", "log_expected_improvement",
           "matern52", "power_warp", "yeo_johnson"]

_SQRT5 = math.sqrt(5.0)
_LOG_2PI = math.log(2.0 * math.pi)
_JITTERS = (0.0, 1e-10, 1e-8, 1e-6, 1e-4)

#: The prior of the hyperparameters: (mean, standard deviation) of a normal on the
#: natural log of each. The length scale's mean grows with the number of dimensions d
#: (``log(0.15) + 0.5 log d``: in more dimensions, points are further apart and a
#: function that varies on every one of them is less likely); σ² is the signal
#: variance of the standardised targets (about 1), and the noise variance is pulled
#: towards small values (most objectives are deterministic or nearly so) but free to
#: grow when the data are noisy. The length scale's median is short on purpose: a
#: search fits a handful of points, too few to show the short scales of a peak, and a
#: long-scaled fit extrapolates smoothly past it; with log(0.4) (and a longer log(0.65))
#: Bayes climbed Hartmann-6 more slowly (geometric mean regret at 30 trials over seeds
#: 0-59: 0.28 one at a time, 0.40 in batches of 2, against 0.14 and 0.16 with log(0.15)).
#: A categorical dimension keeps the longer ``log(0.4) + 0.5 log d`` ("category_length_scale"):
#: its distance is 0 or 1, so its length scale sets how much two options tell about each
#: other, and a short one made every option a separate search (on the digits, trials to
#: random-60's best over seeds 0-4: 26 with the short scale everywhere, 21 with this).
PRIOR = {"length_scale": (math.log(0.15), 1.0), "category_length_scale": (math.log(0.4), 1.0),
         "variance": (0.0, 1.0), "noise": (math.log(1e-4), 2.5)}


# ---------------------------------------------------------------------------- kernel

def _categorical_mask(categorical, d: int) -> np.ndarray:
    if categorical is None:
        return np.zeros(d, dtype=bool)
    mask = np.asarray(categorical, dtype=bool).ravel()
    if mask.shape != (d,):
        raise ValueError(f"categorical must hold one bool per dimension ({d}); got shape "
                         f"{mask.shape}")
    return mask


def _sq_dists(X1: np.ndarray, X2: np.ndarray, inv_ell2: np.ndarray,
              cat: np.ndarray) -> np.ndarray:
    """r² = Σ_d δ_d / ℓ_d², shape (len(X1), len(X2)) (``cat``: the categorical dims)."""
    if not cat.any():  # no categories: no column selection (a copy each)
        w = np.sqrt(inv_ell2)
        A, B = X1 * w, X2 * w
        d2 = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * (A @ B.T)
        return np.maximum(d2, 0.0)
    cont = ~cat
    w = np.sqrt(inv_ell2[cont])
    A = X1[:, cont] * w
    B = X2[:, cont] * w
    d2 = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * (A @ B.T)
    d2 = np.maximum(d2, 0.0)
    if cat.any():
        differ = X1[:, None, cat] != X2[None, :, cat]
        d2 = d2 + differ @ inv_ell2[cat]
    return d2


def _pair_deltas(X: np.ndarray, cat: np.ndarray) -> np.ndarray:
    """δ_d(x_i, x_j) for every pair, shape (d, n * n)."""
    diffs = X[:, None, :] - X[None, :, :]
    deltas = np.where(cat, (diffs != 0).astype(np.float64), diffs * diffs)
    return np.ascontiguousarray(np.moveaxis(deltas, 2, 0)).reshape(X.shape[1], -1)


def _plus_diagonal(K: np.ndarray, value: float) -> np.ndarray:
    """A copy of the square K with ``value`` added to its diagonal."""
    out = K.copy()
    out.flat[::len(K) + 1] += value
    return out


def _matern_from_r2(r2: np.ndarray, variance: float) -> np.ndarray:
    r = np.sqrt(r2)
    return variance * (1.0 + _SQRT5 * r + (5.0 / 3.0) * r2) * np.exp(-_SQRT5 * r)


def matern52(X1, X2, length_scale, variance: float = 1.0, categorical=None) -> np.ndarray:
    """The Matérn 5/2 kernel matrix ``k(X1[i], X2[j])``.

    Parameters
    ----------
    X1, X2 : array of shape (n1, d) and (n2, d)
    length_scale : float or array of shape (d,)
        Positive; one per dimension (ARD) or one shared.
    variance : float
        The signal variance σ² (``k(x, x)``).
    categorical : array of d bools, optional
        The dimensions whose values are categories (Hamming distance).

    Returns
    -------
    ndarray of shape (n1, n2)
    """
    X1 = np.atleast_2d(np.asarray(X1, dtype=np.float64))
    X2 = np.atleast_2d(np.asarray(X2, dtype=np.float64))
    if X1.shape[1] != X2.shape[1]:
        raise ValueError(f"X1 and X2 must have the same number of columns; got {X1.shape[1]} "
                         f"and {X2.shape[1]}")
    ell = np.broadcast_to(np.asarray(length_scale, dtype=np.float64), (X1.shape[1],))
    if np.any(ell <= 0):
        raise ValueError(f"length_scale must be > 0; got {length_scale!r}")
    cat = _categorical_mask(categorical, X1.shape[1])
    return _matern_from_r2(_sq_dists(X1, X2, 1.0 / ell ** 2, cat), float(variance))


def _cholesky(K: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of K, adding a growing jitter to the diagonal if needed."""
    try:
        return np.linalg.cholesky(K)  # no jitter: the common case, without a copy of K
    except np.linalg.LinAlgError:
        pass
    scale = float(np.trace(K)) / len(K) or 1.0
    for jitter in _JITTERS[1:]:
        try:
            return np.linalg.cholesky(_plus_diagonal(K, jitter * scale))
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("kernel matrix is not positive definite even with jitter "
                                f"{_JITTERS[-1]:g}")


# ---------------------------------------------------------------------------- expected improvement

_erfc = np.frompyfunc(math.erfc, 1, 1)
_SQRT_HALF_PI = math.sqrt(0.5 * math.pi)
_TAIL = 20.0  # beyond z = -20, exp(z²/2) erfc(..) is replaced by its asymptotic series
# A posterior standard deviation below this is taken as 0 by log EI (EI = max(gain, 0)):
# at a trial the GP interpolates (noise 1e-10) σ can round to 0, and a gain of one
# rounding error over it made z overflow.
_STD_TINY = 1e-100


def _norm_cdf(z: np.ndarray) -> np.ndarray:
    # math.erfc keeps full relative precision far in the tail, which a polynomial fit does not.
    # (asarray: for a 0-d z, frompyfunc returns a Python float, not an array)
    return 0.5 * np.asarray(_erfc(-z / math.sqrt(2.0)), dtype=np.float64)


def expected_improvement(mean, std, best: float, xi: float = 0.01) -> np.ndarray:
    """Expected improvement over ``best`` for a maximisation.

    ``EI = (μ - best - ξ) Φ(z) + σ φ(z)`` with ``z = (μ - best - ξ) / σ``, and
    ``max(μ - best - ξ, 0)`` where ``σ = 0``.

    Parameters
    ----------
    mean, std : array
        Posterior mean and standard deviation at the candidate points.
    best : float
        The incumbent (largest observed) value.
    xi : float
        Exploration margin, in the units of ``mean``.
    """
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    gain = mean - float(best) - float(xi)
    safe = np.where(std > 0, std, 1.0)
    z = gain / safe
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    ei = gain * _norm_cdf(z) + safe * pdf
    ei = np.where(std > 0, ei, np.maximum(gain, 0.0))
    return np.maximum(ei, 0.0)


def _log_h(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``log h(z)`` and ``d log h / dz`` for ``h(z) = z Φ(z) + φ(z)`` (EI at unit σ).

    For z >= -1 straight from the definition. Below, with x = -z > 1 and the Mills
    ratio R(x) = Φ(-x) / φ(x), ``h = φ(x) (1 - x R(x))`` and ``dh/dz = Φ(z) = φ(x) R(x)``:
    R comes from ``math.erfc`` scaled by exp(x²/2) (no underflow up to x = 20, and
    1 - xR loses only log10(x²) digits), beyond x = 20 from its asymptotic series,
    so log h stays finite and accurate where h itself underflows (z < -38).
    """
    z = np.asarray(z, dtype=np.float64)
    if z.min(initial=0.0) >= -1.0:  # all near (the common case of an ascent): no masks
        cdf = _norm_cdf(z)
        h = z * cdf + np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
        return np.log(h), cdf / h
    log_h = np.empty_like(z)
    dlog = np.empty_like(z)
    near = z >= -1.0
    if near.any():
        zn = z[near]
        cdf = _norm_cdf(zn)
        h = zn * cdf + np.exp(-0.5 * zn * zn) / math.sqrt(2.0 * math.pi)
        log_h[near] = np.log(h)
        dlog[near] = cdf / h
    mid = (z < -1.0) & (z >= -_TAIL)
    if mid.any():
        x = -z[mid]
        R = _SQRT_HALF_PI * _erfc(x / math.sqrt(2.0)).astype(np.float64) * np.exp(0.5 * x * x)
        w = 1.0 - x * R
        log_h[mid] = -0.5 * x * x - 0.5 * _LOG_2PI + np.log(w)
        dlog[mid] = R / w
    far = z < -_TAIL
    if far.any():
        t = 1.0 / z[far] ** 2
        # xR = Σ_k (-t)^k (2k-1)!!, so 1 - xR = t Σ_k (-t)^k (2k+1)!! (10 terms: ~1e-16)
        w_over_t, term = np.zeros_like(t), np.ones_like(t)
        for k in range(10):
            w_over_t += term
            term = term * (-t) * (2 * k + 3)
        x_r = 1.0 - t * w_over_t
        log_h[far] = -0.5 / t - 0.5 * _LOG_2PI + np.log(t * w_over_t)
        dlog[far] = x_r / (-z[far]) / (t * w_over_t)
    return log_h, dlog


def log_expected_improvement(mean, std, best: float, xi: float = 0.0) -> np.ndarray:
    """The natural log of :func:`expected_improvement`, finite where EI underflows.

    ``log EI = log σ + log h(z)``, ``h(z) = z Φ(z) + φ(z)``, ``z = (μ - best - ξ) / σ``;
    where ``σ = 0`` (below 1e-100) it is ``log max(μ - best - ξ, 0)`` (-inf if there is
    no gain).
    Far below the incumbent (z = -40, EI ≈ 1e-350) plain EI is 0 and useless to an
    optimiser, while log EI still ranks the points and has a gradient.

    Parameters
    ----------
    mean, std : array
        Posterior mean and standard deviation at the candidate points.
    best : float
        The incumbent (largest observed) value.
    xi : float
        Exploration margin, in the units of ``mean``.
    """
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    gain = mean - float(best) - float(xi)
    pos = std >= _STD_TINY
    safe = np.where(pos, std, 1.0)
    log_h, _ = _log_h(gain / safe)
    with np.errstate(divide="ignore"):
        return np.where(pos, np.log(safe) + log_h, np.log(np.maximum(gain, 0.0)))


def _log_ei_and_grad(mean, std, dmean, dstd, best: float, xi: float):
    """log EI and its gradient from the posterior's gradients; where σ is none to speak
    of (below ``_STD_TINY``, as at a trial the GP interpolates) ``log max(gain, 0)``."""
    gain = mean - best - xi
    flat = std < _STD_TINY
    safe = np.where(flat, 1.0, std)
    z = gain / safe
    log_h, dlog = _log_h(z)
    # d log EI = dσ/σ + (d log h/dz)(dμ - z dσ)/σ
    grad = (dstd + dlog[:, None] * (dmean - z[:, None] * dstd)) / safe[:, None]
    value = np.log(safe) + log_h
    if flat.any():
        up = flat & (gain > 0)
        with np.errstate(divide="ignore"):
            value = np.where(flat, np.log(np.maximum(gain, 0.0)), value)
        grad = np.where(up[:, None], dmean / np.where(up, gain, 1.0)[:, None],
                        np.where(flat[:, None], 0.0, grad))
    return value, grad


# ---------------------------------------------------------------------------- output warping

# λ >= 1 only: a convex warp, which compresses a tail of bad values (Branin's rim, a
# diverging learning rate) but never a tail of good ones. On Hartmann-6, whose few good
# values form the long tail, the concave warps (λ < 1) flattened the peak the search
# climbs (median regret at 30 trials, seeds 0-9: 0.25 -> 0.16).
_LAMBDAS = np.linspace(1.0, 3.0, 21)


def yeo_johnson(x, lam: float) -> np.ndarray:
    """The Yeo-Johnson power transform of ``x`` (increasing; the identity at λ = 1).

    ``((x + 1)^λ - 1) / λ`` for x >= 0 (``log1p(x)`` at λ = 0) and
    ``-((1 - x)^(2-λ) - 1) / (2 - λ)`` for x < 0 (``-log1p(-x)`` at λ = 2).
    """
    x = np.asarray(x, dtype=np.float64)
    pos = x >= 0
    out = np.empty_like(x)
    xp, xn = x[pos], x[~pos]
    out[pos] = np.log1p(xp) if abs(lam) < 1e-12 else np.expm1(lam * np.log1p(xp)) / lam
    out[~pos] = (-np.log1p(-xn) if abs(lam - 2.0) < 1e-12
                 else -np.expm1((2.0 - lam) * np.log1p(-xn)) / (2.0 - lam))
    return out


def power_warp(y) -> np.ndarray:
    """``y`` standardised, then Yeo-Johnson transformed with the λ (on a grid of
    [1, 3]: convex warps only) that makes the values most normal (the profile likelihood
    ``-n/2 log var(t) + (λ - 1) Σ sign(x) log(1 + |x|)``), then standardised again.

    Increasing in ``y``, so the best trial stays the best. Objectives often have a
    long tail of bad values (a diverging learning rate, Branin's rim): without the
    warp they set the GP's scale and the region of good values looks flat. A long
    tail of *good* values is left as it is (λ = 1, the identity): it is the region
    the search must resolve.
    """
    y = np.asarray(y, dtype=np.float64)
    sd = float(y.std())
    if len(y) < 3 or not sd > 0:
        return y.copy()
    x = (y - y.mean()) / sd
    log_jac = float((np.sign(x) * np.log1p(np.abs(x))).sum())
    T = _yeo_johnson_grid(x, _LAMBDAS)  # every λ of the grid at once: one row each
    var = T.var(axis=1)
    ll = np.full(len(_LAMBDAS), -np.inf)
    ok = var > 0
    ll[ok] = -0.5 * len(x) * np.log(var[ok]) + (_LAMBDAS[ok] - 1.0) * log_jac
    if not np.isfinite(ll).any():
        return (x - x.mean()) / x.std()
    best_t = T[int(np.argmax(ll))]  # the first of equals, the smallest λ
    return (best_t - best_t.mean()) / best_t.std()


def _yeo_johnson_grid(x: np.ndarray, lams: np.ndarray) -> np.ndarray:
    """:func:`yeo_johnson` of ``x`` at each λ in ``lams`` (all >= 1 > 0), shape
    (len(lams), len(x)), the same arithmetic as one λ at a time."""
    pos = x >= 0
    out = np.empty((len(lams), len(x)))
    lp = np.log1p(x[pos])
    out[:, pos] = np.expm1(lams[:, None] * lp) / lams[:, None]
    ln = np.log1p(-x[~pos])
    c = 2.0 - lams
    two = np.abs(c) < 1e-12
    safe = np.where(two, 1.0, c)[:, None]
    out[:, ~pos] = np.where(two[:, None], -ln, -np.expm1(safe * ln) / safe)
    return out


# ---------------------------------------------------------------------------- L-BFGS

def _lbfgs(fun, z0: np.ndarray, max_iter: int = 50, memory: int = 8, gtol: float = 1e-3,
           ftol: float = 1e-6) -> tuple[np.ndarray, float]:
    """Minimise ``fun(z) -> (f, grad)`` with L-BFGS and a backtracking Armijo line search.

    ``fun`` may return ``f = inf`` where it is undefined; the line search backs off.
    """
    z = np.array(z0, dtype=np.float64)
    f, g = fun(z)
    if not np.isfinite(f):
        return z, f
    s_hist: list[np.ndarray] = []
    y_hist: list[np.ndarray] = []
    for _ in range(max_iter):
        if np.max(np.abs(g)) < gtol:
            break
        direction = -_two_loop(g, s_hist, y_hist)
        slope = float(direction @ g)
        if slope >= 0:  # not a descent direction: restart from steepest descent
            s_hist.clear()
            y_hist.clear()
            direction, slope = -g, -float(g @ g)
        step = 1.0 if s_hist else min(1.0, 1.0 / max(np.max(np.abs(g)), 1e-12))
        for _ in range(30):
            z_new = z + step * direction
            f_new, g_new = fun(z_new)
            if np.isfinite(f_new) and f_new <= f + 1e-4 * step * slope:
                break
            step *= 0.5
        else:
            break
        s, y = z_new - z, g_new - g
        if float(s @ y) > 1e-10:
            s_hist.append(s)
            y_hist.append(y)
            if len(s_hist) > memory:
                s_hist.pop(0)
                y_hist.pop(0)
        converged = abs(f - f_new) <= ftol * max(1.0, abs(f))
        z, f, g = z_new, f_new, g_new
        if converged:
            break
    return z, f


def _two_loop(g: np.ndarray, s_hist: list, y_hist: list) -> np.ndarray:
    """The L-BFGS product H·g of the inverse-Hessian estimate with g."""
    q = g.copy()
    alphas = []
    for s, y in zip(reversed(s_hist), reversed(y_hist), strict=True):
        a = float(s @ q) / float(y @ s)
        alphas.append(a)
        q -= a * y
    if s_hist:
        s, y = s_hist[-1], y_hist[-1]
        q *= float(s @ y) / float(y @ y)
    for (s, y), a in zip(zip(s_hist, y_hist, strict=True), reversed(alphas), strict=True):
        b = float(y @ q) / float(y @ s)
        q += (a - b) * s
    return q


# ---------------------------------------------------------------------------- the process

def _check_positive_pair(name: str, bounds) -> tuple[float, float]:
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair (low, high); got {bounds!r}") from None
    if not (0 < lo < hi and math.isfinite(hi)):
        raise ValueError(f"{name} must satisfy 0 < low < high < inf; got {bounds!r}")
    return lo, hi


class GaussianProcess:
    """Gaussian-process regression with a Matérn 5/2 kernel and fitted hyperparameters.

    Parameters
    ----------
    ard : bool
        One length scale per input dimension (True) or one shared.
    noise : float or None
        The noise variance in standardised-target units; None fits it.
    n_restarts : int
        Starting points of the fit (the first is fixed: ℓ at the prior's
        median, σ² = 1, σₙ² = 1e-3; the others are drawn with ``seed``).
    seed : int
        Seed of the restart draws; the fit is a deterministic function of
        (X, y, seed).
    length_scale_bounds, variance_bounds, noise_bounds : (float, float)
        Box for ℓ, σ² and σₙ² (σ² and σₙ² in standardised units).
    prior : bool
        Maximise the log posterior with the normal priors of :data:`PRIOR`
        (True) or the log marginal likelihood alone (False).
    categorical : array of bools, optional
        The input dimensions that are categories (see the module docstring).

    Attributes
    ----------
    length_scale_ : ndarray of shape (d,)
    variance_, noise_ : float
        Fitted signal and noise variance (standardised units).
    log_marginal_likelihood_ : float
        At the fitted hyperparameters, of the standardised targets.
    """

    def __init__(self, *, ard: bool = True, noise: float | None = None, n_restarts: int = 3,
                 seed: int = 0, length_scale_bounds=(1e-2, 20.0), variance_bounds=(0.05, 20.0),
                 noise_bounds=(1e-6, 1.0), prior: bool = True, categorical=None) -> None:
        self.ard = bool(ard)
        if noise is not None and not (math.isfinite(float(noise)) and float(noise) > 0):
            raise ValueError(f"noise must be None or a float > 0; got {noise!r}")
        self.noise = None if noise is None else float(noise)
        self.n_restarts = _checks.integer("n_restarts", n_restarts, minimum=1)
        self.seed = seed
        self.length_scale_bounds = _check_positive_pair("length_scale_bounds",
                                                        length_scale_bounds)
        self.variance_bounds = _check_positive_pair("variance_bounds", variance_bounds)
        self.noise_bounds = _check_positive_pair("noise_bounds", noise_bounds)
        self.prior = _checks.boolean("prior", prior)
        self.categorical = None if categorical is None else np.asarray(categorical, dtype=bool)

    # -- fitting ---------------------------------------------------------------------------

    def fit(self, X, y, hyperparameters: dict | None = None) -> GaussianProcess:
        """Standardise ``y``, fit the hyperparameters on (X, y) and condition on the data.

        Parameters
        ----------
        X : array of shape (n, d)
        y : array of shape (n,)
        hyperparameters : dict, optional
            ``{"length_scale", "variance", "noise"}`` (as :attr:`hyperparameters_`
            returns them) to condition on the data with, instead of fitting them.
        """
        X, y = self._check_data(X, y)
        self._cat = _categorical_mask(self.categorical, X.shape[1])
        self.y_mean_ = float(y.mean())
        std = float(y.std())
        self.y_std_ = std if std > 1e-12 * max(1.0, abs(self.y_mean_)) else 1.0
        ys = (y - self.y_mean_) / self.y_std_
        if hyperparameters is not None:
            self._set(hyperparameters, X.shape[1])
            self._condition(X, ys)
            self.log_marginal_likelihood_ = self.log_marginal_likelihood()
            return self
        n_ell = X.shape[1] if self.ard else 1
        D = _pair_deltas(X, self._cat)
        lo, hi = self._log_bounds(n_ell)
        prior = self._prior(n_ell, X.shape[1])

        def objective(z):
            return self._objective(z, lo, hi, D, ys, prior)

        # A few iterations from every start, then the most promising one to convergence.
        best_z, best_f = None, np.inf
        for theta0 in self._starts(n_ell, prior):
            z, f = _lbfgs(objective, _to_z(theta0, lo, hi), max_iter=5)
            if f < best_f:
                best_z, best_f = z, f
        if best_z is None:
            raise np.linalg.LinAlgError("the marginal likelihood could not be evaluated at any "
                                        "starting point")
        best_z, _ = _lbfgs(objective, best_z)
        theta = _from_z(best_z, lo, hi)
        self._unpack(theta, n_ell, X.shape[1])
        self.log_marginal_likelihood_ = float(self._lml_and_grad(theta, D, ys)[0])
        self._condition(X, ys)
        return self

    def _check_data(self, X, y) -> tuple[np.ndarray, np.ndarray]:
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).ravel()
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (n_points, n_dims); got shape {X.shape}")
        if len(X) != len(y) or len(y) < 1:
            raise ValueError(f"X and y must have the same non-zero length; got {len(X)} and "
                             f"{len(y)}")
        if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
            raise ValueError("X and y must be finite")
        return X, y

    def _log_bounds(self, n_ell: int) -> tuple[np.ndarray, np.ndarray]:
        pairs = [self.length_scale_bounds] * n_ell + [self.variance_bounds]
        if self.noise is None:
            pairs.append(self.noise_bounds)
        logs = np.log(np.array(pairs, dtype=np.float64))
        return logs[:, 0], logs[:, 1]

    def _prior(self, n_ell: int, d: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(mean, sd) of the normal prior on each log hyperparameter, or None."""
        if not self.prior:
            return None
        rows = [PRIOR["length_scale"]] * n_ell
        if n_ell == d:  # ARD: the categorical dimensions have their own prior
            rows = [PRIOR["category_length_scale"] if c else r for c, r in zip(self._cat, rows,
                                                                               strict=True)]
        rows = [(mean + 0.5 * math.log(d), sd) for mean, sd in rows] + [PRIOR["variance"]]
        if self.noise is None:
            rows.append(PRIOR["noise"])
        arr = np.array(rows, dtype=np.float64)
        return arr[:, 0], arr[:, 1]

    def _starts(self, n_ell: int, prior) -> list[np.ndarray]:
        """Starting points in log space: one fixed, the others drawn from the seed."""
        rng = np.random.default_rng(self.seed)
        ell0 = prior[0][0] if prior is not None else math.log(0.3)
        fixed_noise = [] if self.noise is not None else [math.log(1e-3)]
        starts = [np.array([ell0] * n_ell + [0.0] + fixed_noise)]
        for _ in range(self.n_restarts - 1):
            ell = rng.uniform(math.log(0.05), math.log(2.0), n_ell)
            noise = [] if self.noise is not None else [rng.uniform(math.log(1e-5),
                                                                   math.log(1e-1))]
            starts.append(np.concatenate([ell, [rng.uniform(-1.0, 1.0)], noise]))
        return starts

    def _objective(self, z, lo, hi, D, ys, prior) -> tuple[float, np.ndarray]:
        """Negative log posterior (or likelihood) and its gradient with respect to z."""
        theta = _from_z(z, lo, hi)
        lml, grad = self._lml_and_grad(theta, D, ys)
        if not np.isfinite(lml):
            return np.inf, np.zeros_like(z)
        if prior is not None:
            mean, sd = prior
            lml = lml - 0.5 * float((((theta - mean) / sd) ** 2).sum())
            grad = grad - (theta - mean) / sd ** 2
        s = _sigmoid(z)
        return -lml, -grad * (hi - lo) * s * (1.0 - s)

    def _lml_and_grad(self, theta: np.ndarray, D: np.ndarray, ys: np.ndarray):
        """log p(ys | X) and its gradient with respect to the log hyperparameters."""
        n_ell = len(theta) - (1 if self.noise is not None else 2)
        inv_ell2 = np.exp(-2.0 * theta[:n_ell])
        if n_ell != len(D):
            inv_ell2 = np.full(len(D), inv_ell2[0])
        variance = math.exp(theta[n_ell])
        noise = self.noise if self.noise is not None else math.exp(theta[n_ell + 1])
        n = len(ys)
        r2 = (inv_ell2 @ D).reshape(n, n)  # D: (d, n*n) squared differences per dimension
        r = np.sqrt(r2)
        e = np.exp(-_SQRT5 * r)
        K0 = variance * (1.0 + _SQRT5 * r + (5.0 / 3.0) * r2) * e
        try:
            L = _cholesky(_plus_diagonal(K0, noise))
        except np.linalg.LinAlgError:
            return -np.inf, None
        L_inv = np.linalg.inv(L)
        K_inv = L_inv.T @ L_inv
        alpha = K_inv @ ys
        lml = -0.5 * float(ys @ alpha) - float(np.log(np.diag(L)).sum()) - 0.5 * n * _LOG_2PI
        W = np.outer(alpha, alpha) - K_inv
        # dK/dlog ℓ_d = σ² (5/3) (1 + √5 r) exp(-√5 r) · δ_d / ℓ_d²
        WG = W * (variance * (5.0 / 3.0) * (1.0 + _SQRT5 * r) * e)
        g_ell = 0.5 * (D @ WG.ravel()) * inv_ell2
        if not self.ard:
            g_ell = np.array([g_ell.sum()])
        grads = [g_ell, [0.5 * float(np.sum(W * K0))]]
        if self.noise is None:
            grads.append([0.5 * noise * float(np.trace(W))])
        return lml, np.concatenate(grads)

    def _unpack(self, theta: np.ndarray, n_ell: int, d: int) -> None:
        self.length_scale_ = np.broadcast_to(np.exp(theta[:n_ell]), (d,)).copy()
        self.variance_ = float(math.exp(theta[n_ell]))
        self.noise_ = self.noise if self.noise is not None else float(math.exp(theta[n_ell + 1]))

    def _set(self, hyperparameters: dict, d: int) -> None:
        try:
            ell = np.broadcast_to(np.asarray(hyperparameters["length_scale"], dtype=np.float64),
                                  (d,)).copy()
            variance = float(hyperparameters["variance"])
            noise = float(hyperparameters["noise"])
        except (KeyError, TypeError, ValueError):
            raise ValueError("hyperparameters must be a dict with a length_scale (one or "
                             f"{d} values), a variance and a noise; got {hyperparameters!r}"
                             ) from None
        if not (np.all(ell > 0) and variance > 0 and noise > 0):
            raise ValueError(f"hyperparameters must be > 0; got {hyperparameters!r}")
        self.length_scale_, self.variance_, self.noise_ = ell, variance, noise

    @property
    def hyperparameters_(self) -> dict:
        """The fitted ``{"length_scale", "variance", "noise"}`` (for ``fit(...,
        hyperparameters=...)``)."""
        self._check_fitted()
        return {"length_scale": self.length_scale_.copy(), "variance": self.variance_,
                "noise": self.noise_}

    def _condition(self, X: np.ndarray, ys: np.ndarray) -> None:
        """Store the data (standardised targets) and the factors the predictions need."""
        K = _plus_diagonal(self._kernel(X, X), self.noise_)
        self._L_inv = np.linalg.inv(_cholesky(K))
        self._beta = self._L_inv @ ys  # whitened targets: alpha = L⁻ᵀ beta
        self._alpha = self._L_inv.T @ self._beta
        self.X_train_ = X
        self._ys = ys

    def _kernel(self, X1: np.ndarray, X2: np.ndarray) -> np.ndarray:
        return _matern_from_r2(_sq_dists(X1, X2, 1.0 / self.length_scale_ ** 2, self._cat),
                               self.variance_)

    def _append(self, x: np.ndarray, ys_new: float) -> None:
        """Condition on one more point in O(n²): the new last row of L⁻¹ and of beta.

        With K' = [[K, k], [kᵀ, κ]], L' = [[L, 0], [lᵀ, c]] for l = L⁻¹k and
        c = √(κ - lᵀl), so L'⁻¹ = [[L⁻¹, 0], [-lᵀL⁻¹/c, 1/c]].
        """
        k = self._kernel(x[None, :], self.X_train_)[0]
        l_vec = self._L_inv @ k
        c = math.sqrt(max(self.variance_ + self.noise_ - float(l_vec @ l_vec),
                          1e-10 * self.variance_))
        n = len(self._ys)
        L_inv = np.zeros((n + 1, n + 1))
        L_inv[:n, :n] = self._L_inv
        L_inv[n, :n] = -(l_vec @ self._L_inv) / c
        L_inv[n, n] = 1.0 / c
        self._L_inv = L_inv
        self._beta = np.append(self._beta, (ys_new - float(l_vec @ self._beta)) / c)
        self._alpha = L_inv.T @ self._beta
        self.X_train_ = np.vstack([self.X_train_, x])
        self._ys = np.append(self._ys, ys_new)

    # -- predictions -----------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "_alpha"):
            raise RuntimeError("this GaussianProcess is not fitted; call fit(X, y) first")

    def predict(self, X, return_std: bool = True, return_grad: bool = False):
        """Posterior mean (and standard deviation of the latent function) at ``X``.

        In the units of the ``y`` given to ``fit``; the noise variance is not
        added to the standard deviation. With ``return_grad`` also the gradients
        of both with respect to ``X`` (arrays of shape (m, d), zero along the
        categorical dimensions): ``mean, std, dmean, dstd``.
        """
        self._check_fitted()
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        r2 = _sq_dists(X, self.X_train_, 1.0 / self.length_scale_ ** 2, self._cat)
        if return_grad:  # r and exp(-√5 r) serve the gradients too
            r = np.sqrt(r2)
            e = np.exp(-_SQRT5 * r)
            Ks = self.variance_ * (1.0 + _SQRT5 * r + (5.0 / 3.0) * r2) * e
        else:
            Ks = _matern_from_r2(r2, self.variance_)
        mean = Ks @ self._alpha * self.y_std_ + self.y_mean_
        if not (return_std or return_grad):
            return mean
        v = Ks @ self._L_inv.T
        var = np.maximum(self.variance_ - np.einsum("ij,ij->i", v, v), 0.0)
        std = np.sqrt(var)
        if not return_grad:
            return mean, std * self.y_std_
        dmean, dvar = self._grads(X, r, e, v @ self._L_inv)
        dstd = dvar / (2.0 * np.maximum(std, 1e-150))[:, None]
        return mean, std * self.y_std_, dmean * self.y_std_, dstd * self.y_std_

    def _grads(self, X: np.ndarray, r: np.ndarray, e: np.ndarray, w: np.ndarray):
        """d mean/dx and d var/dx (standardised units) from r, exp(-√5 r) and
        w = K⁻¹ k(X_train, x).

        dk/dx_d = -(5/3) σ² (1 + √5 r) exp(-√5 r) (x_d - x'_d) / ℓ_d² on ordered dims, so
        a weighted sum Σ_n c_n dk_n/dx_d is ``s_d (x_d Σ_n c_n - Σ_n c_n x'_nd)`` (two
        products, no (m, n, d) array of differences); mean and variance in one go.
        """
        m = len(X)
        coeff = -(5.0 / 3.0) * self.variance_ * (1.0 + _SQRT5 * r) * e
        C = np.concatenate([coeff * self._alpha, -2.0 * coeff * w])  # (2m, n)
        scale = np.where(self._cat, 0.0, 1.0 / self.length_scale_ ** 2)
        G = (np.concatenate([X, X]) * C.sum(1)[:, None] - C @ self.X_train_) * scale
        return G[:m], G[m:]

    def condition(self, X_new, y_new) -> GaussianProcess:
        """A copy with the same hyperparameters and standardisation, conditioned on the
        training data plus (X_new, y_new), without refitting (for fantasised points).

        Each new point costs O(n²) (an update of the Cholesky factor's inverse)."""
        self._check_fitted()
        X_new, y_new = self._check_data(np.atleast_2d(X_new), y_new)
        other = object.__new__(GaussianProcess)
        other.__dict__.update(self.__dict__)
        for x, value in zip(X_new, (y_new - self.y_mean_) / self.y_std_, strict=True):
            other._append(x, float(value))
        return other

    @property
    def y_train_(self) -> np.ndarray:
        """The training targets (fantasies included) in the original units."""
        self._check_fitted()
        return self._ys * self.y_std_ + self.y_mean_

    def log_marginal_likelihood(self, length_scale=None, variance=None, noise=None) -> float:
        """log p(y | X) of the standardised training targets; fitted values by default."""
        self._check_fitted()
        d = self.X_train_.shape[1]
        ell = self.length_scale_ if length_scale is None else np.broadcast_to(
            np.asarray(length_scale, dtype=np.float64), (d,))
        variance = self.variance_ if variance is None else float(variance)
        noise = self.noise_ if noise is None else float(noise)
        K = matern52(self.X_train_, self.X_train_, ell, variance, self._cat) + noise * np.eye(
            len(self._ys))
        L = _cholesky(K)
        a = np.linalg.solve(L, self._ys)
        return float(-0.5 * a @ a - np.log(np.diag(L)).sum() - 0.5 * len(a) * _LOG_2PI)

    def log_prior(self, length_scale=None, variance=None, noise=None) -> float:
        """log p(θ) (up to a constant) of the prior the fit uses; 0 with ``prior=False``."""
        self._check_fitted()
        d = self.X_train_.shape[1]
        ell = self.length_scale_ if length_scale is None else np.broadcast_to(
            np.asarray(length_scale, dtype=np.float64), (d,))
        if not self.ard:
            ell = ell[:1]
        theta = np.log(np.concatenate([ell, [self.variance_ if variance is None else variance]]
                                      + ([[self.noise_ if noise is None else noise]]
                                         if self.noise is None else [])))
        prior = self._prior(len(ell), d)
        if prior is None:
            return 0.0
        return float(-0.5 * (((theta - prior[0]) / prior[1]) ** 2).sum())

    def __repr__(self) -> str:
        return (f"GaussianProcess(ard={self.ard}, noise={self.noise}, "
                f"n_restarts={self.n_restarts}, seed={self.seed}, prior={self.prior})")


def _to_z(theta: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    p = np.clip((theta - lo) / (hi - lo), 1e-6, 1 - 1e-6)
    return np.log(p / (1.0 - p))


def _from_z(z: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return lo + (hi - lo) * _sigmoid(z)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for large |z|
