"""Maximisation of an acquisition function over the unit cube, from many starts at once.

The acquisition optimiser of :class:`fastnn.tune.strategies.Bayes`: a projected
gradient ascent, vectorised over its starting points (one call evaluates every
start, so a dozen starts cost about as much as one), preconditioned by the GP's
length scales (a step of ``s`` moves about ``s`` length scales, whatever the
scale of each dimension), with a step per start that doubles after a success
and shrinks fourfold after a failure. Dimensions held fixed (the categorical
ones, which have no gradient) keep their start's value; bounds are kept by
clipping, and a coordinate at a bound whose gradient points outside stops moving.

Written in NumPy rather than calling ``scipy.optimize`` (the GP's dimensions are
few and the starts many, which a per-start quasi-Newton loop in Python would
serve worse), so that numpy stays the only runtime dependency.
"""

from __future__ import annotations

import numpy as np

__all__ = ["maximize"]


def maximize(fun, starts: np.ndarray, free: np.ndarray, scale: np.ndarray, *,
             max_iter: int = 40, step: float = 0.1, tol: float = 1e-6):
    """Maximise ``fun`` over [0, 1]^d from every row of ``starts``.

    Parameters
    ----------
    fun : callable
        ``fun(X) -> (f, grad)`` for points ``X`` of shape (m, d): values of
        shape (m,) (-inf where undefined) and gradients of shape (m, d).
    starts : array of shape (m, d)
        Starting points in [0, 1]^d.
    free : array of d bools
        The dimensions that move.
    scale : array of shape (d,)
        Positive length scale per dimension (the preconditioner).
    max_iter : int
        Evaluations of ``fun`` after the first.
    step, tol : float
        Initial step and the step below which a start has converged, in units
        of ``scale``.

    Returns
    -------
    X : ndarray of shape (m, d)
        The best point found from each start.
    f : ndarray of shape (m,)
        ``fun`` there.
    """
    X = np.clip(np.array(starts, dtype=np.float64), 0.0, 1.0)
    f, g = fun(X)
    steps = np.full(len(X), float(step))
    scale = np.where(free, scale, 0.0)
    for _ in range(max_iter):
        active = steps > tol
        if not active.any():
            break
        direction = _projected(X, g, scale)
        X_try = np.clip(X + (steps[:, None] * direction), 0.0, 1.0)
        f_try, g_try = fun(X_try)
        better = active & np.isfinite(f_try) & (f_try > f)
        X[better], f[better], g[better] = X_try[better], f_try[better], g_try[better]
        steps = np.where(better, np.minimum(2.0 * steps, 1.0), 0.25 * steps)
        steps[~np.isfinite(f)] = 0.0  # a start where fun is undefined stays put
    return X, f


def _projected(X: np.ndarray, g: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The ascent direction ``ℓ² g / |ℓ g|`` with the coordinates blocked at a bound removed."""
    g = np.where(np.isfinite(g), g, 0.0)
    blocked = ((X <= 0.0) & (g < 0.0)) | ((X >= 1.0) & (g > 0.0))
    g_white = np.where(blocked, 0.0, g * scale)  # the gradient in length-scale units
    norm = np.linalg.norm(g_white, axis=1, keepdims=True)
    return np.where(norm > 0, g_white * scale / np.maximum(norm, 1e-300), 0.0)
