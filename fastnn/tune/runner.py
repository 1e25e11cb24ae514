"""Running a study's trials: inline, in a process pool, or on any ``concurrent.futures.Executor``.

The coordinator (the process that calls :func:`fastnn.tune.search`) is the only writer of the
storage. It walks the trial numbers in order; before it proposes trial ``k`` it waits until
every trial below ``study.barrier(k)`` has finished, and it keeps up to ``n_jobs`` trials in
flight. Each trial is recorded as "running", with its params and seed, before it is handed
to a worker; the worker runs the objective inside :func:`run_trial`, which turns an
exception, a NaN or a non-number into a "failed" result and :class:`TrialPruned` into a
"pruned" one, so the search goes on.

What a misbehaving objective gets (the study's failure states are listed in
:class:`fastnn.tune.Study`):

* a result that is not a finite float (``10**400``, NaN, a string), or any exception,
  ``SystemExit`` and (in a worker) ``KeyboardInterrupt`` included: the trial is "failed"
  with the reason. Inline, a ``KeyboardInterrupt`` stops the search (Ctrl-C), leaving the
  trial "running" for a resume.
* a trial that kills its worker process: "failed"; the runner's pool replaces the worker.
* a trial that runs longer than ``trial_timeout``: "failed"; its worker is killed and
  replaced (inline: the objective is interrupted by ``SIGALRM``).
* a trial that was running inline when the coordinator died, twice: "failed" on the next
  resume, not run a third time.
* the search's ``timeout``: the trials in flight are stopped and stay "running", so a resumed
  search runs them again with the same params and seed.

The runner's pool workers watch their coordinator and exit when it dies, whatever killed it.

The runner knows the study only by its public methods (``trials``, ``lock``,
``set_n_trials``, ``hard_limit``, ``barrier``, ``propose``, ``start``, ``rerun``,
``release``, ``tell``, ``open_trials``, ``orient``, ``save_strategy_state``) and imports
nothing of it: the study imports the runner (:meth:`Study.optimize`), not the other way round.

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
import multiprocessing.connection
import numbers
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import traceback

import numpy as np

from .. import _checks
from .trial import FrozenTrial, Trial, TrialPruned, format_params

__all__ = ["MAX_CRASHES", "run", "run_trial"]

#: Thread-count variables set to 1 in the environment of the process pool's workers.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
#: A trial left "running" by this many coordinators that died while running it inline is
#: recorded as failed on the next resume instead of run again.
MAX_CRASHES = 2
_ERROR_CHARS = 4000  # a stored error keeps at most this many characters
_PARENT_POLL = 0.2  # seconds between a worker's checks that its coordinator is alive
_STOPPED = "stopped"  # an Outcome's state for a trial the search's timeout cut short


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


class _TrialTimedOut(BaseException):
    """Raised inside an inline objective by the alarm (a BaseException, so that an objective's
    ``except Exception`` does not swallow it)."""


def _short_repr(obj) -> str:
    try:
        return f"{obj!r:.60}"
    except Exception:  # e.g. an int with more digits than str() allows
        return f"<{type(obj).__name__} object>"


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
        return None, (f"TypeError: the objective returned {type(raw).__name__} "
                      f"{_short_repr(raw)}; expected a float")
    try:
        value = float(raw)
    except Exception as exc:  # 10**400: OverflowError; a Real whose __float__ fails
        return None, (f"ValueError: the objective returned {type(raw).__name__} "
                      f"{_short_repr(raw)}, which is not a finite float "
                      f"({type(exc).__name__}: {exc})")
    if not math.isfinite(value):
        return None, f"ValueError: the objective returned {value!r}"
    return value, None


def _timed_out_text(seconds: float, where: str) -> str:
    return f"TimeoutError: the trial ran longer than trial_timeout={seconds:g} s; {where}"


def run_trial(objective, trial: Trial) -> Outcome:
    """Run ``objective(params, trial)`` and turn whatever happens into an :class:`Outcome`.

    Any exception but KeyboardInterrupt (``SystemExit`` included), or a return value that is
    not a finite real number, gives a "failed" outcome with the error text; TrialPruned gives
    "pruned". KeyboardInterrupt propagates (inline, Ctrl-C stops the search; a worker runs
    this inside :func:`_run_guarded`, which catches it too). Module-level so that process
    pools can pickle it.

    >>> run_trial(lambda params, trial: params["x"] ** 2, Trial(0, {"x": 3.0}, seed=0)).value
    9.0
    >>> run_trial(lambda params, trial: float("nan"), Trial(1, {}, seed=0)).error
    'ValueError: the objective returned nan'
    >>> run_trial(lambda params, trial: 10**400, Trial(2, {}, seed=0)).state
    'failed'
    """
    start = time.perf_counter()
    try:
        raw = objective(dict(trial.params), trial)
        state, value, error = "complete", *_as_value(raw)
    except TrialPruned:
        state, value, error = "pruned", None, None
    except (KeyboardInterrupt, _TrialTimedOut):
        raise
    except BaseException as exc:  # SystemExit, GeneratorExit, ... : the trial failed
        state, value, error = "failed", None, _error_text(exc)
    if error is not None:
        state = "failed"
    return Outcome(trial.number, state, value, error, dict(trial.reports),
                   time.perf_counter() - start)


def _run_guarded(objective, trial: Trial) -> Outcome:
    """:func:`run_trial` in a worker: a KeyboardInterrupt raised by the objective fails the
    trial like any exception (the coordinator, not the worker, decides when to stop)."""
    start = time.perf_counter()
    try:
        return run_trial(objective, trial)
    except BaseException as exc:
        return Outcome(trial.number, "failed", None, _error_text(exc), dict(trial.reports),
                       time.perf_counter() - start)


def _exit_with_parent(parent: int) -> None:
    """End this process when its parent process ``parent`` (the coordinator, or the
    executor's worker for a child trial) has gone, now or later, whatever killed it: a daemon
    thread watches. No orphan outlives a killed search."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL)
        os._exit(1)

    if os.getppid() != parent:  # it died while this process was starting
        os._exit(1)
    threading.Thread(target=watch, name="fastnn-tune-parent-watch", daemon=True).start()


def _load_objective(payload: bytes):
    """(objective, None) or (None, why it cannot be loaded in this process)."""
    try:
        return pickle.loads(payload), None
    except BaseException as exc:
        return None, "the worker could not load the objective: " + _error_text(exc)


def _serve(conn, payload: bytes, parent: int) -> None:
    """A pool worker's main loop: receive a Trial, say it started, run it, send the Outcome.

    Ignores SIGINT (Ctrl-C in a terminal reaches the whole process group; the coordinator
    stops the workers itself) and ends when the coordinator (process ``parent``) dies or
    closes the pipe.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(parent)
    objective, problem = _load_objective(payload)
    while True:
        try:
            trial = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(("started", trial.number))
        if problem is not None:
            outcome = Outcome(trial.number, "failed", None, problem, {}, 0.0)
        else:
            outcome = _run_guarded(objective, trial)
        conn.send(("done", outcome))


# -- a trial in a child process of a caller's executor's worker (with trial_timeout) --------

def _dumps_objective(objective) -> bytes:
    """The objective pickled for another process: by value with cloudpickle when it is
    installed (Dask ships ``__main__`` functions and closures that way), else by reference."""
    try:
        import cloudpickle
    except ImportError:
        return pickle.dumps(objective)
    return cloudpickle.dumps(objective)


def _child_main() -> None:
    """The child process of :func:`_run_in_child`: stdin brings (payload, trial); stdout
    carries a start byte, then the pickled Outcome (the objective's prints go to stderr)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    results = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    parent, payload, trial = pickle.loads(sys.stdin.buffer.read())
    _exit_with_parent(parent)
    objective, problem = _load_objective(payload)
    results.write(b"S")
    results.flush()
    if problem is not None:
        outcome = Outcome(trial.number, "failed", None, problem, {}, 0.0)
    else:
        outcome = _run_guarded(objective, trial)
    results.write(pickle.dumps(outcome))
    results.flush()


def _run_in_child(payload: bytes, trial: Trial, limit: float) -> Outcome:
    """Run one trial in a new Python process and kill it after ``limit`` seconds.

    What a caller's executor runs when ``trial_timeout`` is given: a thread (of a Dask
    worker, say) cannot be stopped, a process can. The limit counts from when the child has
    loaded the objective.
    """
    command = [sys.executable, "-c", "from fastnn.tune.runner import _child_main; _child_main()"]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        with contextlib.suppress(BrokenPipeError):
            child.stdin.write(pickle.dumps((os.getpid(), payload, trial)))
            child.stdin.close()
        if child.stdout.read(1) != b"S":
            return _child_died(trial, child)
        chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: chunks.append(child.stdout.read()),
                                  daemon=True)
        reader.start()
        reader.join(limit)
        if reader.is_alive():
            child.kill()
            return Outcome(trial.number, "failed", None,
                           _timed_out_text(limit, "its process was killed"), {}, limit)
        try:
            return pickle.loads(b"".join(chunks))
        except Exception:
            return _child_died(trial, child)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()


def _child_died(trial: Trial, child: subprocess.Popen) -> Outcome:
    code = child.wait()
    return Outcome(trial.number, "failed", None,
                   f"the trial's process died while running it (exit code {code})", {}, 0.0)


# ------------------------------------------------------------------------------------------
# Dispatchers: submit a trial, wait for outcomes, stop trials
# ------------------------------------------------------------------------------------------

class _Inline:
    """Runs each trial at once in this process (under an alarm when a time limit applies)."""

    limit = 1
    inline = True

    def __init__(self, trial_timeout: float | None, deadline: float | None) -> None:
        self.trial_timeout = trial_timeout
        self.deadline = deadline
        self._done: list[Outcome] = []

    def submit(self, objective, trial: Trial) -> None:
        limits = [self.trial_timeout]
        if self.deadline is not None and _alarm_possible():
            limits.append(max(self.deadline - time.monotonic(), 1e-3))
        limit = min((x for x in limits if x is not None), default=None)
        if limit is None:
            self._done.append(run_trial(objective, trial))
            return
        start = time.perf_counter()
        try:
            with _alarm(limit):
                outcome = run_trial(objective, trial)
        except _TrialTimedOut:
            if self.trial_timeout is not None and limit == self.trial_timeout:
                outcome = Outcome(trial.number, "failed", None,
                                  _timed_out_text(limit, "it was interrupted"),
                                  dict(trial.reports), time.perf_counter() - start)
            else:
                outcome = Outcome(trial.number, _STOPPED, None, None, {}, 0.0)
        self._done.append(outcome)

    def wait(self, timeout: float | None) -> list[Outcome]:
        done, self._done = self._done, []
        return done

    def started(self, number: int) -> float | None:
        return None

    def stop(self, numbers) -> None:
        """Nothing runs between calls."""

    def close(self, *, kill: bool) -> None:
        """Nothing to close."""


def _alarm_possible() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _alarm(seconds: float):
    """Raise :class:`_TrialTimedOut` in this (main) thread after ``seconds``."""
    def ring(signum, frame):
        raise _TrialTimedOut

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


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


def _pickled(objective) -> bytes:
    try:
        return pickle.dumps(objective)
    except Exception as exc:
        raise TypeError(
            f"with n_jobs > 1 the objective is sent to worker processes and must be picklable "
            f"(a function defined at module level, or an instance of a module-level class); "
            f"got {objective!r} ({type(exc).__name__}: {exc}). Lambdas and closures work with "
            "n_jobs=1") from None


class _Worker:
    """One process of the runner's pool and the pipe the coordinator talks to it through."""

    def __init__(self, context, payload: bytes) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, payload, os.getpid()),
                                       daemon=True, name="fastnn-tune-worker")
        self.process.start()
        child.close()
        self.trial: Trial | None = None
        self.started: float | None = None  # when the worker said it started the trial

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
        self.process.join(5)
        self.conn.close()


