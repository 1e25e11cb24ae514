"""Bayesian optimisation: a Gaussian process (:mod:`fastnn.tune.gp`) and log expected
improvement (maximised by :mod:`fastnn.tune._acquisition`), in batches."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

from ... import _checks
from .._acquisition import maximize
from ..gp import GaussianProcess, _log_ei_and_grad, log_expected_improvement, power_warp
from ..space import Choice, IntLogUniform, IntUniform
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

_RESTARTS = 3  # starting points of each hyperparameter fit
_REFIT_ALWAYS = 20  # below this many trials every batch refits the hyperparameters
_STARTS = 6  # candidates refined by the gradient ascent of log EI
_ASCENT_STEPS = 20
# Refits every batch up to 40 trials (not 20), 30 ascent steps (not 20) and 8 iterations
# from each start of a fit (not 5) took 9-11 ms a trial at 60 trials, against 5.5-7.2 ms
# one at a time (4.7-5.8 in batches of 2). The median regrets over seeds 0-29 at 30 and 60
# trials moved both ways, one at a time Branin 0.0016/2.1e-7 -> 0.0020/1.2e-7, Hartmann-6
# 0.19/2.0e-4 -> 0.17/5.8e-4, the mixed problem 9.3e-4/5.0e-7 -> 1.4e-3/5.9e-7, the digits
# 0.030/0.028 -> 0.030/0.027 (in batches of 2 alike), and every one stayed below
# GPSampler's.
_INTEGER_STEPS = np.array([-0.1, -0.03, -0.01, 0.01, 0.03, 0.1])  # to an integer's neighbours
# The smallest noise variance the fit may choose (standardised units). Near an optimum the
# scores differ by far less than the GP's default floor of 1e-6 (a standard deviation of
# 1e-3): the process then cannot tell the good points apart, and batches of two straddled
# Branin's optimum without closing in (regret at 60 trials, seeds 0-9: 4.5e-5 -> 3.6e-7).
_NOISE_BOUNDS = (1e-10, 1.0)


class Bayes(Strategy):
    """Bayesian optimisation: a Gaussian process and log expected improvement, in batches.

    Parameters
    ----------
    n_initial : int
        Trials ``0 .. n_initial-1`` form a Latin hypercube of the unit cube
        (drawn from the seed only; barrier 0).
    batch_size : int
        Later trials come in batches of this many; batch ``b`` starts at
        ``n_initial + b * batch_size``, which is its barrier. 1 proposes one trial
        at a time (each waits for all earlier trials); 2 keeps two workers busy.
    xi : float
        Exploration margin of the expected improvement, in standardised units
        of the (warped) score; 0 by default: a margin of a hundredth of the
        scores' spread stops the search short of an optimum it has found.
    candidates : int
        Random candidate points per batch (plus a quarter as many local
        perturbations of the five best trials, and those trials themselves).

    Notes
    -----
    A batch is computed once (and cached) from the finished trials before its
    barrier. Their scores (failed and pruned trials taking the worst one) are
    warped by :func:`fastnn.tune.gp.power_warp` (a Yeo-Johnson transform that
    tames a long tail of bad values) and a GP is fitted to their unit points
    (:class:`fastnn.tune.gp.GaussianProcess`: Matérn 5/2, one length scale per
    dimension, a Hamming distance on ``Choice`` dimensions, hyperparameters by
    maximum a posteriori from 3 starts). Below 20 trials every batch refits the
    hyperparameters; later they are refitted once the trials grew by a tenth and
    reused in between (the GP is still conditioned on every trial), which keeps
    the cost per trial near flat. Each point of the batch maximises log EI: the
    best of the candidates, of a gradient ascent (:func:`fastnn.tune._acquisition.maximize`)
    from the six most promising, and of the points one discrete step away from
    the winner (every option of a choice, the neighbouring values of an
    integer); the GP then *believes* its own mean there (kriging believer, added
    in O(n²)) before the next point is chosen. With fewer than two scored trials
    a batch is uniform at random.

    Integer and ``Choice`` dimensions use the index encoding of
    :mod:`fastnn.tune.space`: the unit interval is cut into one cell per value
    (options in the order given), and points are moved to the centres of their
    cells, so equal parameters are equal points for the GP.

    Determinism: every random draw comes from (seed, batch), each fit from
    (seed, refit point) and the trials before that point, and what is cached
    is keyed by those trials, so a batch is a function of the seed and the
    finished trials before its barrier alone: the same on any number of workers
    and after a resume. (Bit-identical results also need the same NumPy and BLAS
    build, since the argmax of floating-point values can change with rounding.)
    """

    name = "bayes"

    def __init__(self, n_initial: int = 10, batch_size: int = 4, xi: float = 0.0,
                 candidates: int = 1000) -> None:
        super().__init__()
        self.n_initial = _checks.integer("n_initial", n_initial, minimum=1)
        self.batch_size = _checks.integer("batch_size", batch_size, minimum=1)
        if isinstance(xi, bool) or not isinstance(xi, numbers.Real) or not 0 <= xi < math.inf:
            raise ValueError(f"xi must be a finite number >= 0; got {xi!r}")
        self.xi = float(xi)
        self.candidates = _checks.integer("candidates", candidates, minimum=10)
        self._batches: dict[int, tuple] = {}
        self._fits: dict[int, tuple] = {}
        self._units: dict[int, tuple] = {}  # trial number -> (params, unit point)
        self._design = None
        self._last_fit = None

    def _on_bind(self) -> None:
        self._batches.clear()
        self._fits.clear()
        self._design = None
        self._last_fit = None
        self._units.clear()
        self._categorical = np.array([isinstance(d, Choice) for _, d in self._dims], dtype=bool)
        self._integer = np.array([isinstance(d, IntUniform | IntLogUniform) for _, d in self._dims],
                                 dtype=bool)

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
                batch = self._suggest(X, y, rng, start, done)
        while len(self._batches) >= 4:  # keep the few most recent batches
            self._batches.pop(min(self._batches))
        self._batches[start] = (key, batch)
        return batch

    def _data(self, done: list) -> tuple[np.ndarray, np.ndarray]:
        """Unit points and warped scores (:func:`~fastnn.tune.gp.power_warp`); failed and
        pruned trials take the worst score."""
        rows, scores = [], []
        for t in done:
            u = self._cached_unit_point(t)
            if u is not None:
                rows.append(u)
                scores.append(_score(t))
        valid = [s for s in scores if s is not None]
        if len(valid) < 2:
            return np.empty((0, len(self._dims))), np.empty(0)
        worst = min(valid)
        y = np.array([worst if s is None else s for s in scores], dtype=np.float64)
        return np.array(rows), power_warp(y)

    def _cached_unit_point(self, trial) -> np.ndarray | None:
        """:meth:`_unit_point` of a trial's params, remembered by trial number (and
        recomputed if that number comes with other params)."""
        key = _typed(trial.params)
        cached = self._units.get(trial.number)
        if key is not None and cached is not None and _same(cached[0], key):
            return cached[1]
        u = self._unit_point(trial.params)
        if key is not None:
            self._units[trial.number] = (key, u)
        return u

    def _suggest(self, X: np.ndarray, y: np.ndarray, rng: np.random.Generator,
                 start: int, done: list) -> np.ndarray:
        gp = self._model(X, y, start, done)
        cands = self._candidates(X, y, rng)
        xi = self.xi * gp.y_std_
        model, chosen = gp, []
        for _ in range(self.batch_size):
            best = float(model.y_train_.max())
            x = self._maximise(model, cands, best, xi)
            chosen.append(x)
            lie = model.predict(x[None, :], return_std=False)  # the kriging believer
            model = model.condition(x[None, :], lie)
        return np.array(chosen)

    # -- the GP ---------------------------------------------------------------------------

    def _new_gp(self, seed: int) -> GaussianProcess:
        return GaussianProcess(ard=True, seed=seed, n_restarts=_RESTARTS,
                               noise_bounds=_NOISE_BOUNDS, categorical=self._categorical)

    def _model(self, X: np.ndarray, y: np.ndarray, start: int, done: list) -> GaussianProcess:
        """The GP of the batch at ``start``: hyperparameters fitted at its refit point
        (see :meth:`_refit_point`) on the trials before that point, conditioned on all
        the trials before ``start``."""
        point = self._refit_point(start)
        hyper = None
        if point < start:
            hyper = self._hyperparameters(point, _before(done, point))
        gp = self._new_gp(int(_rng(self._seed, _KEY_BATCH, point, 1).integers(2**31)))
        gp.fit(X, y, hyperparameters=hyper)
        if point == start:
            self._fits[point] = (_fingerprint(_before(done, point)), gp.hyperparameters_)
        self._last_fit = {
            "batch_start": start, "refit_at": point, "n_points": len(y),
            "length_scale": {n: float(ell) for (n, _), ell in zip(self._dims, gp.length_scale_,
                                                                   strict=True)},
            "variance": gp.variance_, "noise": gp.noise_}
        return gp

    def _refit_point(self, start: int) -> int:
        """The batch start at or before ``start`` whose trials the hyperparameters come from.

        Every batch refits while fewer than ``_REFIT_ALWAYS`` trials are done; later the
        refits come once the trials grew by a tenth (at 300 trials: every 30), which caps
        the O(n³) fits while each batch still conditions on every trial. A function of
        ``start`` alone, so it does not depend on which batches this instance computed.
        """
        point = nxt = self.n_initial
        while nxt <= start:
            point = nxt
            gap = max(1, point // 10) if point >= _REFIT_ALWAYS else 1
            nxt = self._batch_start(point + gap + self.batch_size - 1)
        return point

    def _hyperparameters(self, point: int, trials: list) -> dict | None:
        """The hyperparameters fitted on ``trials`` (those before ``point``), cached."""
        key = _fingerprint(trials)
        cached = self._fits.get(point)
        if cached is not None and cached[0] == key:
            return cached[1]
        X, y = self._data(trials)
        if len(y) < 2:
            return None
        gp = self._new_gp(int(_rng(self._seed, _KEY_BATCH, point, 1).integers(2**31))).fit(X, y)
        while len(self._fits) >= 8:
            self._fits.pop(min(self._fits))
        self._fits[point] = (key, gp.hyperparameters_)
        return gp.hyperparameters_

    # -- the acquisition ------------------------------------------------------------------

    def _candidates(self, X: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        d = X.shape[1]
        uniform = rng.random((self.candidates, d))
        n_local = max(1, self.candidates // 4)
        top = X[np.argsort(-y, kind="stable")[:5]]
        centres = top[rng.integers(len(top), size=n_local)]
        scales = rng.choice(np.array([0.003, 0.01, 0.03, 0.1, 0.2]), size=n_local)[:, None]
        local = np.clip(centres + scales * rng.standard_normal((n_local, d)), 0.0, 1.0)
        return self._snap(np.vstack([top, uniform, local]))

    def _maximise(self, model: GaussianProcess, cands: np.ndarray, best: float,
                  xi: float) -> np.ndarray:
        """The point of largest log EI: the best of the candidates, of a gradient ascent
        from the most promising ones, and of the discrete neighbours of the winner."""
        scores = log_expected_improvement(*model.predict(cands), best, xi)
        order = np.argsort(-scores, kind="stable")[:_STARTS]

        def fun(U):
            mean, std, dmean, dstd = model.predict(U, return_grad=True)
            return _log_ei_and_grad(mean, std, dmean, dstd, best, xi)

        U, _ = maximize(fun, cands[order], ~self._categorical,
                        np.minimum(model.length_scale_, 1.0), max_iter=_ASCENT_STEPS)
        U = np.vstack([cands[order], self._snap(U)])
        U = self._neighbours(U[np.argmax(log_expected_improvement(*model.predict(U), best, xi))])
        return U[int(np.argmax(log_expected_improvement(*model.predict(U), best, xi)))]

    def _neighbours(self, u: np.ndarray) -> np.ndarray:
        """``u`` and the points that differ from it in one discrete coordinate: every
        option of a choice, the nearby values of an integer."""
        rows = [u]
        for j, (_, dist) in enumerate(self._dims):
            if self._categorical[j]:
                values = (np.arange(len(dist.options)) + 0.5) / len(dist.options)
            elif self._integer[j]:
                values = dist._snap_unit(u[j] + _INTEGER_STEPS)
            else:
                continue
            block = np.repeat(u[None, :], len(values), axis=0)
            block[:, j] = values
            rows.append(block)
        return np.unique(np.vstack(rows), axis=0) if len(rows) > 1 else u[None, :]

    def _options(self) -> dict:
        return {"n_initial": self.n_initial, "batch_size": self.batch_size, "xi": self.xi,
                "candidates": self.candidates}


def _typed(params) -> tuple | None:
    """``params`` as a comparable key that tells 1, 1.0 and True apart (the unit
    point does: an option True is not the option 1, a bool is no integer)."""
    try:
        return tuple(sorted((k, type(v).__name__, v) for k, v in params.items()))
    except (AttributeError, TypeError):  # not a dict, or keys that do not sort
        return None


def _same(a: tuple, b: tuple) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # values whose == is not a bool (arrays as options)
        return False


def _one_blas_thread():
    """One BLAS thread while a batch is computed (fastnn's thread policy).

    The GP's matrices are small (tens of trials): a second BLAS thread gains nothing
    and, while trials run on the other cores, makes a batch several times slower. (The
    policy's BLAS controllers are found once; a threadpoolctl.threadpool_limits block
    looks for them every time, about 1 ms a batch.)
    """
    from ... import _threads

    return _threads.limited(1)
