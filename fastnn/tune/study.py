"""A study: its trials, the best one, hand-driven trials (``ask`` / ``tell``) and
:func:`search`.

A :class:`Study` is a view of one SQLite storage (see :mod:`fastnn.tune.storage`): its
metadata (direction, seed, space, strategy, pruner, number of trials) and one row per trial.
The objective of a search receives a :class:`~fastnn.tune.trial.Trial`, a small picklable
handle that travels to the worker; what the coordinator keeps is a
:class:`~fastnn.tune.trial.FrozenTrial`, read from the storage. Every trial's seed comes from
the study seed and the trial number (:func:`~fastnn.tune.trial.trial_seed`), so the same study
gives every trial the same seed wherever and whenever it runs.

The runner (:mod:`fastnn.tune.runner`) drives a search through the Study's public methods
only: :meth:`Study.propose` and :meth:`Study.start` (what :meth:`Study.ask` does in two
steps), :meth:`Study.rerun` for trials an interrupted search left running,
:meth:`Study.release` after an inline trial, :meth:`Study.barrier`, :meth:`Study.tell`,
:meth:`Study.lock`.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import numbers
import os
from collections.abc import Mapping

import numpy as np

from .. import _checks
from .._version import __version__
from .pruners import NopPruner, get_pruner, pruner_from_config
from .runner import run
from .space import Choice, Distribution, check_space, space_from_config, space_to_config
from .storage import FINISHED, MEMORY, STATES, Storage, dumps
from .strategies import Finished, Grid, get_strategy, strategy_from_config
from .trial import (
    FrozenTrial,
    Trial,
    TrialPruned,
    _parse_time,
    format_params,
    trial_seed,
)

__all__ = ["FrozenTrial", "Study", "Trial", "TrialPruned", "create_study", "load_study",
           "search", "trial_seed"]

DIRECTIONS = ("maximize", "minimize")


def _check_direction(direction) -> str:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'maximize' or 'minimize'; got {direction!r}")
    return direction


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


def _acquire(fcntl, path: str, storage: str) -> int:
    """Lock file ``path`` (created if missing) for this process; returns its descriptor.

    A holder removes the file before it unlocks, so a descriptor locked here may belong to a
    file that is gone (opened before that removal, locked after the unlock): the lock counts
    only if ``path`` still names the locked file; otherwise take the new file.

    Raises
    ------
    RuntimeError
        If another process holds the lock.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise RuntimeError(f"another process (pid {holder}) is running a search on "
                               f"{storage}; a study has one coordinator at a time") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)


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

    Notes
    -----
    A trial's ``state`` and, for a failed one, its ``error``:

    ``"running"``
        Recorded before the trial is dispatched. A search that ends early (Ctrl-C, a kill of
        the coordinator, the search's ``timeout``) leaves its trials in flight running; a
        search resumed on the same storage runs them again with the same params and seed,
        except a trial that coordinators died running inline twice (``crashes >= 2``: the
        trial itself probably kills the process), which is recorded as failed instead.
    ``"complete"``
        The objective returned a finite real number, stored as ``value``.
    ``"pruned"``
        The objective raised :class:`TrialPruned`.
    ``"failed"``, with ``error`` saying why:
        the objective raised (``"ValueError: ..."`` and the last traceback frames;
        ``SystemExit`` included, and ``KeyboardInterrupt`` raised in a worker); it returned
        something that is not a finite float (``"TypeError: the objective returned str
        ..."``, ``"ValueError: the objective returned nan"``, ``10**400`` which overflows a
        float); its worker process died (``"the worker process died while running this
        trial (exit code ...)"``); it ran past ``trial_timeout`` (``"TimeoutError: the trial
        ran longer than trial_timeout=..."``, its worker killed and replaced); coordinators
        died running it inline twice (``"the coordinator process died 2 times ..."``); the
        executor could not run it (``"the executor could not run the trial: ..."``).

    Inline, a ``KeyboardInterrupt`` stops the search (the trial stays running). Pool
    workers ignore Ctrl-C (the coordinator stops them) and exit when the coordinator dies.
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
        self._locks = 0  # how many lock() blocks of this object are open (it is reentrant)
        # The finished trials seen so far (a finished record never changes) and the pruner's
        # view of them, refreshed from the rows not yet seen finished (see _finished): a
        # search reads each row about once, not once per trial.
        self._done: dict[int, FrozenTrial] = {}
        self._peer_values: dict[int, list[float]] = {}
        self._seen = 0  # every row numbered below this has been read
        self._unfinished: set[int] = set()  # rows below _seen that were running when read

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

    # -- what the strategy and the pruner see ---------------------------------------------------

    def _history(self, finished: dict[int, FrozenTrial], barrier: int) -> list[Finished]:
        """What the strategy sees: finished trials below ``barrier`` (not resume_trial's)."""
        return [Finished(number=n, params=dict(finished[n].params),
                         score=(self.orient(finished[n].value)
                                if finished[n].state == "complete" else None))
                for n in sorted(k for k in finished if k < barrier)
                if finished[n].parent is None]

    def _finished(self) -> dict[int, FrozenTrial]:
        """Every finished trial, by number: the cache, brought up to date with the rows it has
        not seen finished (new rows, and rows that were running when last read)."""
        for row in self._storage.trial_rows(start=self._seen, numbers=sorted(self._unfinished)):
            number = row["number"]
            self._seen = max(self._seen, number + 1)
            if row["state"] in FINISHED:
                self._remember(FrozenTrial.from_row(row))
            else:
                self._unfinished.add(number)
        return self._done

    def _remember(self, trial: FrozenTrial) -> None:
        """Add a finished trial to the cache; its reports join the pruner's peers if the
        pruner should see them (complete and pruned trials, not resume_trial's)."""
        if trial.number in self._done:
            return
        self._done[trial.number] = trial
        self._unfinished.discard(trial.number)
        if trial.state in ("complete", "pruned") and trial.parent is None \
                and not isinstance(self.pruner, NopPruner):
            for step, value in sorted(trial.reports.items()):
                self._peer_values.setdefault(step, []).append(self.orient(value))

    def _make_trial(self, number: int, params: dict, seed: int) -> Trial:
        """The Trial to run, with a snapshot (a copy) of the pruner's peers as of now."""
        self._finished()
        return Trial(number, params, seed, direction=self.direction, pruner=self.pruner,
                     peers={step: list(values) for step, values in self._peer_values.items()})

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

    def set_n_trials(self, n_trials: int | None) -> int:
        """Resolve and store the study's total number of trials; returns it.

        ``None`` keeps the stored number, or takes the strategy's natural size (a grid's
        points). The first total >= 1 also sizes the strategy (its budget), for good.
        """
        if n_trials is not None:
            n_trials = _checks.integer("n_trials", n_trials, minimum=0)
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

    def save_strategy_state(self) -> dict:
        """Store :meth:`describe` as :attr:`strategy_state` (a search does at its end)."""
        state = self.describe()
        self._storage.update_study(strategy_state=state)
        self._strategy_state = state
        return state

    def trial(self, number: int) -> FrozenTrial:
        """Trial ``number`` as recorded now.

        Raises
        ------
        ValueError
            If the study has no such trial.
        """
        row = self._storage.trial_row(number)
        if row is not None:
            return FrozenTrial.from_row(row)
        raise ValueError(f"the study has no trial {number} (it has "
                         f"{self._storage.next_number()} trials)")

    @contextlib.contextmanager
    def lock(self):
        """Hold the study's lock file while the block runs: one coordinator at a time writes a
        storage file (a search holds it throughout; ask and tell take it briefly).

        The lock file is ``<file>.lock`` beside the file the storage path resolves to (through
        symbolic links, so two paths to one file share one lock); it is removed when the lock
        is released, and a stale one left by a killed process is taken over. Reentrant for
        this Study object. A ":memory:" study, or a system without ``fcntl``, has no lock.

        Raises
        ------
        RuntimeError
            If another process holds it.
        """
        if self._locks or self.storage == MEMORY:
            self._locks += 1
            try:
                yield
            finally:
                self._locks -= 1
            return
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock (documented)
            yield
            return
        path = os.path.realpath(self.storage) + ".lock"
        fd = _acquire(fcntl, path, self.storage)
        self._locks += 1
        try:
            yield
        finally:
            self._locks -= 1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # while still holding it: see _acquire
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # -- trials: ask and tell by hand ("panda"), and the steps a runner takes ------------------

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
        ``ask()`` is :meth:`propose` then :meth:`start`. A hand-given trial takes the next
        number like any other, so in a grid study the grid point of that number is not
        tried. Trials left "running" by a session that ended can be told by number, or
        re-run by :meth:`optimize`.
        """
        with self.lock():
            params = self.propose() if params is None else check_params(self.space, params)
            trial = self.start(params)
            self._open[trial.number] = trial
            return trial

    @property
    def open_trials(self) -> list[int]:
        """The numbers of the trials asked here by :meth:`ask` and not told yet."""
        return sorted(self._open)

    def barrier(self, number: int) -> int:
        """The params of trial ``number`` follow from the finished trials numbered below this
        (the strategy's barrier): a runner waits for them before it proposes the trial."""
        return self.strategy.barrier(number)

    def propose(self, number: int | None = None) -> dict:
        """The strategy's params for trial ``number`` (default: the next trial).

        Raises
        ------
        ValueError
            If ``number`` is past the end of a grid.
        RuntimeError
            If trials below the strategy's :meth:`barrier` are still running.
        """
        with self.lock():
            finished = self._finished()
            if number is None:
                number = self._storage.next_number()
            self._check_natural_size(number)
            barrier = self.strategy.barrier(number)
            waiting = [n for n in range(barrier) if n not in finished]
            if waiting:
                raise RuntimeError(
                    f"the {self.strategy.name} strategy proposes trial {number} from the "
                    f"results of trials 0..{barrier - 1}; trials {waiting} are still "
                    "running: tell their results first")
            return self.strategy.propose(number, self._history(finished, barrier))

    def start(self, params: dict, *, parent: int | None = None,
              inline: bool = False) -> Trial:
        """Record the next trial as "running" with ``params`` and return the Trial to run.

        ``params`` are taken as given (a proposal, or hand-given values :meth:`ask` has
        checked); the trial's seed follows from its number. ``parent``: the trial that
        :func:`~fastnn.tune.resume_trial` continues (such a trial has no pruner).
        ``inline``: the trial will run in this process, which calls :meth:`release` when it
        ends (until then the attempt counts in :attr:`FrozenTrial.crashes`).
        """
        with self.lock():
            number = self._storage.next_number()
            seed = trial_seed(self.seed, number)
            self._storage.insert_running(number, params, seed, parent=parent, inline=inline)
            if parent is not None:
                return Trial(number, params, seed, direction=self.direction)
            return self._make_trial(number, params, seed)

    def rerun(self, number: int, *, inline: bool = False) -> Trial:
        """Start again trial ``number``, left "running" by a search that was interrupted (or
        whose worker died): same params and seed, its reports cleared, one more attempt.
        ``inline`` as for :meth:`start`.

        Raises
        ------
        ValueError
            If there is no such trial, or it is not running.
        """
        with self.lock():
            current = self.trial(number)
            if current.state != "running":
                raise ValueError(f"trial {number} is {current.state}, not running: only a "
                                 "running trial can run again")
            self._storage.restart_running(number, inline=inline)
            return self._make_trial(number, current.params, current.seed)

    def release(self, number: int) -> None:
        """Trial ``number``, started with ``inline=True``, ended in this process (however it
        ended, Ctrl-C included): its attempt no longer counts as a crash of the coordinator."""
        with self.lock():
            self._storage.release(number)

    def tell(self, trial: Trial | int, value: float | None = None, *, state: str = "complete",
             error: str | None = None, reports: dict | None = None,
             duration: float | None = None) -> FrozenTrial:
        """Record the result of a running trial (asked here, or left running by number).

        Parameters
        ----------
        trial : Trial or int
            The trial from :meth:`ask` (or :meth:`start`), or a running trial's number.
        value : float, optional
            The objective's value; required for ``state="complete"``, not allowed otherwise.
            A NaN or infinite value records the trial as "failed", as a search does.
        state : "complete", "failed" or "pruned"
        error : str, optional
            For a failed trial: what went wrong.
        reports : dict, optional
            ``step -> value``; default: those made on the Trial object (a runner passes the
            ones its worker made).
        duration : float, optional
            Seconds the objective ran; default: the time since the trial started.

        Returns
        -------
        FrozenTrial
            The trial as recorded.
        """
        if isinstance(trial, Trial):
            number, live = trial.number, trial
        else:
            number = _checks.integer("trial", trial, minimum=0)
            live = self._open.get(number)
        if reports is None:
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
        with self.lock():
            current = self.trial(number)
            if current.state != "running":
                raise ValueError(f"trial {number} is {current.state}, not running: it was "
                                 "told already")
            if duration is None and current.datetime_start is not None:
                elapsed = datetime.datetime.now(datetime.timezone.utc) - current.datetime_start
                duration = elapsed.total_seconds()
            self._storage.finish(number, state=state, value=value, reports=reports,
                                 error=error, duration=duration)
            self._open.pop(number, None)
            frozen = self.trial(number)
            self._remember(frozen)
            return frozen

    # -- running -------------------------------------------------------------------------------

    def optimize(self, objective, n_trials: int | None = None, *, n_jobs: int | None = None,
                 executor=None, timeout: float | None = None,
                 trial_timeout: float | None = None, callbacks=None,
                 verbose: int = 0) -> Study:
        """Run trials until the study has ``n_trials`` finished trials in total.

        See :func:`fastnn.tune.search` for the arguments. ``n_trials`` counts every trial of
        the study, including those finished before (it is a total, not a number to add);
        trials left "running" by an interrupted search are run again with the same params
        and seed.
        """
        run(self, objective, n_trials, n_jobs=n_jobs, executor=executor, timeout=timeout,
            trial_timeout=trial_timeout, callbacks=callbacks, verbose=verbose)
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
            ranked = ranked[:_checks.integer("top", top, minimum=1)]
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


# ------------------------------------------------------------------------------------------
# Creating and loading
# ------------------------------------------------------------------------------------------

def _check_seed(seed) -> int | None:
    return None if seed is None else _checks.integer("seed", seed, minimum=0)


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
        n_trials = _checks.integer("n_trials", n_trials, minimum=0)
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
            study.set_n_trials(n_trials)
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


# ------------------------------------------------------------------------------------------
# Searching
# ------------------------------------------------------------------------------------------

def search(objective, space: dict, strategy=None, n_trials: int | None = None,
           n_jobs: int | None = None, executor=None, storage=MEMORY, seed: int | None = None,
           direction: str | None = None, pruner=None, *, timeout: float | None = None,
           trial_timeout: float | None = None, callbacks=None, verbose: int = 0,
           **strategy_options) -> Study:
    """Search ``space`` for the parameters that optimize ``objective``.

    Parameters
    ----------
    objective : callable
        ``objective(params, trial) -> float``: ``params`` is a dict of values, ``trial``
        has ``.number``, ``.seed`` (seed the trial's randomness with it), ``.report(value,
        step)`` and ``.should_prune()``. Raising :class:`TrialPruned` records the trial as
        pruned; raising anything else (``SystemExit`` included, and ``KeyboardInterrupt``
        in a worker), returning something that is not a finite float (NaN, ``10**400``, a
        string), killing its worker or running past ``trial_timeout`` records it as failed
        with the reason, and the search goes on (see :class:`Study` for every state).
    space : dict
        Name -> distribution (:class:`LogUniform` for a learning rate,
        :class:`OneMinusLogUniform` for β, ...) or a constant.
    strategy : str or Strategy, optional
        "grid", "random", "coarse_to_fine", "bayes" or "staged" (options for it as keyword
        arguments, e.g. ``rounds=3``), or a Strategy instance. Default "random" (or, when
        resuming, the stored one).
    n_trials : int, optional
        The study's TOTAL number of trials. When ``storage`` already holds the study, only
        the missing trials run (a study with 20 finished trials and ``n_trials=30`` runs 10
        more). Default: the strategy's natural size (a grid's number of points), or the
        stored number.
    n_jobs : int, optional
        Trials in flight at once. Without ``executor``: 1 (the default) runs each trial
        inline in this process, so lambdas and closures work; more starts a process pool of
        that size ("spawn" workers, BLAS and OpenMP limited to one thread each; the
        objective must be picklable: a module-level function). With ``executor``: default
        the executor's number of workers.
    executor : concurrent.futures.Executor, optional
        Runs the trials through its ``submit``, e.g. a Dask cluster's
        ``client.get_executor()``. It is not shut down.
    storage : ":memory:" or path
        An SQLite file: every trial is recorded there as it starts and ends, and a search
        started again on the same file (after a crash, a kill or Ctrl-C) resumes: finished
        trials are kept, trials left running run again with the same params and seed.
    seed : int, optional
        The study seed; every trial's params and seed follow from it. Default: fresh entropy,
        stored with the study.
    direction : "maximize" or "minimize", optional
        Default "maximize" (or the stored one).
    pruner : "median", "halving", Pruner or None
        Stops unpromising trials from their ``trial.report`` values.
    timeout : float, optional
        Seconds the whole search may take, the trials in flight included: at the limit no
        new trial starts and those in flight are stopped (their workers killed; inline, the
        objective is interrupted by ``SIGALRM`` when the search runs in the main thread of a
        POSIX system, otherwise the inline trial finishes). Stopped trials stay "running",
        so a search resumed on the same storage runs them again with the same params and
        seed.
    trial_timeout : float, optional
        Seconds one trial may run; a trial that runs longer is recorded as "failed" with a
        ``TimeoutError`` and the search goes on. With ``n_jobs > 1`` its worker process is
        killed and replaced (the limit counts from when the worker starts the trial). With
        ``executor``, each trial runs in a child process of the executor's worker, killed at
        the limit (the objective is sent there with cloudpickle when installed; a new
        process per trial costs about as much as importing fastnn). Inline (``n_jobs=1``),
        the objective is interrupted by ``SIGALRM``, which needs the main thread of a POSIX
        system, and code that does not return to Python (a long native call) is interrupted
        only when it returns: use ``n_jobs=2`` for a hard limit.
    callbacks : list of callables, optional
        ``callback(study, frozen_trial)`` after each trial is recorded.
    verbose : 0 or 1
        1 prints one line per finished trial.

    Returns
    -------
    Study

    Raises
    ------
    ValueError, TypeError
        On a bad argument, or if ``storage`` holds a study with another space, direction,
        seed, strategy or pruner.
    KeyboardInterrupt
        Re-raised after the search stops dispatching; running trials stay "running" in the
        storage and run again when the search is resumed.

    Notes
    -----
    The same study seed gives the same trials (params and seeds) whatever ``n_jobs`` or
    executor: a proposal depends only on the seed, the trial number and the trials below
    the strategy's barrier, which the runner waits for. That holds for every strategy; for
    "bayes" the Gaussian process is fitted in this process, so the proposals are the same
    up to floating-point differences between machines. Pruning decisions depend on which
    trials had finished when a trial started, so with ``n_jobs > 1`` they can differ.

    Examples
    --------
    >>> from fastnn import tune
    >>> study = tune.search(lambda p, t: -(p["x"] - 0.3) ** 2, {"x": tune.Uniform(0, 1)},
    ...                     n_trials=20, seed=0)
    >>> abs(study.best_params["x"] - 0.3) < 0.1
    True
    """
    if not callable(objective):
        raise TypeError(f"objective must be callable as objective(params, trial); got "
                        f"{objective!r}")
    if n_jobs is not None:
        _checks.integer("n_jobs", n_jobs, minimum=1)
    if n_trials is not None:
        _checks.integer("n_trials", n_trials, minimum=0)
    study = create_study(space, strategy, storage=storage, seed=seed, direction=direction,
                         pruner=pruner, n_trials=n_trials, **strategy_options)
    study.optimize(objective, n_trials, n_jobs=n_jobs, executor=executor, timeout=timeout,
                   trial_timeout=trial_timeout, callbacks=callbacks, verbose=verbose)
    return study
