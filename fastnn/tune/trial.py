"""The trial value types every part of :mod:`fastnn.tune` shares.

A :class:`Trial` is what an objective receives: a small picklable handle that travels to the
worker. A :class:`FrozenTrial` is a trial as recorded in the storage. :class:`TrialPruned` is
what an objective raises to stop. Every trial's seed comes from the study seed and the trial
number (:func:`trial_seed`)::

    int(np.random.SeedSequence(study_seed, spawn_key=(number,)).generate_state(1)[0])

so the same study gives every trial the same seed wherever and whenever it runs.

This module sits below the study and the runner: both import it, it imports neither.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import numbers

import numpy as np

from .. import _checks
from .storage import FINISHED

__all__ = ["FrozenTrial", "Trial", "TrialPruned", "format_params", "trial_seed"]


class TrialPruned(Exception):
    """Raised by an objective (usually after ``trial.should_prune()``) to stop a bad trial.

    The trial is recorded as "pruned" with the reports it made; the search goes on.
    """


def trial_seed(study_seed: int, number: int) -> int:
    """The seed of trial ``number``: a 32-bit integer derived from the study seed.

    >>> trial_seed(0, 0) == trial_seed(0, 0) != trial_seed(0, 1)
    True
    """
    sequence = np.random.SeedSequence(int(study_seed), spawn_key=(int(number),))
    return int(sequence.generate_state(1)[0])


class Trial:
    """The handle an objective receives: ``objective(params, trial) -> float``.

    Attributes
    ----------
    number : int
        0, 1, 2, ... in the order the strategy proposed the trials.
    params : dict
        The trial's parameter values (the same dict the objective gets as ``params``).
    seed : int
        Seed everything random in the trial with it (``model.fit(..., seed=trial.seed)``).
    reports : dict
        ``step -> value`` reported so far.

    A Trial is picklable: it travels to the worker that runs the objective, with a snapshot
    of what the pruner needs (the reports of the trials that had finished when it started).
    """

    def __init__(self, number: int, params: dict, seed: int, *, direction: str = "maximize",
                 pruner=None, peers: dict | None = None) -> None:
        self.number = int(number)
        self.params = dict(params)
        self.seed = int(seed)
        self.reports: dict[int, float] = {}
        self._direction = direction
        self._pruner = pruner
        self._peers = peers or {}
        self._last_step: int | None = None

    def report(self, value: float, step: int) -> None:
        """Record an intermediate value (e.g. validation accuracy after epoch ``step``).

        Raises
        ------
        TypeError
            If ``step`` is not an integer.
        ValueError
            If ``step`` is negative or ``value`` is not a finite number.
        """
        step = _checks.integer("step", step, minimum=0)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                or not math.isfinite(value):
            raise ValueError(f"trial {self.number}: the reported value must be a finite "
                             f"number; got {value!r} at step {step}")
        self.reports[step] = float(value)
        self._last_step = step

    def should_prune(self) -> bool:
        """True if the study's pruner says to stop this trial, judged on the last report.

        Always False without a pruner or before the first report. When it is True, raise
        :class:`TrialPruned`.
        """
        if self._pruner is None or self._last_step is None:
            return False
        value = self.reports[self._last_step]
        oriented = value if self._direction == "maximize" else -value
        return bool(self._pruner.should_prune(self._last_step, oriented, self._peers))

    def __repr__(self) -> str:
        return f"Trial(number={self.number}, params={self.params!r}, seed={self.seed})"


def _parse_time(text: str | None) -> datetime.datetime | None:
    return None if text is None else datetime.datetime.fromisoformat(text)


@dataclasses.dataclass(frozen=True)
class FrozenTrial:
    """A recorded trial, as stored.

    Attributes
    ----------
    number, params, seed : as in :class:`Trial`.
    state : str
        "complete", "failed", "pruned" or "running".
    value : float or None
        The objective's value (complete trials only).
    reports : dict
        ``step -> value`` reported by the trial.
    error : str or None
        Failed trials: the exception and a traceback summary.
    datetime_start, datetime_complete : datetime.datetime or None
        When the trial was (last) dispatched and when its result was recorded (UTC).
    duration : float or None
        Seconds the objective ran, measured where it ran.
    attempts : int
        How many times the trial was dispatched (more than 1 after a resume).
    parent : int or None
        For a trial made by :func:`fastnn.tune.resume_trial`: the trial it continued.
    crashes : int
        How many coordinator processes died while running this trial inline (a running
        trial's current inline attempt is counted until it ends). A search resumed on a
        running trial with ``crashes >= 2`` records it as failed instead of running it again.
    """

    number: int
    state: str
    params: dict
    value: float | None
    seed: int
    reports: dict
    error: str | None
    datetime_start: datetime.datetime | None
    datetime_complete: datetime.datetime | None
    duration: float | None
    attempts: int = 1
    parent: int | None = None
    crashes: int = 0

    @classmethod
    def from_row(cls, row: dict) -> FrozenTrial:
        return cls(number=row["number"], state=row["state"], params=row["params"],
                   value=row["value"], seed=row["seed"], reports=row["reports"],
                   error=row["error"], datetime_start=_parse_time(row["datetime_start"]),
                   datetime_complete=_parse_time(row["datetime_complete"]),
                   duration=row["duration"], attempts=row["attempts"], parent=row["parent"],
                   crashes=row["crashes"])

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def __hash__(self) -> int:  # the dict fields are not hashable; these identify a record
        return hash((self.number, self.state, self.attempts, self.datetime_complete))


def format_params(params: dict) -> str:
    """``lr=0.00312 beta1=0.987 hidden=64``: floats to 4 significant digits."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in params.items())
