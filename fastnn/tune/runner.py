"""Running a study's trials: inline, in a process pool, or on any ``concurrent.futures.Executor``.

The coordinator (the process that calls :func:`fastnn.tune.search`) is the only writer of the
storage. It walks the trial numbers in order; before it proposes trial ``k`` it waits until
every trial below ``study.barrier(k)`` has finished, and it keeps up to ``n_jobs`` trials in
flight. Each trial is recorded as "running", with its params and seed, before it is handed
to a worker; the worker runs the objective inside :func:`run_trial`, which turns an
exception, a NaN or a non-number into a "failed" result and :class:`TrialPruned` into a
"pruned" one, so the search goes on.

The runner knows the study only by its public methods (``trials``, ``lock``,
``set_n_trials``, ``hard_limit``, ``barrier``, ``propose``, ``start``, ``rerun``, ``tell``,
``open_trials``, ``orient``, ``save_strategy_state``) and imports nothing of it: the study
imports the runner (:meth:`Study.optimize`), not the other way round.

What does not depend on the number of workers: the params and seed of every trial (they
depend only on the study seed, the trial number and the trials below the strategy's
barrier, which the runner waits for), hence for a deterministic objective every value.
What does: pruning decisions (a trial is judged against the trials that had finished when
it started) and the order in which results arrive.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import math
import multiprocessing
import numbers
import os
import pickle
import sys
import time
import traceback

import numpy as np

from .. import _checks
from .trial import FrozenTrial, Trial, TrialPruned, format_params

__all__ = ["run", "run_trial"]

#: Thread-count variables set to 1 in the environment of the process pool's workers.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
_ERROR_CHARS = 4000  # a stored error keeps at most this many characters


# ------------------------------------------------------------------------------------------
# The worker side
# ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a worker sends back for one trial."""

    number: int
    state: str
    value: float | None
    error: str | None
    reports: dict
    duration: float


def _error_text(exc: BaseException) -> str:
    """``"ValueError: message"`` then the last frames of the traceback."""
    head = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    frames = "".join(traceback.format_tb(exc.__traceback__, limit=-3)).rstrip()
    text = f"{head}\nTraceback (last frames):\n{frames}" if frames else head
    return text[:_ERROR_CHARS]


def _as_value(raw) -> tuple[float | None, str | None]:
    """The objective's return value as a finite float, or (None, why not)."""
    if isinstance(raw, np.ndarray) and raw.ndim == 0:
        raw = raw.item()
    if isinstance(raw, bool) or not isinstance(raw, numbers.Real):
        return None, (f"TypeError: the objective returned {type(raw).__name__} {raw!r:.60}; "
                      "expected a float")
    value = float(raw)
    if not math.isfinite(value):
        return None, f"ValueError: the objective returned {value!r}"
    return value, None


def run_trial(objective, trial: Trial) -> Outcome:
    """Run ``objective(params, trial)`` and turn whatever happens into an :class:`Outcome`.

    An exception (other than KeyboardInterrupt and SystemExit) or a return value that is
    not a finite real number gives a "failed" outcome with the error text; TrialPruned
    gives "pruned". Runs in the worker; module-level so that process pools can pickle it.

    >>> run_trial(lambda params, trial: params["x"] ** 2, Trial(0, {"x": 3.0}, seed=0)).value
    9.0
    >>> run_trial(lambda params, trial: float("nan"), Trial(1, {}, seed=0)).error
    'ValueError: the objective returned nan'
    """
    start = time.perf_counter()
    try:
        raw = objective(dict(trial.params), trial)
    except TrialPruned:
        return Outcome(trial.number, "pruned", None, None, dict(trial.reports),
                       time.perf_counter() - start)
    except Exception as exc:
        return Outcome(trial.number, "failed", None, _error_text(exc), dict(trial.reports),
                       time.perf_counter() - start)
    duration = time.perf_counter() - start
    value, problem = _as_value(raw)
    state = "complete" if problem is None else "failed"
    return Outcome(trial.number, state, value, problem, dict(trial.reports), duration)


# ------------------------------------------------------------------------------------------
# Executors
# ------------------------------------------------------------------------------------------

