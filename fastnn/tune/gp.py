"""A small Gaussian process in NumPy: Matérn 5/2 kernel, fitted hyperparameters, EI.

The kernel is Matérn 5/2 with one length scale per input dimension (ARD) or
one shared length scale::

    r² = Σ_d (x_d - x'_d)² / ℓ_d²
    k(x, x') = σ² (1 + √5 r + 5 r² / 3) exp(-√5 r)

The targets are standardised (zero mean, unit variance) before the fit, and the
hyperparameters (ℓ, the signal variance σ² and the noise variance σₙ², the
last two in standardised units) maximise the log marginal likelihood

    log p(y | X) = -½ yᵀ K⁻¹ y - ½ log |K| - (n / 2) log 2π,   K = k(X, X) + σₙ² I

with its analytic gradient, by a limited-memory BFGS written here, from a few
starting points (the first fixed, the others drawn from ``seed``). The bounds
are kept by optimising an unconstrained ``z`` with
``log θ = lo + (hi - lo) · sigmoid(z)``. The Cholesky factorisation adds a
growing jitter if K is numerically not positive definite.

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

__all__ = ["GaussianProcess", "expected_improvement", "matern52"]

_SQRT5 = math.sqrt(5.0)
_LOG_2PI = math.log(2.0 * math.pi)
_JITTERS = (0.0, 1e-10, 1e-8, 1e-6, 1e-4)


# ---------------------------------------------------------------------------- kernel

def _scaled_sq_dists(X1: np.ndarray, X2: np.ndarray, length_scale: np.ndarray) -> np.ndarray:
    """Σ_d ((x1_d - x2_d) / ℓ_d)², shape (len(X1), len(X2))."""
    A = X1 / length_scale
    B = X2 / length_scale
    d2 = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * (A @ B.T)
    return np.maximum(d2, 0.0)


def _matern_from_r2(r2: np.ndarray, variance: float) -> np.ndarray:
    r = np.sqrt(r2)
    return variance * (1.0 + _SQRT5 * r + (5.0 / 3.0) * r2) * np.exp(-_SQRT5 * r)


def matern52(X1, X2, length_scale, variance: float = 1.0) -> np.ndarray:
    """The Matérn 5/2 kernel matrix ``k(X1[i], X2[j])``.

    Parameters
    ----------
    X1, X2 : array of shape (n1, d) and (n2, d)
    length_scale : float or array of shape (d,)
        Positive; one per dimension (ARD) or one shared.
    variance : float
        The signal variance σ² (``k(x, x)``).

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
    return _matern_from_r2(_scaled_sq_dists(X1, X2, ell), float(variance))


