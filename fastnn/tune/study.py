"""A study: its trials, the best one, and hand-driven trials (``ask`` / ``tell``).

A :class:`Study` is a view of one SQLite storage (see :mod:`fastnn.tune.storage`): its
metadata (direction, seed, space, strategy, pruner, number of trials) and one row per trial.
The objective of a search receives a :class:`Trial`, a small picklable handle that travels
to the worker; what the coordinator keeps is a :class:`FrozenTrial`, read from the storage.

Every trial's seed comes from the study seed and the trial number::

    int(np.random.SeedSequence(study_seed, spawn_key=(number,)).generate_state(1)[0])

so the same study gives every trial the same seed wherever and whenever it runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import numbers
import os
from collections.abc import Mapping

import numpy as np

from .._version import __version__
from .pruners import NopPruner, get_pruner, pruner_from_config
from .space import Choice, Distribution, check_space, space_from_config, space_to_config
from .storage import FINISHED, MEMORY, STATES, Storage, dumps
from .strategies import Finished, Grid, get_strategy, strategy_from_config

__all__ = ["FrozenTrial", "Study", "Trial", "TrialPruned", "create_study", "load_study",
           "trial_seed"]

DIRECTIONS = ("maximize", "minimize")


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


def _check_direction(direction) -> str:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'maximize' or 'minimize'; got {direction!r}")
    return direction


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


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
        ValueError
            If ``step`` is not an integer >= 0 or ``value`` is not a finite number.
        """
        step = _check_count("step", step, 0)
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

    @classmethod
    def from_row(cls, row: dict) -> FrozenTrial:
        return cls(number=row["number"], state=row["state"], params=row["params"],
                   value=row["value"], seed=row["seed"], reports=row["reports"],
                   error=row["error"], datetime_start=_parse_time(row["datetime_start"]),
                   datetime_complete=_parse_time(row["datetime_complete"]),
                   duration=row["duration"], attempts=row["attempts"], parent=row["parent"])

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def __hash__(self) -> int:  # the dict fields are not hashable; these identify a record
        return hash((self.number, self.state, self.attempts, self.datetime_complete))


# ------------------------------------------------------------------------------------------
# Parameter checks for hand-given trials
# ------------------------------------------------------------------------------------------

def _check_value(name: str, dist: Distribution, value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(dist, Choice):
        return dist.options[dist.index(value)]
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value):
        raise ValueError(f"params[{name!r}] must be a finite number for {dist!r}; got "
                         f"{value!r}")
    if isinstance(dist.low, int):
        if float(value) != int(value):
            raise ValueError(f"params[{name!r}] must be an integer for {dist!r}; got {value!r}")
        value = int(value)
    else:
        value = float(value)
    if not dist.low <= value <= dist.high:
        raise ValueError(f"params[{name!r}] = {value!r} is outside {dist!r}; widen the space "
                         "to try it")
    return value


