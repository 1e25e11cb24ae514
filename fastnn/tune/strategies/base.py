"""The base of the search strategies: the :class:`Strategy` contract, :class:`Finished`
(what a strategy sees of a trial) and the helpers the strategies share."""

from __future__ import annotations

import abc
import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ... import _checks
from ..space import Distribution, check_space

__all__ = ["Finished", "Strategy"]

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
        seed = _checks.integer("seed", seed, minimum=0)
        self._space = space
        self._seed = seed
        self._dims = [(n, d) for n, d in space.items() if isinstance(d, Distribution)]
        self._on_bind()

    def _on_bind(self) -> None:  # noqa: B027 (an optional hook, not abstract)
        """Hook for subclasses: checks and precomputation that need the space."""

    def set_budget(self, n_trials: int | None) -> None:
        """The number of trials the runner will ask for (None: unbounded). Called before
        any proposal; strategies that size themselves by it (coarse-to-fine, staged) use it."""
        self._budget = (None if n_trials is None
                        else _checks.integer("n_trials", n_trials, minimum=1))

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
        _checks.integer("number", number, minimum=0)

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
