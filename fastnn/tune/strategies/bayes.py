"""Bayesian optimisation: a Gaussian process (:mod:`fastnn.tune.gp`) and expected
improvement, in batches."""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Sequence

import numpy as np

from ... import _checks
from ..gp import GaussianProcess, expected_improvement
from .base import (
    _KEY_BATCH,
    _KEY_LHS,
    Finished,
    Strategy,
    _before,
    _fingerprint,
    _rng,
    _score,
)

__all__ = ["Bayes"]


class Bayes(Strategy):
    """Bayesian optimisation: a Gaussian process and expected improvement, in batches.

    Parameters
    ----------
    n_initial : int
        Trials ``0 .. n_initial-1`` form a Latin hypercube of the unit cube
        (drawn from the seed only; barrier 0).
    batch_size : int
        Later trials come in batches of this many; batch ``b`` starts at
        ``n_initial + b * batch_size``, which is its barrier.
    xi : float
        Exploration margin of the expected improvement, in standardised units
        of the score.
    candidates : int
        Random candidate points per batch (plus a quarter as many local
        perturbations of the best trials).

    Notes
    -----
    A batch is computed once (and cached) from the finished trials before its
    barrier: a GP (:class:`fastnn.tune.gp.GaussianProcess`, Matérn 5/2 with one
    length scale per dimension) is fitted to their unit points and scores,
    failed and pruned trials taking the worst score seen. Each point of the
    batch maximises the expected improvement over the candidates (uniform
    points and Gaussian perturbations of the five best trials, then a local
    refinement around the ten best candidates); the GP then *believes* its own
    mean there (kriging believer) before the next point is chosen. With fewer
    than two scored trials a batch is uniform at random.

    Integer and ``Choice`` dimensions use the index encoding of
    :mod:`fastnn.tune.space`: the unit interval is cut into one cell per value
    (options in the order given), and candidates are moved to the centres of
    their cells, so equal parameters are equal points for the GP.

    Determinism: every random draw comes from (seed, batch), the GP fit from
    restarts seeded the same way, and no state is carried from one batch to
    the next, so a batch is a function of the seed and the finished trials
    before its barrier alone: the same on any number of workers and after a
    resume. (Bit-identical results also need the same NumPy and BLAS build,
    since the argmax of floating-point EI values can change with rounding.)
    """

    name = "bayes"

    def __init__(self, n_initial: int = 10, batch_size: int = 4, xi: float = 0.01,
                 candidates: int = 2000) -> None:
        super().__init__()
        self.n_initial = _checks.integer("n_initial", n_initial, minimum=1)
        self.batch_size = _checks.integer("batch_size", batch_size, minimum=1)
        if isinstance(xi, bool) or not isinstance(xi, numbers.Real) or not 0 <= xi < math.inf:
            raise ValueError(f"xi must be a finite number >= 0; got {xi!r}")
        self.xi = float(xi)
        self.candidates = _checks.integer("candidates", candidates, minimum=10)
        self._batches: dict[int, tuple] = {}
        self._design = None
        self._last_fit = None

    def _on_bind(self) -> None:
        self._batches.clear()
        self._design = None
        self._last_fit = None

    def describe(self, history: Sequence[Finished] | None = None) -> dict:
        """The options and, once a batch was computed here, the GP fitted for the latest
        one: its length scales per parameter (unit-cube units; a long one means the score
        hardly depends on that parameter), signal variance and noise (standardised)."""
        return {"strategy": self.name, **self._options(), "last_fit": self._last_fit}

    def _batch_start(self, number: int) -> int:
        if number < self.n_initial:
            return 0
        return self.n_initial + (number - self.n_initial) // self.batch_size * self.batch_size

    def barrier(self, number: int) -> int:
        self._check_number(number)
        return self._batch_start(number)

    def _propose(self, number: int, history: list) -> dict:
        if number < self.n_initial:
            return self._params(self._initial_design()[number])
        start = self._batch_start(number)
        return self._params(self._batch(start, history)[number - start])

    def _initial_design(self) -> np.ndarray:
        """A Latin hypercube of n_initial points (one per row and column stratum)."""
        if self._design is None:
            rng = _rng(self._seed, _KEY_LHS)
            n, d = self.n_initial, len(self._dims)
            U = np.empty((n, d))
            for j in range(d):
                U[:, j] = (rng.permutation(n) + rng.random(n)) / n
            self._design = self._snap(U)
        return self._design

    def _batch(self, start: int, history: list) -> np.ndarray:
        done = _before(history, start)
        key = _fingerprint(done)
        cached = self._batches.get(start)
        if cached is not None and cached[0] == key:
            return cached[1]
        rng = _rng(self._seed, _KEY_BATCH, start)
        X, y = self._data(done)
        if len(y) < 2 or not self._dims:
            batch = self._snap(rng.random((self.batch_size, len(self._dims))))
        else:
            with _one_blas_thread():
                batch = self._suggest(X, y, rng, start)
        while len(self._batches) >= 4:  # keep the few most recent batches
            self._batches.pop(min(self._batches))
        self._batches[start] = (key, batch)
        return batch

    def _data(self, done: list) -> tuple[np.ndarray, np.ndarray]:
        """Unit points and scores; failed and pruned trials take the worst score."""
        rows, scores = [], []
        for t in done:
            u = self._unit_point(t.params)
            if u is not None:
                rows.append(u)
                scores.append(_score(t))
        valid = [s for s in scores if s is not None]
        if len(valid) < 2:
            return np.empty((0, len(self._dims))), np.empty(0)
        worst = min(valid)
        y = np.array([worst if s is None else s for s in scores], dtype=np.float64)
        return np.array(rows), y

    def _suggest(self, X: np.ndarray, y: np.ndarray, rng: np.random.Generator,
                 start: int) -> np.ndarray:
        gp = GaussianProcess(ard=True, seed=int(rng.integers(2**31)), n_restarts=3).fit(X, y)
        self._last_fit = {
            "batch_start": start, "n_points": len(y),
            "length_scale": {n: float(ell) for (n, _), ell in zip(self._dims, gp.length_scale_,
                                                                   strict=True)},
            "variance": gp.variance_, "noise": gp.noise_}
        cands = self._candidates(X, y, rng)
        xi = self.xi * gp.y_std_
        model, chosen = gp, []
        for _ in range(self.batch_size):
            best = float(model.y_train_.max())
            mean, std = model.predict(cands)
            ei = expected_improvement(mean, std, best, xi)
            x = self._refine(model, cands, ei, best, xi, rng)
            chosen.append(x)
            model = model.condition(x[None, :], model.predict(x[None, :], return_std=False))
        return np.array(chosen)

    def _candidates(self, X: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        d = X.shape[1]
        uniform = rng.random((self.candidates, d))
        n_local = max(1, self.candidates // 4)
        top = X[np.argsort(-y, kind="stable")[:5]]
        centres = top[rng.integers(len(top), size=n_local)]
        scales = rng.choice(np.array([0.01, 0.03, 0.1, 0.2]), size=n_local)[:, None]
        local = np.clip(centres + scales * rng.standard_normal((n_local, d)), 0.0, 1.0)
        return self._snap(np.vstack([uniform, local]))

    def _refine(self, model, cands, ei, best, xi, rng) -> np.ndarray:
        """The best of the candidates and of small perturbations of the ten best."""
        order = np.argsort(-ei, kind="stable")[:10]
        d = cands.shape[1]
        scales = rng.choice(np.array([0.005, 0.02, 0.05]), size=(len(order) * 20, 1))
        near = np.repeat(cands[order], 20, axis=0) + scales * rng.standard_normal(
            (len(order) * 20, d))
        near = self._snap(np.clip(near, 0.0, 1.0))
        mean, std = model.predict(near)
        ei_near = expected_improvement(mean, std, best, xi)
        i, j = int(order[0]), int(np.argmax(ei_near))
        return near[j] if ei_near[j] > ei[i] else cands[i]

    def _options(self) -> dict:
        return {"n_initial": self.n_initial, "batch_size": self.batch_size, "xi": self.xi,
                "candidates": self.candidates}


def _one_blas_thread():
    """One BLAS thread while a batch is computed, if threadpoolctl is installed.

    The GP's matrices are small (tens of trials): a second BLAS thread gains nothing
    and, while trials run on the other cores, makes a batch several times slower.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")