class _Pool:
    """The runner's own process pool: "spawn" workers, one BLAS thread each, that exit when the
    coordinator dies. A worker that dies, or is killed at its trial's time limit, fails exactly
    the trial it was running and is replaced."""

    inline = False

    def __init__(self, n_jobs: int, objective, hint: str = "") -> None:
        self.limit = n_jobs
        self._payload = _pickled(objective)
        self._context = _pool_context()
        self._hint = hint
        self._idle: list[_Worker] = []
        self._busy: dict[int, _Worker] = {}

    def submit(self, objective, trial: Trial) -> None:
        worker = self._idle.pop() if self._idle else _Worker(self._context, self._payload)
        worker.trial, worker.started = trial, None
        self._busy[trial.number] = worker
        try:
            worker.conn.send(trial)
        except OSError:  # it died before reading: wait() reports it by its sentinel
            pass

    def started(self, number: int) -> float | None:
        return self._busy[number].started

    def wait(self, timeout: float | None) -> list[Outcome]:
        """The outcomes that arrive within ``timeout`` seconds (at least one if any trial is
        in flight and ``timeout`` is None)."""
        workers = list(self._busy.values())
        if not workers:
            return []
        waitables = [w.conn for w in workers] + [w.process.sentinel for w in workers]
        ready = set(multiprocessing.connection.wait(waitables, timeout))
        outcomes = []
        for worker in workers:
            if worker.conn in ready or worker.process.sentinel in ready:
                outcome = self._read(worker)
                if outcome is not None:
                    outcomes.append(outcome)
        return outcomes

    def _read(self, worker: _Worker) -> Outcome | None:
        """The worker's news: None (it started its trial), or its trial's Outcome."""
        try:
            while worker.conn.poll():
                kind, message = worker.conn.recv()
                if kind == "started":
                    worker.started = time.monotonic()
                    continue
                del self._busy[worker.trial.number]
                self._idle.append(worker)
                return message
        except (EOFError, OSError):
            pass
        if worker.process.is_alive():
            return None
        return self._died(worker)

    def _died(self, worker: _Worker) -> Outcome:
        trial = worker.trial
        del self._busy[trial.number]
        worker.kill()
        return Outcome(trial.number, "failed", None,
                       f"the worker process died while running this trial (exit code "
                       f"{worker.process.exitcode}){self._hint}", dict(trial.reports), 0.0)

    def stop(self, numbers) -> None:
        """Kill the workers running these trials (new workers start when needed)."""
        for number in numbers:
            self._busy.pop(number).kill()

    def close(self, *, kill: bool) -> None:
        """End every worker: ``kill`` at once (Ctrl-C, an error), else let idle ones exit."""
        self.stop(list(self._busy))
        for worker in self._idle:
            worker.conn.close()  # the worker's recv ends: it exits
        for worker in self._idle:
            if kill:
                worker.kill()
            else:
                worker.process.join(5)
                worker.kill()
        self._idle = []