def _cholesky(K: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of K, adding a growing jitter to the diagonal if needed."""
    scale = float(np.mean(np.diag(K))) or 1.0
    for jitter in _JITTERS:
        try:
            return np.linalg.cholesky(K + (jitter * scale) * np.eye(len(K)))
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("kernel matrix is not positive definite even with jitter "
                                f"{_JITTERS[-1]:g}")


# ---------------------------------------------------------------------------- expected improvement

_erfc = np.frompyfunc(math.erfc, 1, 1)


def _norm_cdf(z: np.ndarray) -> np.ndarray:
    # math.erfc keeps full relative precision far in the tail, which a polynomial fit does not.
    return 0.5 * _erfc(-z / math.sqrt(2.0)).astype(np.float64)


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
        Starting points of the likelihood maximisation (the first is fixed:
        ℓ = 0.3, σ² = 1, σₙ² = 1e-2; the others are drawn with ``seed``).
    seed : int
        Seed of the restart draws; the fit is a deterministic function of
        (X, y, seed).
    length_scale_bounds, variance_bounds, noise_bounds : (float, float)
        Box for ℓ, σ² and σₙ² (σ² and σₙ² in standardised units).

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
                 noise_bounds=(1e-6, 1.0)) -> None:
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

    # -- fitting ---------------------------------------------------------------------------

    def fit(self, X, y) -> GaussianProcess:
        """Standardise ``y``, fit the hyperparameters on (X, y) and condition on the data."""
        X, y = self._check_data(X, y)
        self.y_mean_ = float(y.mean())
        std = float(y.std())
        self.y_std_ = std if std > 1e-12 * max(1.0, abs(self.y_mean_)) else 1.0
        ys = (y - self.y_mean_) / self.y_std_
        n_ell = X.shape[1] if self.ard else 1
        diffs = (X[:, None, :] - X[None, :, :]) ** 2  # (n, n, d)
        D = np.ascontiguousarray(np.moveaxis(diffs, 2, 0)).reshape(X.shape[1], -1)  # (d, n*n)
        lo, hi = self._log_bounds(n_ell)
        def objective(z):
            return self._objective(z, lo, hi, D, ys)

        # A few iterations from every start, then the most promising one to convergence.
        best_z, best_f = None, np.inf
        for theta0 in self._starts(n_ell):
            z, f = _lbfgs(objective, _to_z(theta0, lo, hi), max_iter=8)
            if f < best_f:
                best_z, best_f = z, f
        if best_z is None:
            raise np.linalg.LinAlgError("the marginal likelihood could not be evaluated at any "
                                        "starting point")
        best_z, best_f = _lbfgs(objective, best_z)
        self._unpack(_from_z(best_z, lo, hi), n_ell, X.shape[1])
        self.log_marginal_likelihood_ = -float(best_f)
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

    def _starts(self, n_ell: int) -> list[np.ndarray]:
        """Starting points in log space: one fixed, the others drawn from the seed."""
        rng = np.random.default_rng(self.seed)
        fixed_noise = [] if self.noise is not None else [math.log(1e-2)]
        starts = [np.array([math.log(0.3)] * n_ell + [0.0] + fixed_noise)]
        for _ in range(self.n_restarts - 1):
            ell = rng.uniform(math.log(0.05), math.log(2.0), n_ell)
            noise = [] if self.noise is not None else [rng.uniform(math.log(1e-5),
                                                                   math.log(1e-1))]
            starts.append(np.concatenate([ell, [rng.uniform(-1.0, 1.0)], noise]))
        return starts

    def _objective(self, z, lo, hi, D, ys) -> tuple[float, np.ndarray]:
        """Negative log marginal likelihood and its gradient with respect to z."""
        theta = _from_z(z, lo, hi)
        lml, grad = self._lml_and_grad(theta, D, ys)
        if not np.isfinite(lml):
            return np.inf, np.zeros_like(z)
        s = _sigmoid(z)
        return -lml, -grad * (hi - lo) * s * (1.0 - s)

    def _lml_and_grad(self, theta: np.ndarray, D: np.ndarray, ys: np.ndarray):
        """log p(ys | X) and its gradient with respect to the log hyperparameters."""
        n_ell = len(theta) - (1 if self.noise is not None else 2)
        inv_ell2 = np.broadcast_to(np.exp(-2.0 * theta[:n_ell]), (len(D),))
        variance = math.exp(theta[n_ell])
        noise = self.noise if self.noise is not None else math.exp(theta[n_ell + 1])
        n = len(ys)
        r2 = (inv_ell2 @ D).reshape(n, n)  # D: (d, n*n) squared differences per dimension
        r = np.sqrt(r2)
        e = np.exp(-_SQRT5 * r)
        K0 = variance * (1.0 + _SQRT5 * r + (5.0 / 3.0) * r2) * e
        try:
            L = _cholesky(K0 + noise * np.eye(n))
        except np.linalg.LinAlgError:
            return -np.inf, None
        L_inv = np.linalg.inv(L)
        K_inv = L_inv.T @ L_inv
        alpha = K_inv @ ys
        lml = -0.5 * float(ys @ alpha) - float(np.log(np.diag(L)).sum()) - 0.5 * n * _LOG_2PI
        W = np.outer(alpha, alpha) - K_inv
        # dK/dlog ℓ_d = σ² (5/3) (1 + √5 r) exp(-√5 r) · (x_d - x'_d)² / ℓ_d²
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

    def _condition(self, X: np.ndarray, ys: np.ndarray) -> None:
        """Store the data (standardised targets) and the factors the predictions need."""
        K = matern52(X, X, self.length_scale_, self.variance_) + self.noise_ * np.eye(len(X))
        self._L_inv = np.linalg.inv(_cholesky(K))
        self._alpha = self._L_inv.T @ (self._L_inv @ ys)
        self.X_train_ = X
        self._ys = ys

    # -- predictions -----------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "_alpha"):
            raise RuntimeError("this GaussianProcess is not fitted; call fit(X, y) first")

    def predict(self, X, return_std: bool = True):
        """Posterior mean (and standard deviation of the latent function) at ``X``.

        In the units of the ``y`` given to ``fit``; the noise variance is not
        added to the standard deviation.
        """
        self._check_fitted()
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        Ks = matern52(X, self.X_train_, self.length_scale_, self.variance_)
        mean = Ks @ self._alpha * self.y_std_ + self.y_mean_
        if not return_std:
            return mean
        v = self._L_inv @ Ks.T
        var = np.maximum(self.variance_ - np.einsum("ij,ij->j", v, v), 0.0)
        return mean, np.sqrt(var) * self.y_std_

    def condition(self, X_new, y_new) -> GaussianProcess:
        """A copy with the same hyperparameters and standardisation, conditioned on the
        training data plus (X_new, y_new), without refitting (for fantasised points)."""
        self._check_fitted()
        X_new, y_new = self._check_data(np.atleast_2d(X_new), y_new)
        other = object.__new__(GaussianProcess)
        other.__dict__.update(self.__dict__)
        ys_new = (y_new - self.y_mean_) / self.y_std_
        other._condition(np.vstack([self.X_train_, X_new]), np.concatenate([self._ys, ys_new]))
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
        K = matern52(self.X_train_, self.X_train_, ell, variance) + noise * np.eye(len(self._ys))
        L = _cholesky(K)
        a = np.linalg.solve(L, self._ys)
        return float(-0.5 * a @ a - np.log(np.diag(L)).sum() - 0.5 * len(a) * _LOG_2PI)

    def __repr__(self) -> str:
        return (f"GaussianProcess(ard={self.ard}, noise={self.noise}, "
                f"n_restarts={self.n_restarts}, seed={self.seed})")


def _to_z(theta: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    p = np.clip((theta - lo) / (hi - lo), 1e-6, 1 - 1e-6)
    return np.log(p / (1.0 - p))


def _from_z(z: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return lo + (hi - lo) * _sigmoid(z)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for large |z|