def check_params(space: dict, params) -> dict:
    """Hand-given ``params`` checked against ``space``: every distribution's name given with
    a value it can produce, constants optional (they must equal the space's), nothing else.
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of name -> value; got {type(params).__name__}")
    unknown = [name for name in params if name not in space]
    if unknown:
        raise ValueError(f"params has names that are not in the space: {unknown} (the space "
                         f"has {list(space)})")
    missing = [name for name, dist in space.items()
               if isinstance(dist, Distribution) and name not in params]
    if missing:
        raise ValueError(f"params is missing {missing}; give a value for every distribution "
                         "of the space")
    checked = {}
    for name, dist in space.items():
        if isinstance(dist, Distribution):
            checked[name] = _check_value(name, dist, params[name])
        else:
            if name in params and dumps(params[name]) != dumps(dist):
                raise ValueError(f"params[{name!r}] = {params[name]!r}, but the space fixes "
                                 f"{name!r} at {dist!r}")
            checked[name] = dist
    return checked


# ------------------------------------------------------------------------------------------
# The study
# ------------------------------------------------------------------------------------------

class Study:
    """A hyperparameter study: metadata and trials in one storage.

    Make one with :func:`fastnn.tune.search`, :func:`create_study` or :func:`load_study`,
    not directly.

    Attributes
    ----------
    direction : "maximize" or "minimize"
    seed : int
        The study seed (drawn from fresh entropy and stored if none was given).
    space : dict
        Name -> distribution or constant.
    strategy : Strategy
        Bound to the space and seed.
    pruner : Pruner
    n_trials : int or None
        The study's total number of trials (what a search completes, counting resumed runs).
    storage : str
        The SQLite file, or ":memory:".
    """

    def __init__(self, storage: Storage, meta: dict) -> None:
        self._storage = storage
        self.direction: str = meta["direction"]
        self.seed: int = meta["seed"]
        self.space: dict = space_from_config(meta["space"])
        self.strategy = strategy_from_config(meta["strategy"])
        self.strategy.bind(self.space, self.seed)
        self.pruner = pruner_from_config(meta["pruner"])
        self.n_trials: int | None = meta["n_trials"]
        self._budget: int | None = meta["budget"]
        if self._budget is not None:
            self.strategy.set_budget(self._budget)
        self.created = _parse_time(meta["created"])
        self.fastnn_version: str = meta["fastnn_version"]
        self._user_attrs: dict = meta["user_attrs"]
        self._strategy_state: dict = meta["strategy_state"]
        self._open: dict[int, Trial] = {}  # asked here, not told yet

    # -- reading -----------------------------------------------------------------------------

    @property
    def storage(self) -> str:
        return self._storage.path

    @property
    def trials(self) -> list[FrozenTrial]:
        """All trials, by number (read from the storage)."""
        return [FrozenTrial.from_row(row) for row in self._storage.trial_rows()]

    def _complete(self) -> list[FrozenTrial]:
        return [t for t in self.trials if t.state == "complete"]

    @property
    def best_trial(self) -> FrozenTrial:
        """The complete trial with the best value (the lowest number among equals).

        Raises
        ------
        ValueError
            If no trial is complete yet.
        """
        complete = self._complete()
        if not complete:
            states = {s: sum(t.state == s for t in self.trials) for s in STATES}
            raise ValueError(f"the study has no complete trial yet (trials by state: {states})")
        sign = 1.0 if self.direction == "maximize" else -1.0
        return max(complete, key=lambda t: (sign * t.value, -t.number))

    @property
    def best_value(self) -> float:
        return self.best_trial.value

    @property
    def best_params(self) -> dict:
        return dict(self.best_trial.params)

    @property
    def user_attrs(self) -> dict:
        """JSON-able study attributes (``tune_model`` keeps its settings here)."""
        return dict(self._user_attrs)

    def set_user_attr(self, key: str, value) -> None:
        attrs = dict(self._user_attrs, **{key: value})
        dumps(attrs)  # JSON-able, or TypeError/ValueError now
        self._storage.update_study(user_attrs=attrs)
        self._user_attrs = attrs

    @property
    def strategy_state(self) -> dict:
        """:meth:`describe` as stored at the end of the last search."""
        return dict(self._strategy_state)

    def describe(self) -> dict:
        """The strategy's report on the finished trials (``strategy.describe(history)``):
        e.g. coarse-to-fine's boxes, the stages of a staged search with their best values."""
        finished = {t.number: t for t in self.trials if t.finished}
        return self.strategy.describe(self._history(finished, math.inf))

    def orient(self, value: float | None) -> float | None:
        """``value`` oriented so that larger is better (negated when minimizing)."""
        if value is None:
            return None
        return value if self.direction == "maximize" else -value

    # -- trials for the runner and for ask ----------------------------------------------------

    def _history(self, finished: dict[int, FrozenTrial], barrier: int) -> list[Finished]:
        """What the strategy sees: finished trials below ``barrier`` (not resume_trial's)."""
        return [Finished(number=n, params=dict(finished[n].params),
                         score=(self.orient(finished[n].value)
                                if finished[n].state == "complete" else None))
                for n in sorted(k for k in finished if k < barrier)
                if finished[n].parent is None]

    def _add_peer(self, peers: dict[int, list[float]], trial: FrozenTrial) -> None:
        """Add a finished trial's reports to ``peers`` (step -> oriented values) if the
        pruner should see them: complete and pruned trials, not resume_trial's."""
        if trial.state in ("complete", "pruned") and trial.parent is None \
                and not isinstance(self.pruner, NopPruner):
            for step, value in sorted(trial.reports.items()):
                peers.setdefault(step, []).append(self.orient(value))

    def _peers(self, finished: dict[int, FrozenTrial]) -> dict[int, list[float]]:
        peers: dict[int, list[float]] = {}
        for _, t in sorted(finished.items()):
            self._add_peer(peers, t)
        return peers

    def _make_trial(self, number: int, params: dict, seed: int,
                    peers: dict[int, list[float]]) -> Trial:
        """The Trial to run, with a snapshot (a copy) of the pruner's peers."""
        return Trial(number, params, seed, direction=self.direction, pruner=self.pruner,
                     peers={step: list(values) for step, values in peers.items()})

    def hard_limit(self) -> int | None:
        """The most trials the strategy can propose (a grid's points), or None.

        Other strategies' ``n_trials()`` is a plan, not a limit: coarse-to-fine and staged
        keep proposing in their last round or stage.
        """
        return self.strategy.n_trials() if isinstance(self.strategy, Grid) else None

    def _check_natural_size(self, number: int) -> None:
        limit = self.hard_limit()
        if limit is not None and number >= limit:
            raise ValueError(f"the grid has {limit} points; trial {number} is past its end")

    def _propose(self, number: int, finished: dict[int, FrozenTrial]) -> dict:
        self._check_natural_size(number)
        barrier = self.strategy.barrier(number)
        return self.strategy.propose(number, self._history(finished, barrier))

    def _set_target(self, n_trials) -> int:
        """Resolve and store the study's total number of trials."""
        if n_trials is not None:
            n_trials = _check_count("n_trials", n_trials, 0)
            if n_trials != self.n_trials:
                self._storage.update_study(n_trials=n_trials)
                self.n_trials = n_trials
        if self.n_trials is None:
            natural = self.strategy.n_trials()
            if natural is None:
                raise ValueError(f"n_trials is required: the {self.strategy.name} strategy has "
                                 "no natural number of trials")
            self._storage.update_study(n_trials=natural)
            self.n_trials = natural
        if self._budget is None and self.n_trials > 0:
            self._budget = self.n_trials
            self._storage.update_study(budget=self._budget)
            self.strategy.set_budget(self._budget)
        return self.n_trials

    def _finish(self, number: int, *, state: str, value: float | None, reports: dict,
                error: str | None, duration: float | None) -> FrozenTrial:
        self._storage.finish(number, state=state, value=value, reports=reports, error=error,
                             duration=duration)
        self._open.pop(number, None)
        return self._trial(number)

    def _trial(self, number: int) -> FrozenTrial:
        row = self._storage.trial_row(number)
        if row is not None:
            return FrozenTrial.from_row(row)
        raise ValueError(f"the study has no trial {number} (it has "
                         f"{self._storage.next_number()} trials)")

    @contextlib.contextmanager
    def _exclusive(self):
        """Hold the study's lock file: one coordinator at a time writes a storage file."""
        if self.storage == MEMORY:
            yield
            return
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock (documented)
            yield
            return
        with open(self.storage + ".lock", "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.seek(0)
                holder = fh.read().strip() or "?"
                raise RuntimeError(f"another process (pid {holder}) is running a search on "
                                   f"{self.storage}; a study has one coordinator at a "
                                   "time") from None
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # -- hand-driven trials ("panda") --------------------------------------------------------

    def ask(self, params: dict | None = None) -> Trial:
        """Start a trial by hand; it is recorded as "running" until :meth:`tell`.

        Parameters
        ----------
        params : dict, optional
            The values to try (checked against the space: one per distribution; constants
            may be left out). By default the strategy proposes them, as in a search.

        Returns
        -------
        Trial
            Report to it (``trial.report(value, step)``), ask ``trial.should_prune()``,
            then ``study.tell(trial, value)``.

        Raises
        ------
        RuntimeError
            If the strategy's proposal must wait for trials that are still running
            (coarse-to-fine rounds, Bayesian batches, stages): tell them first.

        Notes
        -----
        A hand-given trial takes the next number like any other, so in a grid study the grid
        point of that number is not tried. Trials left "running" by a session that ended
        can be told by number, or re-run by :meth:`optimize`.
        """
        return self._ask(params)

    def _ask(self, params: dict | None, parent: int | None = None) -> Trial:
        """ask(); with ``parent`` (resume_trial) the params are taken as given, no pruner."""
        with self._exclusive():
            rows = {row["number"]: FrozenTrial.from_row(row)
                    for row in self._storage.trial_rows()}
            number = len(rows)
            finished = {n: t for n, t in rows.items() if t.finished}
            if params is None:
                self._check_natural_size(number)
                barrier = self.strategy.barrier(number)
                waiting = [n for n in range(barrier) if n not in finished]
                if waiting:
                    raise RuntimeError(
                        f"the {self.strategy.name} strategy proposes trial {number} from the "
                        f"results of trials 0..{barrier - 1}; trials {waiting} are still "
                        "running: tell their results first")
                params = self._propose(number, finished)
            elif parent is None:
                params = check_params(self.space, params)
            seed = trial_seed(self.seed, number)
            self._storage.insert_running(number, params, seed, parent=parent)
            if parent is None:
                trial = self._make_trial(number, params, seed, self._peers(finished))
            else:
                trial = Trial(number, params, seed, direction=self.direction)
            self._open[number] = trial
            return trial

    def tell(self, trial: Trial | int, value: float | None = None, *, state: str = "complete",
             error: str | None = None) -> FrozenTrial:
        """Record the result of a running trial (asked here, or left running by number).

        Parameters
        ----------
        trial : Trial or int
            The trial from :meth:`ask`, or a running trial's number.
        value : float, optional
            The objective's value; required for ``state="complete"``, not allowed otherwise.
            A NaN or infinite value records the trial as "failed", as a search does.
        state : "complete", "failed" or "pruned"
        error : str, optional
            For a failed trial: what went wrong.

        Returns
        -------
        FrozenTrial
            The trial as recorded (its reports are those made on the Trial object).
        """
        if isinstance(trial, Trial):
            number, reports = trial.number, dict(trial.reports)
        else:
            number = _check_count("trial", trial, 0)
            live = self._open.get(number)
            reports = {} if live is None else dict(live.reports)
        if state not in FINISHED:
            raise ValueError(f"state must be one of {FINISHED}; got {state!r}")
        if state == "complete":
            if value is None or isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"a complete trial needs a real value; got {value!r}")
            value = float(value)
            if not math.isfinite(value):
                state, error, value = "failed", f"the objective returned {value!r}", None
        elif value is not None:
            raise ValueError(f"a {state} trial has no value; got value={value!r}")
        with self._exclusive():
            current = self._trial(number)
            if current.state != "running":
                raise ValueError(f"trial {number} is {current.state}, not running: it was "
                                 "told already")
            duration = None
            if current.datetime_start is not None:
                elapsed = datetime.datetime.now(datetime.timezone.utc) - current.datetime_start
                duration = elapsed.total_seconds()
            return self._finish(number, state=state, value=value, reports=reports,
                                error=error, duration=duration)

    # -- running -------------------------------------------------------------------------------

    def optimize(self, objective, n_trials: int | None = None, *, n_jobs: int | None = None,
                 executor=None, timeout: float | None = None, callbacks=None,
                 verbose: int = 0) -> Study:
        """Run trials until the study has ``n_trials`` finished trials in total.

        See :func:`fastnn.tune.search` for the arguments. ``n_trials`` counts every trial of
        the study, including those finished before (it is a total, not a number to add);
        trials left "running" by an interrupted search are run again with the same params
        and seed.
        """
        from .runner import run

        run(self, objective, n_trials, n_jobs=n_jobs, executor=executor, timeout=timeout,
            callbacks=callbacks, verbose=verbose)
        return self

    # -- reporting -----------------------------------------------------------------------------

    def ranked(self) -> list[FrozenTrial]:
        """Trials best first: complete by value, then pruned, failed, running (by number)."""
        sign = -1.0 if self.direction == "maximize" else 1.0
        order = {"complete": 0, "pruned": 1, "failed": 2, "running": 3}
        return sorted(self.trials, key=lambda t: (
            order[t.state], sign * t.value if t.state == "complete" else 0.0, t.number))

    def table(self, top: int | None = None) -> str:
        """The trials as a text table, best first (``top``: only the first ``top`` rows)."""
        ranked = self.ranked()
        if top is not None:
            ranked = ranked[:_check_count("top", top, 1)]
        rows = [("#", "state", "value", "duration", "params")]
        for t in ranked:
            value = "-" if t.value is None else f"{t.value:.6g}"
            if t.state == "pruned" and t.reports:
                step = max(t.reports)
                value = f"({t.reports[step]:.4g}@{step})"
            duration = "-" if t.duration is None else f"{t.duration:.2f} s"
            params = format_params(t.params)
            if t.state == "failed" and t.error:
                params += f"  [{t.error.splitlines()[0][:80]}]"
            if t.parent is not None:
                params += f"  [continues #{t.parent}]"
            rows.append((str(t.number), t.state, value, duration, params))
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        return "\n".join("  ".join([r[0].rjust(widths[0]), r[1].ljust(widths[1]),
                                    r[2].rjust(widths[2]), r[3].rjust(widths[3]), r[4]]).rstrip()
                         for r in rows)

    def summary(self) -> str:
        """A few lines: storage, direction, seed, strategy, counts by state, best trial."""
        trials = self.trials
        counts = ", ".join(f"{sum(t.state == s for t in trials)} {s}" for s in STATES)
        lines = [f"study {self.storage}: {self.direction}, seed {self.seed}, strategy "
                 f"{self.strategy.name}, pruner {self.pruner.name}",
                 f"trials: {len(trials)} of {self.n_trials if self.n_trials is not None else '?'}"
                 f" ({counts})"]
        if any(t.state == "complete" for t in trials):
            best = self.best_trial
            lines.append(f"best: trial {best.number}, value {best.value:.6g}, "
                         f"{format_params(best.params)}")
        return "\n".join(lines)

    def close(self) -> None:
        """Close the storage connection (a ":memory:" study is gone after this)."""
        self._storage.close()

    def __enter__(self) -> Study:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Study(storage={self.storage!r}, direction={self.direction!r}, "
                f"strategy={self.strategy.name!r}, trials={self._storage.next_number()})")


