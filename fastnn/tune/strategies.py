"""Search strategies: grid, random, coarse-to-fine, Bayesian and staged search.

A strategy proposes the parameters of trial ``number`` (0, 1, 2, ...). Every
strategy works in the unit cube of the distributions' own scales (see
:mod:`fastnn.tune.space`) and its proposals depend only on

* the study seed given to :meth:`Strategy.bind`,
* the trial ``number``,
* the finished trials numbered below :meth:`Strategy.barrier` ``(number)``,

so a study proposes the same trials whatever the number of workers, the
order in which trials finish, or a crash and resume in between. The runner
calls ``propose`` in increasing ``number`` order, once every trial below the
barrier has finished; ``propose`` may be called again for the same number
with the same history and returns the same parameters.

==================  ========================================================  =====================
strategy            proposal of trial ``number``                              barrier
==================  ========================================================  =====================
``Grid``            the ``number``-th point of the product of per-dim grids   0
``Random``          uniform in the unit cube                                  0
``CoarseToFine``    uniform in the box of its round (whole cube in round 0)   start of its round
``Bayes``           Latin hypercube, then GP + expected improvement batches   start of its batch
``Staged``          one strategy per stage, earlier stages fixed at the best  start of its stage
==================  ========================================================  =====================

>>> from fastnn.tune.space import LogUniform, OneMinusLogUniform
>>> from fastnn.tune.strategies import get_strategy
>>> space = {"lr": LogUniform(1e-4, 1.0), "beta": OneMinusLogUniform(0.9, 0.999), "epochs": 5}
>>> grid = get_strategy("grid", points={"lr": 3, "beta": 2})
>>> grid.bind(space, seed=0)
>>> grid.n_trials()
6
>>> [grid.propose(i, [])["lr"] for i in range(0, 6, 2)]
[0.0001, 0.01, 1.0]
"""

from __future__ import annotations

import abc
import contextlib
import copy
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ._registry import build_by_name
from .gp import GaussianProcess, expected_improvement
from .space import Distribution, check_space

__all__ = [
    "Bayes",
    "CoarseToFine",
    "Finished",
    "Grid",
    "Random",
    "Staged",
    "Strategy",
    "get_strategy",
    "strategy_from_config",
]

# Mixed into every spawn key, so the strategies' draws never coincide with the trial
# seeds, which the runner takes from SeedSequence(seed, spawn_key=(number,)).
_SALT = 0x74756E65  # "tune"
_KEY_RANDOM, _KEY_LHS, _KEY_BATCH, _KEY_C2F, _KEY_STAGE = 1, 2, 3, 4, 5


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SALT, *key)))


@dataclass(frozen=True)
class Finished:
    """What a strategy sees of a finished trial.

    Attributes
    ----------
    number : int
    params : dict
    score : float or None
        The value oriented so that larger is better; None for a failed or
        pruned trial.
    """

    number: int
    params: dict
    score: float | None


# ---------------------------------------------------------------------------- argument checks

def _int_at_least(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}; got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _score(trial) -> float | None:
    """A finished trial's score, or None if it is missing or not finite."""
    s = trial.score
    if s is None:
        return None
    s = float(s)
    return s if math.isfinite(s) else None


def _before(history, barrier: int) -> list:
    """The finished trials numbered below ``barrier``, by number (one per number)."""
    by_number = {}
    for t in history:
        if 0 <= t.number < barrier:
            by_number[int(t.number)] = t
    return [by_number[n] for n in sorted(by_number)]


def _fingerprint(trials: list) -> tuple:
    return tuple((t.number, _score(t)) for t in trials)


def _best(trials: list):
    """The trial with the highest score (the lowest number among ties), or None."""
    scored = [t for t in trials if _score(t) is not None]
    if not scored:
        return None
    return min(scored, key=lambda t: (-_score(t), t.number))


# ---------------------------------------------------------------------------- base class