class _Inline:
    """Runs each trial at once in this process; returns an already-finished future."""

    limit = 1

    def submit(self, fn, *args) -> cf.Future:
        future: cf.Future = cf.Future()
        future.set_result(fn(*args))  # KeyboardInterrupt propagates to the runner
        return future


@contextlib.contextmanager
def single_threaded_children():
    """Set the BLAS/OpenMP thread variables to 1 while the block runs (then restore them).

    Processes started inside the block (the pool's workers, which start with the
    environment of that moment, before NumPy loads) run their BLAS single-threaded, so
    ``n_jobs`` workers use ``n_jobs`` cores.
    """
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update({name: "1" for name in THREAD_VARIABLES})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _pool_context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("spawn" if "spawn" in methods else methods[0])


def _check_picklable(objective) -> None:
    try:
        pickle.dumps(objective)
    except Exception as exc:
        raise TypeError(
            f"with n_jobs > 1 the objective is sent to worker processes and must be picklable "
            f"(a function defined at module level, or an instance of a module-level class); "
            f"got {objective!r} ({type(exc).__name__}: {exc}). Lambdas and closures work with "
            "n_jobs=1") from None


class _Pool:
    """The runner's own process pool ("spawn" workers, one BLAS thread each), re-made if a
    worker dies."""

    def __init__(self, n_jobs: int) -> None:
        self.limit = n_jobs
        self._pool = self._new()

    def _new(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(max_workers=self.limit, mp_context=_pool_context())

    def submit(self, fn, *args) -> cf.Future:
        return self._pool.submit(fn, *args)

    def renew(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new()

    def shutdown(self, *, cancel: bool) -> None:
        """Shut the pool down; ``cancel``: also stop the workers' running trials (Ctrl-C)."""
        if cancel:
            # The executor has no public way to stop running work; without this the
            # interpreter would wait at exit for the trials in flight to finish.
            processes = getattr(self._pool, "_processes", None) or {}
            for process in list(processes.values()):
                with contextlib.suppress(Exception):
                    process.terminate()
        self._pool.shutdown(wait=not cancel, cancel_futures=cancel)


class _Foreign:
    """A caller's executor: used through ``submit`` only, never shut down."""

    def __init__(self, executor, limit: int) -> None:
        self._executor = executor
        self.limit = limit

    def submit(self, fn, *args) -> cf.Future:
        return self._executor.submit(fn, *args)


def _executor_width(executor) -> int:
    """How many trials to keep in flight on a caller's executor when n_jobs is not given."""
    width = getattr(executor, "_max_workers", None)
    if width is None:
        client = getattr(executor, "_client", None)  # dask.distributed's ClientExecutor
        try:
            width = sum(client.nthreads().values())
        except Exception:
            width = None
    return int(width) if width else (os.cpu_count() or 1)


# ------------------------------------------------------------------------------------------
# The coordinator loop
# ------------------------------------------------------------------------------------------

class _Loop:
    def __init__(self, study, objective, dispatcher, total: int, *, timeout, callbacks,
                 verbose: int, stream) -> None:
        self.study = study
        self.objective = objective
        self.dispatcher = dispatcher
        self.total = total
        self.callbacks = callbacks
        self.verbose = verbose
        self.stream = stream
        self.deadline = None if timeout is None else time.monotonic() + timeout
        trials = study.trials
        self.left_running = {t.number for t in trials if t.state == "running"}
        self.finished: dict[int, FrozenTrial] = {t.number: t for t in trials if t.finished}
        self.inflight: dict[cf.Future, Trial] = {}
        self.suspects: list[Trial] = []  # in flight when a worker died: re-run one by one
        self.isolated: int | None = None

    # -- dispatching ----------------------------------------------------------------------

    def run(self) -> None:
        for number in range(self.total):
            if number in self.finished:
                continue
            self.run_suspects()
            while len(self.inflight) >= self.dispatcher.limit:
                self.collect()
            if self.out_of_time():
                break
            if number in self.left_running:  # by an interrupted search: same params, seed
                trial = self.study.rerun(number)
            else:
                barrier = self.study.barrier(number)
                while self.unfinished_below(barrier):
                    self.run_suspects() if self.suspects else self.collect()
                trial = self.study.start(self.study.propose(number))
                if trial.number != number:
                    raise RuntimeError(f"the study numbered the new trial {trial.number}, "
                                       f"not {number}: was it written to meanwhile?")
            self.dispatch(trial)
        while self.inflight or self.suspects:
            self.run_suspects() if self.suspects else self.collect()

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def unfinished_below(self, barrier: int) -> bool:
        numbers_ = [t.number for t in self.inflight.values()] + [t.number for t in self.suspects]
        return any(n < barrier for n in numbers_)

    def dispatch(self, trial: Trial) -> None:
        try:
            future = self.dispatcher.submit(run_trial, self.objective, trial)
        except cf.BrokenExecutor as exc:  # a worker died since the last collect
            self.on_broken(None, exc, waiting=trial)
            return
        self.inflight[future] = trial

    def run_suspects(self) -> None:
        """Re-run, each alone in the pool, the trials that were in flight when a worker died:
        a trial that kills its worker when alone is recorded as failed."""
        while self.suspects:
            while self.inflight:
                self.collect()
            if not self.suspects:
                break
            trial = self.suspects.pop(0)
            self.study.rerun(trial.number)  # (the Trial keeps the pruner's first snapshot)
            trial.reports.clear()
            self.isolated = trial.number
            self.dispatch(trial)
            while self.inflight:
                self.collect()
            self.isolated = None

    # -- collecting -----------------------------------------------------------------------

    def collect(self) -> None:
        """Wait for at least one trial in flight to finish; record every finished one."""
        done, _ = cf.wait(list(self.inflight), return_when=cf.FIRST_COMPLETED)
        for future in sorted(done, key=lambda f: self.inflight[f].number):
            trial = self.inflight.pop(future, None)
            if trial is None:  # taken by on_broken
                continue
            try:
                outcome = future.result()
            except cf.BrokenExecutor as exc:
                self.on_broken(trial, exc)
                continue
            except Exception as exc:  # the executor could not run it (e.g. dask KilledWorker)
                outcome = Outcome(trial.number, "failed", None,
                                  "the executor could not run the trial: " + _error_text(exc),
                                  {}, 0.0)
            self.record(outcome)

    def on_broken(self, trial: Trial | None, exc: BaseException, *,
                  waiting: Trial | None = None) -> None:
        """A worker process died (a crash in native code, os._exit, the OOM killer).

        ``trial``: the trial whose future reported it (None if ``submit`` did, for the
        ``waiting`` trial). With the runner's own pool: make a new pool; a trial that was
        alone in flight is recorded as failed, the trials that were in flight together (and
        the one waiting) are re-run one by one to find the one that kills its worker. With a
        caller's executor: stop (the trials stay "running", so the study can be resumed).
        """
        if not isinstance(self.dispatcher, _Pool):
            raise RuntimeError(f"the executor broke ({type(exc).__name__}: {exc}); the trials "
                               "in flight stay 'running' and run again when the search is "
                               "resumed") from exc
        self.dispatcher.renew()
        if trial is not None and self.isolated == trial.number:
            self.record(Outcome(trial.number, "failed", None,
                                "the worker process died while running this trial "
                                f"({type(exc).__name__}: {exc}){_main_guard_hint(self.objective)}",
                                {}, 0.0))
            return
        suspects = [t for t in (trial, waiting) if t is not None]
        for future, other in list(self.inflight.items()):
            del self.inflight[future]
            if future.done() and not future.cancelled() and future.exception() is None:
                self.record(future.result())
            else:
                suspects.append(other)
        self.suspects = sorted(self.suspects + suspects, key=lambda t: t.number)

    def record(self, outcome: Outcome) -> None:
        frozen = self.study.tell(outcome.number, outcome.value, state=outcome.state,
                                 error=outcome.error, reports=outcome.reports,
                                 duration=outcome.duration)
        self.finished[frozen.number] = frozen
        if self.verbose:
            self.progress(frozen)
        for callback in self.callbacks:
            callback(self.study, frozen)

    def progress(self, t: FrozenTrial) -> None:
        complete = [f for f in self.finished.values() if f.state == "complete"]
        best = max(complete, key=lambda f: (self.study.orient(f.value), -f.number),
                   default=None)
        value = "-" if t.value is None else f"{t.value:.6g}"
        best_text = "" if best is None else f"  best {best.value:.6g} (#{best.number})"
        line = (f"trial {t.number:>4} {t.state:<8} {value:>10}{best_text}  "
                f"{format_params(t.params)}  {t.duration or 0.0:.2f} s")
        if t.state == "failed" and t.error:
            line += f"  [{t.error.splitlines()[0][:100]}]"
        print(line, file=self.stream, flush=True)


def _main_guard_hint(objective) -> str:
    """A hint for the commonest cause of dying workers: a script without a main guard (each
    spawned worker imports the script, and its top-level search starts again there)."""
    if getattr(objective, "__module__", None) != "__main__":
        return ""
    return ("; the objective is defined in the main script: if the script calls search with "
            "n_jobs > 1 at top level, put that call under `if __name__ == \"__main__\":` "
            "(each worker process imports the script)")


def _check_callbacks(callbacks) -> list:
    if callbacks is None:
        return []
    if callable(callbacks) or not isinstance(callbacks, (list, tuple)):
        raise TypeError("callbacks must be a list of callables callback(study, frozen_trial)")
    for i, cb in enumerate(callbacks):
        if not callable(cb):
            raise TypeError(f"callbacks[{i}] must be callable; got {cb!r}")
    return list(callbacks)


def run(study, objective, n_trials=None, *, n_jobs=None, executor=None, timeout=None,
        callbacks=None, verbose=0, stream=None) -> None:
    """Run ``study``'s missing trials (see :meth:`fastnn.tune.Study.optimize` and
    :func:`fastnn.tune.search`)."""
    if not callable(objective):
        raise TypeError(f"objective must be callable as objective(params, trial); got "
                        f"{objective!r}")
    n_jobs = None if n_jobs is None else _checks.integer("n_jobs", n_jobs, minimum=1)
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise TypeError(f"executor must be a concurrent.futures.Executor (with a submit "
                        f"method); got {type(executor).__name__}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(
            timeout, numbers.Real) or not timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds or None; got "
                         f"{timeout!r}")
    callbacks = _check_callbacks(callbacks)
    if verbose not in (0, 1):
        raise ValueError(f"verbose must be 0 or 1; got {verbose!r}")
    if study.open_trials:
        raise RuntimeError(f"trials {study.open_trials} were asked and not told yet: tell "
                           "their results before running a search on this study")
    if executor is None and (n_jobs or 1) > 1:
        _check_picklable(objective)
    with study.lock():
        total = study.set_n_trials(n_trials)
        limit = study.hard_limit()
        if limit is not None and total > limit:
            raise ValueError(f"n_trials={total} is more than the grid's {limit} points")
        if executor is not None:
            dispatcher = _Foreign(executor, n_jobs or _executor_width(executor))
            _drive(study, objective, dispatcher, total, timeout, callbacks, verbose, stream)
        elif (n_jobs or 1) == 1:
            _drive(study, objective, _Inline(), total, timeout, callbacks, verbose, stream)
        else:
            with single_threaded_children():
                pool = _Pool(n_jobs)
                try:
                    _drive(study, objective, pool, total, timeout, callbacks, verbose, stream)
                except BaseException:
                    pool.shutdown(cancel=True)
                    raise
                pool.shutdown(cancel=False)


def _drive(study, objective, dispatcher, total, timeout, callbacks, verbose, stream) -> None:
    loop = _Loop(study, objective, dispatcher, total, timeout=timeout, callbacks=callbacks,
                 verbose=verbose, stream=stream or sys.stdout)
    try:
        loop.run()
    finally:
        # On KeyboardInterrupt the trials in flight stay "running": a resume re-runs them.
        with contextlib.suppress(Exception):
            study.save_strategy_state()