def format_params(params: dict) -> str:
    """``lr=0.00312 beta1=0.987 hidden=64``: floats to 4 significant digits."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in params.items())


# ------------------------------------------------------------------------------------------
# Creating and loading
# ------------------------------------------------------------------------------------------

def _check_seed(seed) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None; got {seed!r}")
    return int(seed)


def _mismatch(what: str, path: str, stored, given) -> ValueError:
    return ValueError(f"{path} holds a study with a different {what}: stored {stored}, given "
                      f"{given}; use another storage file, or give the stored {what} to resume")


def _check_resume(path: str, meta: dict, *, space_config, direction, seed, strategy_config,
                  pruner_config) -> None:
    if dumps(space_config) != dumps(meta["space"]):
        stored, given = meta["space"], space_config
        names = sorted(set(stored) ^ set(given)) or [
            k for k in given if dumps(given[k]) != dumps(stored.get(k))] or ["(order)"]
        raise _mismatch("space", path, f"{dumps(stored)}",
                        f"{dumps(given)} (differs in {names})")
    if direction is not None and direction != meta["direction"]:
        raise _mismatch("direction", path, repr(meta["direction"]), repr(direction))
    if seed is not None and seed != meta["seed"]:
        raise _mismatch("seed", path, meta["seed"], seed)
    if strategy_config is not None and dumps(strategy_config) != dumps(meta["strategy"]):
        raise _mismatch("strategy", path, dumps(meta["strategy"]), dumps(strategy_config))
    if pruner_config is not None and dumps(pruner_config) != dumps(meta["pruner"]):
        raise _mismatch("pruner", path, dumps(meta["pruner"]), dumps(pruner_config))


def create_study(space: dict, strategy=None, *, storage=MEMORY, seed: int | None = None,
                 direction: str | None = None, pruner=None, n_trials: int | None = None,
                 **strategy_options) -> Study:
    """A new study, or the study already in ``storage`` (checked to be the same study).

    Parameters
    ----------
    space : dict
        Name -> distribution (``fastnn.tune.LogUniform(1e-4, 1e-1)``, ...) or constant.
    strategy : str or Strategy, optional
        "grid", "random", "coarse_to_fine", "bayes", "staged" or an instance; options for a
        named strategy go in ``**strategy_options``. Default: "random" for a new study, the
        stored one when resuming.
    storage : ":memory:" or path
        An SQLite file; if it holds a study, that study is opened (resumed).
    seed : int, optional
        The study seed. Default: fresh entropy for a new study (stored, so a resumed study
        repeats its trials), the stored seed when resuming.
    direction : "maximize" or "minimize", optional
        Default: "maximize" for a new study, the stored one when resuming.
    pruner : "median", "halving", Pruner or None
        Default: no pruning for a new study, the stored one when resuming.
    n_trials : int, optional
        The study's total number of trials (stored; can be raised later).

    Raises
    ------
    ValueError
        On a bad argument, or if ``storage`` holds a study with another space, direction,
        seed, strategy or pruner.
    FileNotFoundError
        If the directory of ``storage`` does not exist.
    """
    if direction is not None:
        _check_direction(direction)
    seed = _check_seed(seed)
    if n_trials is not None:
        n_trials = _check_count("n_trials", n_trials, 0)
    space = check_space(space)
    space_config = space_to_config(space)
    if strategy is None and strategy_options:
        raise TypeError(f"strategy options {sorted(strategy_options)} were given without a "
                        "strategy")
    strategy_config = (None if strategy is None
                       else get_strategy(strategy, **strategy_options).to_config())
    pruner_config = None if pruner is None else get_pruner(pruner).to_config()
    existed = storage != MEMORY and os.path.exists(storage)
    store = Storage(storage)
    try:
        meta = store.read_study()
        if meta is None:
            seed = int(np.random.SeedSequence().entropy) if seed is None else seed
            if strategy_config is None:
                strategy_config = get_strategy("random").to_config()
            probe = strategy_from_config(strategy_config)
            probe.bind(space, seed)  # validates the space for this strategy
            store.create_study(direction=direction or "maximize", seed=seed,
                               space=space_config, strategy=strategy_config,
                               pruner=pruner_config or get_pruner(None).to_config(),
                               n_trials=n_trials, fastnn_version=__version__)
            meta = store.read_study()
        else:
            _check_resume(store.path, meta, space_config=space_config, direction=direction,
                          seed=seed, strategy_config=strategy_config,
                          pruner_config=pruner_config)
        study = Study(store, meta)
        if n_trials is not None:
            study._set_target(n_trials)
        return study
    except BaseException:
        store.close()
        if not existed and store.path != MEMORY:  # leave no half-made file behind
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(store.path + suffix)
        raise


def load_study(path) -> Study:
    """Open the study stored in ``path`` (an SQLite file written by a search).

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        If the file is not a fastnn study.
    """
    if isinstance(path, str) and path == MEMORY:
        raise ValueError("load_study needs a file path; a ':memory:' study lives only in its "
                         "Study object")
    store = Storage(path, create=False)
    meta = store.read_study()
    if meta is None:
        store.close()
        raise ValueError(f"{path} holds no study yet")
    return Study(store, meta)