class _Foreign:
    """A caller's executor: used through ``submit`` only, never shut down. With
    ``trial_timeout``, each trial runs in a child process of the executor's worker, killed at
    the limit."""

    inline = False

    def __init__(self, executor, limit: int, trial_timeout: float | None, objective) -> None:
        self._executor = executor
        self.limit = limit
        self._trial_timeout = trial_timeout
        self._payload = None if trial_timeout is None else _dumps_objective(objective)
        self._futures: dict[int, tuple[cf.Future, Trial]] = {}

    def submit(self, objective, trial: Trial) -> None:
        if self._trial_timeout is None:
            future = self._executor.submit(_run_guarded, objective, trial)
        else:
            future = self._executor.submit(_run_in_child, self._payload, trial,
                                           self._trial_timeout)
        self._futures[trial.number] = (future, trial)

    def started(self, number: int) -> float | None:
        return None

    def wait(self, timeout: float | None) -> list[Outcome]:
        futures = {future: trial for future, trial in self._futures.values()}
        done, _ = cf.wait(list(futures), timeout=timeout, return_when=cf.FIRST_COMPLETED)
        outcomes = []
        for future in sorted(done, key=lambda f: futures[f].number):
            trial = futures[future]
            del self._futures[trial.number]
            try:
                outcomes.append(future.result())
            except cf.BrokenExecutor as exc:
                raise RuntimeError(f"the executor broke ({type(exc).__name__}: {exc}); the "
                                   "trials in flight stay 'running' and run again when the "
                                   "search is resumed") from exc
            except Exception as exc:  # it could not run the trial (e.g. dask KilledWorker)
                outcomes.append(Outcome(trial.number, "failed", None,
                                        "the executor could not run the trial: "
                                        + _error_text(exc), {}, 0.0))
        return outcomes

    def stop(self, numbers) -> None:
        """Cancel these trials' futures (a trial already running on a thread runs on, unless
        it runs in a child process, which its own limit kills)."""
        for number in numbers:
            self._futures.pop(number)[0].cancel()

    def close(self, *, kill: bool) -> None:
        self.stop(list(self._futures))


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
    def __init__(self, study, objective, dispatcher, total: int, *, deadline, trial_timeout,
                 callbacks, verbose: int, stream) -> None:
        self.study = study
        self.objective = objective
        self.dispatcher = dispatcher
        self.total = total
        self.callbacks = callbacks
        self.verbose = verbose
        self.stream = stream
        self.deadline = deadline
        self.trial_timeout = trial_timeout
        trials = study.trials
        self.left_running = {t.number: t for t in trials if t.state == "running"}
        self.finished: dict[int, FrozenTrial] = {t.number: t for t in trials if t.finished}
        self.inflight: dict[int, Trial] = {}

    # -- dispatching ----------------------------------------------------------------------

    def run(self) -> None:
        self.fail_crashed()
        for number in range(self.total):
            if number in self.finished:
                continue
            while len(self.inflight) >= self.dispatcher.limit and not self.out_of_time():
                self.collect()
            if self.out_of_time():
                break
            if number in self.left_running:  # by an interrupted search: same params, seed
                trial = self.study.rerun(number, inline=self.dispatcher.inline)
            else:
                barrier = self.study.barrier(number)
                while self.unfinished_below(barrier) and not self.out_of_time():
                    self.collect()
                if self.out_of_time():
                    break
                trial = self.study.start(self.study.propose(number),
                                         inline=self.dispatcher.inline)
                if trial.number != number:
                    raise RuntimeError(f"the study numbered the new trial {trial.number}, "
                                       f"not {number}: was it written to meanwhile?")
            self.dispatch(trial)
        while self.inflight and not self.out_of_time():
            self.collect()
        if self.inflight:  # the search's time is up: record what has arrived, stop the rest
            self.collect()
            self.dispatcher.stop(list(self.inflight))  # they stay "running"
            self.inflight.clear()

    def fail_crashed(self) -> None:
        """Record as failed the running trials that coordinators died running inline
        MAX_CRASHES times (a resume would run them in the coordinator again)."""
        for number, t in sorted(self.left_running.items()):
            if t.crashes >= MAX_CRASHES:
                self.record(Outcome(
                    number, "failed", None,
                    f"the coordinator process died {t.crashes} times while running this trial "
                    f"inline (attempts: {t.attempts}); it is not run again. Run the search with "
                    "n_jobs=2 to run trials in worker processes", dict(t.reports), 0.0))
                del self.left_running[number]

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def unfinished_below(self, barrier: int) -> bool:
        return any(n < barrier for n in self.inflight)

    def dispatch(self, trial: Trial) -> None:
        self.inflight[trial.number] = trial
        if not self.dispatcher.inline:
            self.dispatcher.submit(self.objective, trial)
            return
        try:
            self.dispatcher.submit(self.objective, trial)
        finally:  # this process outlived the trial (KeyboardInterrupt included)
            self.study.release(trial.number)

    # -- collecting -----------------------------------------------------------------------

    def collect(self) -> None:
        """Wait for a trial in flight to finish or reach a time limit, or for the search's
        deadline; record every trial that finished."""
        for outcome in self.dispatcher.wait(self.wait_time()):
            del self.inflight[outcome.number]
            if outcome.state != _STOPPED:
                self.record(outcome)
        if self.trial_timeout is not None:
            self.stop_overdue()

    def wait_time(self) -> float | None:
        """Seconds until the next time limit (a trial's or the search's), or None."""
        limits = [] if self.deadline is None else [self.deadline]
        if self.trial_timeout is not None:
            starts = [self.dispatcher.started(n) for n in self.inflight]
            limits += [start + self.trial_timeout for start in starts if start is not None]
        return None if not limits else max(0.0, min(limits) - time.monotonic())

    def stop_overdue(self) -> None:
        now = time.monotonic()
        for number in sorted(self.inflight):
            start = self.dispatcher.started(number)
            if start is not None and now - start >= self.trial_timeout:
                trial = self.inflight.pop(number)
                self.dispatcher.stop([number])
                self.record(Outcome(number, "failed", None, _timed_out_text(
                    self.trial_timeout, "its worker process was killed and replaced"),
                    dict(trial.reports), now - start))

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