class Strategy(abc.ABC):
    """Base class of the search strategies (see the module docstring for the contract)."""

    name = "strategy"

    def __init__(self) -> None:
        self._space: dict | None = None
        self._budget: int | None = None

    # -- set up ----------------------------------------------------------------------------

    def bind(self, space: Mapping, seed: int) -> None:
        """Validate ``space`` and remember it with the study ``seed`` (once, before proposing)."""
        space = check_space(space)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0; got {seed!r}")
        self._space = space
        self._seed = int(seed)
        self._dims = [(n, d) for n, d in space.items() if isinstance(d, Distribution)]
        self._on_bind()

    def _on_bind(self) -> None:  # noqa: B027 (an optional hook, not abstract)
        """Hook for subclasses: checks and precomputation that need the space."""

    def set_budget(self, n_trials: int | None) -> None:
        """The number of trials the runner will ask for (None: unbounded). Called before
        any proposal; strategies that size themselves by it (coarse-to-fine, staged) use it."""
        self._budget = None if n_trials is None else _int_at_least("n_trials", n_trials, 1)

    def n_trials(self) -> int | None:
        """The strategy's natural number of trials, or None if unbounded."""
        return None

    # -- proposals -------------------------------------------------------------------------

    def barrier(self, number: int) -> int:
        """Trial ``number`` may use (and waits for) all trials numbered below this."""
        self._check_number(number)
        return 0

    def propose(self, number: int, history: Sequence[Finished]) -> dict:
        """The full params dict (constants included) of trial ``number``.

        ``history`` holds finished trials (any of them; those at or above
        ``barrier(number)`` are ignored).
        """
        self._check_number(number)
        return self._propose(int(number), list(history))

    @abc.abstractmethod
    def _propose(self, number: int, history: list) -> dict:
        """Trial ``number``'s params from the finished trials in ``history``."""

    def describe(self, history: Sequence[Finished] | None = None) -> dict:
        """JSON-able state for reports."""
        return {"strategy": self.name}

    def to_config(self) -> dict:
        """A JSON-able dict that :func:`strategy_from_config` turns into the same strategy."""
        return {"name": self.name, **self._options()}

    def _options(self) -> dict:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._options().items())
        return f"{type(self).__name__}({args})"

    # -- helpers ---------------------------------------------------------------------------

    def _check_number(self, number) -> None:
        if self._space is None:
            raise RuntimeError(f"{type(self).__name__} is not bound to a space; call "
                               "bind(space, seed) first")
        _int_at_least("number", number, 0)

    @property
    def space(self) -> dict:
        return dict(self._space) if self._space is not None else {}

    def _params(self, u) -> dict:
        """The params dict at unit point ``u`` (one coordinate per distribution)."""
        params, i = {}, 0
        for name, value in self._space.items():
            if isinstance(value, Distribution):
                params[name] = value.from_unit(float(u[i]))
                i += 1
            else:
                params[name] = copy.deepcopy(value)
        return params

    def _unit_point(self, params) -> np.ndarray | None:
        """The unit point of a trial's params, or None if they do not fit the space."""
        try:
            return np.array([d.to_unit(params[n]) for n, d in self._dims], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            return None

    def _snap(self, U: np.ndarray) -> np.ndarray:
        """Unit points moved to the centres of their integer/option cells."""
        U = np.array(U, dtype=np.float64)
        for j, (_, dist) in enumerate(self._dims):
            U[:, j] = dist._snap_unit(U[:, j])
        return U


# ---------------------------------------------------------------------------- grid and random

class Grid(Strategy):
    """Every point of the product of per-dimension grids, in a fixed order.

    Parameters
    ----------
    points : int or dict
        Points per dimension, evenly spaced on each distribution's own scale
        (``Distribution.grid``; a ``Choice`` gives all its options). A dict maps
        names to counts; names it omits get 5.

    Trial ``i`` is the ``i``-th point of ``itertools.product`` over the
    dimensions in the space's order (the last dimension varies fastest);
    ``n_trials()`` is the number of points.
    """

    name = "grid"

    def __init__(self, points: int | Mapping = 5) -> None:
        super().__init__()
        if isinstance(points, Mapping):
            self.points = {str(k): _int_at_least(f"points[{k!r}]", v, 1)
                           for k, v in points.items()}
        else:
            self.points = _int_at_least("points", points, 1)

    def _on_bind(self) -> None:
        if isinstance(self.points, dict):
            unknown = sorted(set(self.points) - {n for n, _ in self._dims})
            if unknown:
                raise ValueError(f"points names {unknown} are not distributions of the space "
                                 f"{[n for n, _ in self._dims]}")
        self._axes = [d.grid(self._points_for(n)) for n, d in self._dims]
        self._size = math.prod(len(a) for a in self._axes)

    def _points_for(self, name: str) -> int:
        if isinstance(self.points, dict):
            return self.points.get(name, 5)
        return self.points

    def n_trials(self) -> int | None:
        return self._size if self._space is not None else None

    def _propose(self, number: int, history: list) -> dict:
        if number >= self._size:
            raise ValueError(f"number must be < {self._size}, the number of grid points; got "
                             f"{number}")
        values, rest = [], number
        for axis in reversed(self._axes):
            rest, j = divmod(rest, len(axis))
            values.append(axis[j])
        values.reverse()
        params, i = {}, 0
        for name, value in self._space.items():
            if isinstance(value, Distribution):
                params[name] = values[i]
                i += 1
            else:
                params[name] = copy.deepcopy(value)
        return params

    def describe(self, history=None) -> dict:
        grid = {n: list(a) for (n, _), a in zip(self._dims, self._axes, strict=True)} \
            if self._space is not None else {}
        return {"strategy": self.name, "grid": grid}

    def _options(self) -> dict:
        return {"points": dict(self.points) if isinstance(self.points, dict) else self.points}


class Random(Strategy):
    """Independent uniform draws in the unit cube (each distribution on its own scale).

    Trial ``number`` uses a generator seeded by (study seed, ``number``) only.
    """

    name = "random"

    def _propose(self, number: int, history: list) -> dict:
        return self._params(_rng(self._seed, _KEY_RANDOM, number).random(len(self._dims)))


# ---------------------------------------------------------------------------- coarse to fine

class CoarseToFine(Strategy):
    """Rounds of random search, each in a box zoomed around the best points so far.

    Parameters
    ----------
    rounds : int
        Number of rounds; trials past the last round's share stay in the last round.
    trials_per_round : int or None
        None: ``budget // rounds`` once the runner has called ``set_budget``,
        else 10.
    top : float or int
        The best points that shape a box: a float in (0, 1] is a fraction of the
        scored trials of the earlier rounds (at least one), an int a count.
    shrink : float in (0, 1]
        Each box is at least ``shrink`` times as wide as the previous one in
        every dimension.

    Notes
    -----
    Round 0 samples the whole unit cube. For round ``r >= 1``, take the top
    points among all scored trials of rounds ``< r``; in each dimension the
    box is centred on the span ``[a, b]`` of their unit coordinates, with width
    ``max(b - a, shrink * previous width)``, and is shifted (never shrunk) to
    fit in ``[0, 1]``. So every box contains all the top points, and when they
    cluster the boxes shrink by ``shrink`` per round. Without any scored trial
    the previous box is kept. The barrier of a trial is the start of its round.
    """

    name = "coarse_to_fine"

    def __init__(self, rounds: int = 3, trials_per_round: int | None = None,
                 top: float | int = 0.2, shrink: float = 0.5) -> None:
        super().__init__()
        self.rounds = _int_at_least("rounds", rounds, 1)
        self.trials_per_round = (None if trials_per_round is None
                                 else _int_at_least("trials_per_round", trials_per_round, 1))
        if isinstance(top, bool) or not isinstance(top, numbers.Real):
            raise TypeError(f"top must be a fraction in (0, 1] or a count >= 1; got {top!r}")
        if isinstance(top, numbers.Integral):
            self.top = _int_at_least("top", top, 1)
        elif 0.0 < float(top) <= 1.0:
            self.top = float(top)
        else:
            raise ValueError(f"top must be a fraction in (0, 1] or a count >= 1; got {top!r}")
        if isinstance(shrink, bool) or not isinstance(shrink, numbers.Real) \
                or not 0.0 < float(shrink) <= 1.0:
            raise ValueError(f"shrink must be in (0, 1]; got {shrink!r}")
        self.shrink = float(shrink)
        self._boxes: dict[int, tuple] = {}

    def _per_round(self) -> int:
        if self.trials_per_round is not None:
            return self.trials_per_round
        if self._budget is not None:
            return max(1, self._budget // self.rounds)
        return 10

    def n_trials(self) -> int | None:
        if self.trials_per_round is not None:
            return self.rounds * self.trials_per_round
        return self._budget

    def _round(self, number: int) -> int:
        return min(number // self._per_round(), self.rounds - 1)

    def barrier(self, number: int) -> int:
        self._check_number(number)
        return self._round(number) * self._per_round()

    def _propose(self, number: int, history: list) -> dict:
        lo, hi = self._box(self._round(number), history)
        u = _rng(self._seed, _KEY_C2F, number).random(len(self._dims))
        return self._params(lo + u * (hi - lo))

    def _box(self, r: int, history: list) -> tuple[np.ndarray, np.ndarray]:
        """The unit box of round ``r`` (cached by the trials it depends on)."""
        d = len(self._dims)
        if r == 0:
            return np.zeros(d), np.ones(d)
        done = _before(history, r * self._per_round())
        key = _fingerprint(done)
        cached = self._boxes.get(r)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        prev_lo, prev_hi = self._box(r - 1, history)
        points = [(t, self._unit_point(t.params)) for t in done if _score(t) is not None]
        points = [(t, u) for t, u in points if u is not None]
        if not points:
            lo, hi = prev_lo, prev_hi
        else:
            lo, hi = self._zoom(points, prev_hi - prev_lo)
        self._boxes[r] = (key, lo, hi)
        return lo, hi

    def _zoom(self, points: list, prev_width: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = self.top if isinstance(self.top, int) else math.ceil(self.top * len(points))
        ranked = sorted(points, key=lambda p: (-_score(p[0]), p[0].number))
        U = np.array([u for _, u in ranked[:max(1, k)]])
        a, b = U.min(0), U.max(0)
        width = np.minimum(np.maximum(b - a, self.shrink * prev_width), 1.0)
        lo = (a + b) / 2 - width / 2
        lo = np.clip(lo, 0.0, 1.0 - width)  # shift into [0, 1], keeping the width
        return lo, lo + width

    def describe(self, history: Sequence[Finished] | None = None) -> dict:
        """The boxes of rounds >= 1, in values (``box``) and unit coordinates (``unit``).

        With ``history``, every round whose start it reaches is computed;
        without, the boxes computed so far. For a ``Choice`` the box shows the
        first and last options it covers.
        """
        out = {"strategy": self.name, "rounds": self.rounds}
        if self._space is None:
            return out
        if history is not None:
            history = list(history)
            last = max((t.number for t in history), default=-1)
            for r in range(1, self.rounds):
                if last >= r * self._per_round() - 1:
                    self._box(r, history)
        out["trials_per_round"] = self._per_round()
        out["boxes"] = [self._box_report(r) for r in sorted(self._boxes)]
        return out

    def _box_report(self, r: int) -> dict:
        _, lo, hi = self._boxes[r]
        box, unit = {}, {}
        for (name, dist), a, b in zip(self._dims, lo, hi, strict=True):
            box[name] = [dist.from_unit(a), dist.from_unit(b)]
            unit[name] = [float(a), float(b)]
        return {"round": r, "box": box, "unit": unit}

    def _options(self) -> dict:
        tpr = self.trials_per_round
        if tpr is None and self._budget is not None:
            tpr = self._per_round()  # the resolved size, so a re-created strategy matches
        return {"rounds": self.rounds, "trials_per_round": tpr, "top": self.top,
                "shrink": self.shrink}


# ---------------------------------------------------------------------------- bayes

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
        self.n_initial = _int_at_least("n_initial", n_initial, 1)
        self.batch_size = _int_at_least("batch_size", batch_size, 1)
        if isinstance(xi, bool) or not isinstance(xi, numbers.Real) or not 0 <= xi < math.inf:
            raise ValueError(f"xi must be a finite number >= 0; got {xi!r}")
        self.xi = float(xi)
        self.candidates = _int_at_least("candidates", candidates, 10)
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


# ---------------------------------------------------------------------------- staged

_DEFAULT_STAGES = (
    ("lr", "learning_rate"),
    ("beta", "beta1", "beta_1", "momentum", "hidden", "units", "hidden_units", "width",
     "batch_size", "minibatch"),
    ("layers", "n_layers", "depth", "decay", "decay_rate", "lr_decay"),
)


class Staged(Strategy):
    """The course's order: tune a few parameters at a time, fixing each stage's best.

    Parameters
    ----------
    stages : list or None
        Each stage a list of parameter names, or a dict with ``"params"`` and
        optionally ``"strategy"`` (name, config dict or Strategy) and ``"trials"``.
        None: stage 1 the learning rate (``lr``, ``learning_rate``); stage 2 β
        or momentum, hidden units and minibatch size (``beta``, ``beta1``,
        ``beta_1``, ``momentum``, ``hidden``, ``units``, ``hidden_units``,
        ``width``, ``batch_size``, ``minibatch``); stage 3 layers and decay
        (``layers``, ``n_layers``, ``depth``, ``decay``, ``decay_rate``,
        ``lr_decay``) and every other name. Empty stages are dropped; names a
        given list leaves out join the last stage.
    strategy : str, dict or Strategy
        The strategy of stages that do not name one (each stage gets its own
        fresh copy, bound to its parameters with a seed of its own).
    trials : int, list of int or None
        Trials per stage (or one count per stage). None: a stage whose strategy
        has a natural size (grid) takes it, the others share the budget from
        ``set_budget`` evenly (10 each without a budget).
    defaults : dict or None
        Values of parameters not tuned yet; others take their distribution's
        centre on its own scale, ``from_unit(0.5)``.

    Notes
    -----
    Stage ``s`` covers a block of consecutive trial numbers; trials past the
    last block belong to the last stage. In a stage, the parameters of earlier
    stages take their values in that stage's best trial (defaults if none
    scored), later ones their defaults. The barrier of a trial is the start of
    its stage or the stage strategy's own barrier, whichever is later.
    """

    name = "staged"

    def __init__(self, stages=None, strategy="random", trials=None, defaults=None) -> None:
        super().__init__()
        self.stages = self._check_stages(stages)
        self.strategy = self._check_inner(strategy, "strategy")
        if trials is None or isinstance(trials, numbers.Integral) and not isinstance(trials,
                                                                                        bool):
            self.trials = None if trials is None else _int_at_least("trials", trials, 1)
        elif isinstance(trials, Sequence) and not isinstance(trials, str):
            self.trials = [_int_at_least(f"trials[{i}]", t, 1) for i, t in enumerate(trials)]
        else:
            raise TypeError(f"trials must be None, an int or a list of ints; got {trials!r}")
        if defaults is not None and not isinstance(defaults, Mapping):
            raise TypeError(f"defaults must be a dict of name -> value; got {defaults!r}")
        self.defaults = dict(defaults or {})
        self._layout_cache = None

    @staticmethod
    def _check_inner(strategy, where: str):
        if isinstance(strategy, Staged) or strategy == "staged" or (
                isinstance(strategy, Mapping) and strategy.get("name") == "staged"):
            raise ValueError(f"{where} of a stage cannot itself be 'staged'")
        get_strategy(strategy)  # validates the name or config now
        return strategy.to_config() if isinstance(strategy, Strategy) else strategy

    def _check_stages(self, stages):
        if stages is None:
            return None
        if isinstance(stages, (str, Mapping)) or not isinstance(stages, Sequence) or not stages:
            raise ValueError(f"stages must be a non-empty list of stages; got {stages!r}")
        checked = []
        for i, stage in enumerate(stages):
            if isinstance(stage, Mapping):
                extra = set(stage) - {"params", "strategy", "trials"}
                if "params" not in stage or extra:
                    raise ValueError(f"stages[{i}] must have 'params' and optionally 'strategy' "
                                     f"and 'trials'; got keys {sorted(stage)}")
                entry = {"params": self._names(stage["params"], i)}
                if stage.get("strategy") is not None:
                    entry["strategy"] = self._check_inner(stage["strategy"],
                                                          f"stages[{i}]['strategy']")
                if stage.get("trials") is not None:
                    entry["trials"] = _int_at_least(f"stages[{i}]['trials']", stage["trials"], 1)
            else:
                entry = {"params": self._names(stage, i)}
            checked.append(entry)
        return checked

    @staticmethod
    def _names(names, i: int) -> list:
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"stages[{i}] must list parameter names; got {names!r}")
        return list(names)

    # -- binding ---------------------------------------------------------------------------

    def _on_bind(self) -> None:
        names = [n for n, _ in self._dims]
        plan = self._default_plan(names) if self.stages is None else self._given_plan(names)
        if self.trials is not None and not isinstance(self.trials, int) \
                and len(self.trials) != len(plan):
            raise ValueError(f"trials must have one count per stage ({len(plan)} stages); got "
                             f"{self.trials!r}")
        self._check_defaults(names)
        self._plan = []
        for s, entry in enumerate(plan):
            inner = get_strategy(copy.deepcopy(entry.get("strategy", self.strategy)))
            sub = {n: self._space[n] for n in entry["params"]}
            stage_seed = int(np.random.SeedSequence(
                self._seed, spawn_key=(_SALT, _KEY_STAGE, s)).generate_state(1)[0])
            inner.bind(sub, stage_seed)
            self._plan.append({"params": list(entry["params"]), "inner": inner,
                               "trials": entry.get("trials")})
        self._layout_cache = None

    def _default_plan(self, names: list) -> list:
        groups: list[list[str]] = [[] for _ in _DEFAULT_STAGES]
        for name in names:
            where = [i for i, group in enumerate(_DEFAULT_STAGES) if name.lower() in group]
            groups[where[0] if where else len(_DEFAULT_STAGES) - 1].append(name)
        return [{"params": g} for g in groups if g]

    def _given_plan(self, names: list) -> list:
        seen: dict[str, int] = {}
        for i, entry in enumerate(self.stages):
            for n in entry["params"]:
                if n not in names:
                    raise ValueError(f"stages[{i}] names {n!r}, which is not a distribution of "
                                     f"the space {names}")
                if n in seen:
                    raise ValueError(f"{n!r} appears in stages[{seen[n]}] and stages[{i}]")
                seen[n] = i
        plan = [dict(e) for e in self.stages]
        left = [n for n in names if n not in seen]
        if left:
            plan[-1] = {**plan[-1], "params": plan[-1]["params"] + left}
        return [e for e in plan if e["params"]]

    def _check_defaults(self, names: list) -> None:
        for name, value in self.defaults.items():
            if name not in names:
                raise ValueError(f"defaults names {name!r}, which is not a distribution of the "
                                 f"space {names}")
            try:
                self._space[name].to_unit(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"defaults[{name!r}] does not fit {self._space[name]!r}: "
                                 f"{exc}") from None

    def set_budget(self, n_trials: int | None) -> None:
        super().set_budget(n_trials)
        self._layout_cache = None

    def _layout(self) -> list[tuple[int, int]]:
        """(start, size) of each stage."""
        if self._layout_cache is not None:
            return self._layout_cache
        sizes = []
        for s, stage in enumerate(self._plan):
            if stage["trials"] is not None:
                sizes.append(stage["trials"])
            elif self.trials is not None:
                sizes.append(self.trials if isinstance(self.trials, int) else self.trials[s])
            else:
                stage["inner"].set_budget(None)  # its natural size (a grid's), not a share
                sizes.append(stage["inner"].n_trials())
        free = [s for s, n in enumerate(sizes) if n is None]
        if free:
            if self._budget is None:
                share = [10] * len(free)
            else:
                left = max(self._budget - sum(n for n in sizes if n is not None), len(free))
                share = [left // len(free) + (i < left % len(free)) for i in range(len(free))]
            for s, n in zip(free, share, strict=True):
                sizes[s] = n
        layout, start = [], 0
        for stage, n in zip(self._plan, sizes, strict=True):
            layout.append((start, n))
            stage["inner"].set_budget(n)
            start += n
        self._layout_cache = layout
        return layout

    def n_trials(self) -> int | None:
        if self._space is None or not self._plan:
            return None
        start, size = self._layout()[-1]
        return start + size

    def _stage_of(self, number: int) -> int:
        layout = self._layout()
        for s in range(len(layout) - 1, -1, -1):
            if number >= layout[s][0]:
                return s
        return 0

    # -- proposals -------------------------------------------------------------------------

    def barrier(self, number: int) -> int:
        self._check_number(number)
        if not self._plan:
            return 0
        s = self._stage_of(number)
        start = self._layout()[s][0]
        return start + self._plan[s]["inner"].barrier(number - start)

    def _propose(self, number: int, history: list) -> dict:
        if not self._plan:
            return self._params([])
        s = self._stage_of(number)
        start = self._layout()[s][0]
        inner_params = self._plan[s]["inner"].propose(number - start,
                                                      self._stage_history(s, history))
        values = {}
        for e in range(s):
            values.update(self._stage_best(e, history))
        values.update({n: inner_params[n] for n in self._plan[s]["params"]})
        params = {}
        for name, value in self._space.items():
            if not isinstance(value, Distribution):
                params[name] = copy.deepcopy(value)
            elif name in values:
                params[name] = values[name]
            else:
                params[name] = self._default(name)
        return params

    def _default(self, name: str):
        if name in self.defaults:
            return copy.deepcopy(self.defaults[name])
        return self._space[name].from_unit(0.5)

    def _stage_trials(self, s: int, history) -> list:
        start, size = self._layout()[s]
        end = math.inf if s == len(self._plan) - 1 else start + size
        return [t for t in history if start <= t.number < end]

    def _stage_history(self, s: int, history) -> list:
        """The stage's trials renumbered from 0, with only the stage's parameters."""
        start = self._layout()[s][0]
        names = self._plan[s]["params"]
        return [Finished(t.number - start, {n: t.params[n] for n in names if n in t.params},
                         t.score) for t in self._stage_trials(s, history)]

    def _stage_best(self, s: int, history) -> dict:
        best = _best(self._stage_trials(s, history))
        names = self._plan[s]["params"]
        if best is None or any(n not in best.params for n in names):
            return {n: self._default(n) for n in names}
        return {n: best.params[n] for n in names}

    def describe(self, history: Sequence[Finished] | None = None) -> dict:
        """The stages: parameters, strategy, first trial, size; with ``history``, each
        stage's best values so far and its strategy's own report."""
        out = {"strategy": self.name}
        if self._space is None:
            return out
        history = None if history is None else list(history)
        stages = []
        for s, ((start, size), stage) in enumerate(zip(self._layout(), self._plan, strict=True)):
            inner_history = None if history is None else self._stage_history(s, history)
            entry = {"stage": s + 1, "params": list(stage["params"]),
                     "strategy": stage["inner"].name, "start": start, "trials": size,
                     "inner": stage["inner"].describe(inner_history)}
            if history is not None:
                best = _best(self._stage_trials(s, history))
                entry["best"] = None if best is None else {
                    n: best.params.get(n) for n in stage["params"]}
            stages.append(entry)
        out["stages"] = stages
        return out

    def _options(self) -> dict:
        if self._space is None:
            stages = copy.deepcopy(self.stages)
            trials = self.trials
        else:
            layout = self._layout()
            stages = [{"params": list(st["params"]), "strategy": st["inner"].to_config(),
                       "trials": size} for st, (_, size) in zip(self._plan, layout, strict=True)]
            trials = None
        return {"stages": stages, "strategy": copy.deepcopy(self.strategy), "trials": trials,
                "defaults": copy.deepcopy(self.defaults)}


# ---------------------------------------------------------------------------- factories

_STRATEGIES = {cls.name: cls for cls in (Grid, Random, CoarseToFine, Bayes, Staged)}


def get_strategy(strategy="random", /, **options) -> Strategy:
    """A strategy from its name (with options), its config dict, or itself.

    Parameters
    ----------
    strategy : str, dict or Strategy
        ``"grid"``, ``"random"``, ``"coarse_to_fine"`` (or ``"coarse-to-fine"``),
        ``"bayes"``, ``"staged"``; a dict from :meth:`Strategy.to_config`; or an
        instance, returned as it is.
    **options
        Arguments of the strategy's class (only with a name).
    """
    if isinstance(strategy, Strategy):
        if options:
            raise TypeError(f"options {sorted(options)} can only be given with a strategy name, "
                            f"not with the instance {strategy!r}")
        return strategy
    if isinstance(strategy, Mapping):
        if options:
            raise TypeError(f"options {sorted(options)} can only be given with a strategy name, "
                            "not with a config dict")
        return strategy_from_config(strategy)
    if not isinstance(strategy, str):
        raise TypeError(f"strategy must be a name, a config dict or a Strategy; got {strategy!r}")
    return build_by_name("strategy", _STRATEGIES, strategy, options)


def strategy_from_config(config: Mapping) -> Strategy:
    """The strategy described by ``config`` (from :meth:`Strategy.to_config`)."""
    if not isinstance(config, Mapping) or "name" not in config:
        raise ValueError(f"config must be a dict with a 'name'; got {config!r}")
    options = {k: copy.deepcopy(v) for k, v in config.items() if k != "name"}
    return get_strategy(config["name"], **options)