def _check_seconds(name: str, value) -> float | None:
    """None, or a positive finite number of seconds."""
    if value is None:
        return None
    return _checks.real(name, value, 0.0, math.inf, low_open=True, high_open=True)


def _dispatcher(objective, n_jobs, executor, trial_timeout, deadline):
    if executor is not None:
        return _Foreign(executor, n_jobs or _executor_width(executor), trial_timeout, objective)
    if (n_jobs or 1) == 1:
        if trial_timeout is not None and not _alarm_possible():
            raise ValueError("trial_timeout with n_jobs=1 interrupts the objective with "
                             "SIGALRM, which needs the main thread of a POSIX system; use "
                             "n_jobs=2 to run trials in worker processes")
        return _Inline(trial_timeout, deadline)
    return _Pool(n_jobs, objective, _main_guard_hint(objective))


def run(study, objective, n_trials=None, *, n_jobs=None, executor=None, timeout=None,
        trial_timeout=None, callbacks=None, verbose=0, stream=None) -> None:
    """Run ``study``'s missing trials (see :meth:`fastnn.tune.Study.optimize` and
    :func:`fastnn.tune.search`)."""
    if not callable(objective):
        raise TypeError(f"objective must be callable as objective(params, trial); got "
                        f"{objective!r}")
    n_jobs = None if n_jobs is None else _checks.integer("n_jobs", n_jobs, minimum=1)
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise TypeError(f"executor must be a concurrent.futures.Executor (with a submit "
                        f"method); got {type(executor).__name__}")
    timeout = _check_seconds("timeout", timeout)
    trial_timeout = _check_seconds("trial_timeout", trial_timeout)
    callbacks = _check_callbacks(callbacks)
    if verbose not in (0, 1):
        raise ValueError(f"verbose must be 0 or 1; got {verbose!r}")
    if study.open_trials:
        raise RuntimeError(f"trials {study.open_trials} were asked and not told yet: tell "
                           "their results before running a search on this study")
    deadline = None if timeout is None else time.monotonic() + timeout
    dispatcher = _dispatcher(objective, n_jobs, executor, trial_timeout, deadline)
    pooled = isinstance(dispatcher, _Pool)
    with study.lock(), single_threaded_children() if pooled else contextlib.nullcontext():
        total = study.set_n_trials(n_trials)
        limit = study.hard_limit()
        if limit is not None and total > limit:
            raise ValueError(f"n_trials={total} is more than the grid's {limit} points")
        _drive(study, objective, dispatcher, total, deadline, trial_timeout, callbacks,
               verbose, stream)


def _drive(study, objective, dispatcher, total, deadline, trial_timeout, callbacks, verbose,
           stream) -> None:
    loop = _Loop(study, objective, dispatcher, total, deadline=deadline,
                 trial_timeout=trial_timeout, callbacks=callbacks, verbose=verbose,
                 stream=stream or sys.stdout)
    killed = True
    try:
        loop.run()
        killed = False
    finally:
        # On KeyboardInterrupt the trials in flight stay "running": a resume re-runs them.
        dispatcher.close(kill=killed)
        with contextlib.suppress(Exception):
            study.save_strategy_state()
