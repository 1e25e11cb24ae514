"""fastnn.tune against hostile objectives (issue 14, holes 3-7): results that are not floats,
SystemExit and KeyboardInterrupt in workers, trials that never return, a coordinator killed
with SIGKILL (no worker may outlive it) or killed twice by the same trial, two searches on one
study through a symbolic link, and the lock and temporary files a study leaves behind.

Whatever can hang or kill runs in a subprocess with a timeout; its objectives are defined in
the script (spawned workers import it, Dask pickles them by value)."""

from __future__ import annotations

import contextlib
import fractions
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest

from fastnn import tune
from fastnn.tune.storage import Storage

SPACE = {"x": tune.Uniform(0.0, 1.0)}
NEVER = 3600.0  # seconds a hanging objective sleeps

HEADER = f"""\
import json, os, signal, sys, time
from fastnn import tune

SPACE = {{"x": tune.Uniform(0.0, 1.0)}}
NEVER = {NEVER}

def quick(params, trial):
    return params["x"]

def hangs_at_1(params, trial):
    if trial.number == 1:
        time.sleep(NEVER)
    return params["x"]

def hangs(params, trial):
    time.sleep(NEVER)

def big_at_1(params, trial):
    return 10**400 if trial.number == 1 else params["x"]

def exits(params, trial):
    if trial.number == 1:
        sys.exit(3)
    if trial.number == 2:
        raise KeyboardInterrupt("from the objective")
    return params["x"]

def kills_the_coordinator_at_2(params, trial):
    if trial.number == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return params["x"]

def dump(study):
    print(json.dumps([{{"state": t.state, "error": t.error, "attempts": t.attempts,
                        "crashes": t.crashes, "params": t.params, "seed": t.seed}}
                      for t in study.trials]))

"""


def _script(tmp_path, body: str, name: str = "search.py"):
    script = tmp_path / name
    script.write_text(HEADER + 'if __name__ == "__main__":\n' + textwrap.indent(
        textwrap.dedent(body), "    "))
    return script


def _run(tmp_path, body: str, *, timeout: float = 120) -> list[dict]:
    """Run the script's body to its end; the trials it printed last with dump()."""
    return _run_all(tmp_path, body, timeout=timeout)[-1]


def _run_all(tmp_path, body: str, *, timeout: float = 120) -> list[list[dict]]:
    """Run the script's body to its end; every list of trials it printed with dump()."""
    done = subprocess.run([sys.executable, str(_script(tmp_path, body))], cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("[")]


def _rows(path) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn:
        return conn.execute("SELECT number, state, attempts, crashes FROM trials "
                            "ORDER BY number").fetchall()


def _wait_until(predicate, process, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()
        try:
            if predicate():
                return
        except sqlite3.OperationalError:  # the tables are not there yet
            pass
        time.sleep(0.05)
    raise AssertionError("the search did not get there in time")


def _survivors(processes, grace: float = 5.0) -> list:
    """The processes still alive (not zombies) after ``grace`` seconds."""
    deadline = time.monotonic() + grace
    while True:
        alive = []
        for p in processes:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------
# Hole 3: results that are not finite floats
# ------------------------------------------------------------------------------------------

class _BadReal(float):
    """A real number whose conversion to float fails."""

    def __float__(self):
        raise ArithmeticError("no float for you")


@pytest.mark.parametrize("returned, message", [
    (10**400, "the objective returned int 1000000000"),
    (-(10**400), "OverflowError"),
    (10**5000, "the objective returned int <int object>"),  # too long even to print
    (fractions.Fraction(10**400, 3), "the objective returned Fraction"),
    (_BadReal(1.0), "ArithmeticError: no float for you"),
    (np.array([1.0, 2.0]), "TypeError: the objective returned ndarray"),
    (1 + 2j, "TypeError: the objective returned complex"),
    (float("-inf"), "ValueError: the objective returned -inf"),
], ids=["10**400", "-10**400", "10**5000", "fraction", "bad_real", "array", "complex",
        "-inf"])
def test_a_result_that_is_no_finite_float_fails_the_trial_and_the_search_goes_on(
        tmp_path, returned, message):
    path = tmp_path / "study.db"

    def objective(params, trial):
        return returned if trial.number == 1 else params["x"]

    study = tune.search(objective, SPACE, n_trials=3, seed=0, storage=path)
    assert [t.state for t in study.trials] == ["complete", "failed", "complete"]
    assert message in study.trials[1].error
    assert study.trials[1].value is None
    # and the study resumes: more trials run, the failed one stays failed
    study.close()
    resumed = tune.search(objective, SPACE, n_trials=4, storage=path)
    assert [t.state for t in resumed.trials] == ["complete", "failed", "complete", "complete"]
    assert resumed.trials[1].attempts == 1


def test_a_trial_left_running_by_an_overflow_is_recorded_on_resume(tmp_path):
    # What an earlier fastnn left: the overflow escaped and trial 1 stayed "running".
    path = tmp_path / "study.db"
    study = tune.create_study(SPACE, storage=path, seed=0, n_trials=3)
    study.tell(study.ask(), 0.5)
    study.ask()
    study.close()
    resumed = tune.search(lambda p, t: 10**400 if t.number == 1 else p["x"], SPACE,
                          storage=path)
    assert [t.state for t in resumed.trials] == ["complete", "failed", "complete"]
    assert "OverflowError" in resumed.trials[1].error and resumed.trials[1].attempts == 2


def test_an_overflowing_result_in_a_pool_worker(tmp_path):
    trials = _run(tmp_path, "dump(tune.search(big_at_1, SPACE, n_trials=3, n_jobs=2, seed=0))")
    assert [t["state"] for t in trials] == ["complete", "failed", "complete"]
    assert "OverflowError" in trials[1]["error"]


# ------------------------------------------------------------------------------------------
# Hole 6: SystemExit and KeyboardInterrupt raised by the objective
# ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_system_exit_and_keyboard_interrupt_in_pool_workers_fail_their_trials(tmp_path):
    trials = _run(tmp_path, "dump(tune.search(exits, SPACE, n_trials=5, n_jobs=2, seed=0))")
    assert [t["state"] for t in trials] == ["complete", "failed", "failed", "complete",
                                            "complete"]
    assert trials[1]["error"].startswith("SystemExit: 3")
    assert trials[2]["error"].startswith("KeyboardInterrupt: from the objective")
    assert all(t["attempts"] == 1 for t in trials)


def test_system_exit_inline_fails_the_trial_and_the_search_goes_on():
    def objective(params, trial):
        if trial.number == 1:
            sys.exit("bye")
        return params["x"]

    study = tune.search(objective, SPACE, n_trials=3, seed=0)
    assert [t.state for t in study.trials] == ["complete", "failed", "complete"]
    assert study.trials[1].error.startswith("SystemExit: bye")


def test_keyboard_interrupt_inline_still_stops_the_search_and_is_no_crash(tmp_path):
    path = tmp_path / "study.db"
    interrupt = {"times": 3}

    def objective(params, trial):
        if trial.number == 1 and interrupt["times"]:
            interrupt["times"] -= 1
            raise KeyboardInterrupt
        return params["x"]

    for _ in range(3):  # Ctrl-C three times during the same trial: not a crash
        with pytest.raises(KeyboardInterrupt):
            tune.search(objective, SPACE, n_trials=3, seed=0, storage=path)
        assert _rows(path)[1][1:] in [("running", n, 0) for n in (1, 2, 3)]
    study = tune.search(objective, SPACE, n_trials=3, storage=path)
    assert [t.state for t in study.trials] == ["complete"] * 3
    assert study.trials[1].attempts == 4 and study.trials[1].crashes == 0


# ------------------------------------------------------------------------------------------
# Inline: a trial that kills the coordinator
# ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_trial_that_killed_the_inline_coordinator_twice_is_not_run_a_third_time(tmp_path):
    path = tmp_path / "study.db"
    script = _script(tmp_path, f"""\
        study = tune.search(kills_the_coordinator_at_2, SPACE, n_trials=4, seed=0,
                            storage={str(path)!r})
        dump(study)
    """)
    for attempt in (1, 2):
        done = subprocess.run([sys.executable, str(script)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == -signal.SIGKILL, done.stderr
        assert _rows(path)[2] == (2, "running", attempt, attempt)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr  # the objective was not called for trial 2
    trials = json.loads(done.stdout.strip().splitlines()[-1])
    assert [t["state"] for t in trials] == ["complete", "complete", "failed", "complete"]
    assert "coordinator process died 2 times" in trials[2]["error"]
    assert "n_jobs=2" in trials[2]["error"]
    assert [t["crashes"] for t in trials] == [0, 0, 2, 0]


# ------------------------------------------------------------------------------------------
# Hole 5: trial_timeout, and a timeout that bounds the trials in flight
# ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_trial_timeout_in_a_pool_kills_and_replaces_the_worker(tmp_path):
    trials = _run(tmp_path, """\
        dump(tune.search(hangs_at_1, SPACE, n_trials=5, n_jobs=2, seed=0, trial_timeout=2))
    """)
    assert [t["state"] for t in trials] == ["complete", "failed", "complete", "complete",
                                            "complete"]
    assert trials[1]["error"].startswith("TimeoutError: the trial ran longer than "
                                         "trial_timeout=2 s; its worker process was killed")
    assert all(t["attempts"] == 1 for t in trials)


@pytest.mark.slow
def test_trial_timeout_inline_interrupts_the_objective(tmp_path):
    trials = _run(tmp_path, """\
        def swallows(params, trial):
            try:
                return hangs_at_1(params, trial)
            except Exception:  # an objective that hides its errors cannot hide the limit
                return 0.0
        dump(tune.search(swallows, SPACE, n_trials=3, seed=0, trial_timeout=1))
    """)
    assert [t["state"] for t in trials] == ["complete", "failed", "complete"]
    assert trials[1]["error"].startswith("TimeoutError: the trial ran longer than "
                                         "trial_timeout=1 s; it was interrupted")


def test_trial_timeout_inline_needs_the_main_thread():
    import threading

    errors = []

    def search():
        try:
            tune.search(lambda p, t: p["x"], SPACE, n_trials=1, seed=0, trial_timeout=1)
        except ValueError as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=search)
    thread.start()
    thread.join(60)
    assert errors and "main thread" in errors[0] and "n_jobs=2" in errors[0]


@pytest.mark.slow
def test_trial_timeout_on_dask_kills_the_trials_process(tmp_path):
    pytest.importorskip("distributed")
    trials, other = _run_all(tmp_path, """\
        import distributed
        with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                      dashboard_address=None) as cluster, \\
                distributed.Client(cluster) as client:
            study = tune.search(hangs_at_1, SPACE, n_trials=3, seed=0, trial_timeout=3,
                                executor=client.get_executor())
            # and SystemExit in a Dask worker's thread fails its trial too
            other = tune.search(exits, SPACE, n_trials=3, seed=0,
                                executor=client.get_executor())
        dump(study)
        dump(other)
    """, timeout=180)
    assert [t["state"] for t in trials] == ["complete", "failed", "complete"]
    assert trials[1]["error"].startswith("TimeoutError: the trial ran longer than "
                                         "trial_timeout=3 s; its process was killed")
    assert [t["state"] for t in other] == ["complete", "failed", "failed"]
    assert other[1]["error"].startswith("SystemExit: 3")
    assert other[2]["error"].startswith("KeyboardInterrupt: from the objective")


@pytest.mark.slow
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_timeout_bounds_the_trials_in_flight_and_a_resume_runs_them(tmp_path, n_jobs):
    path = tmp_path / "study.db"
    started = time.monotonic()
    trials = _run(tmp_path, f"""\
        dump(tune.search(hangs, SPACE, n_trials=4, n_jobs={n_jobs}, seed=0, timeout=2,
                         storage={str(path)!r}))
    """, timeout=120)
    assert time.monotonic() - started < NEVER / 2  # it did return
    assert [t["state"] for t in trials] == ["running"] * n_jobs
    resumed = _run(tmp_path, f"""\
        dump(tune.search(quick, SPACE, n_trials=4, n_jobs={n_jobs}, storage={str(path)!r}))
    """)
    assert [t["state"] for t in resumed] == ["complete"] * 4
    assert [t["attempts"] for t in resumed] == [2] * n_jobs + [1] * (4 - n_jobs)
    assert [(t["params"], t["seed"]) for t in resumed[:n_jobs]] == [
        (t["params"], t["seed"]) for t in trials]


@pytest.mark.parametrize("kwargs, error, message", [
    ({"trial_timeout": 0}, ValueError, r"trial_timeout must be in \(0.0, inf\); got 0"),
    ({"trial_timeout": float("inf")}, ValueError, r"trial_timeout must be in \(0.0, inf\)"),
    ({"trial_timeout": "10"}, TypeError, "trial_timeout must be a real number; got '10'"),
    ({"timeout": True}, TypeError, "timeout must be a real number; got True"),
])
def test_time_limits_are_checked(kwargs, error, message):
    with pytest.raises(error, match=message):
        tune.search(lambda p, t: p["x"], SPACE, n_trials=1, seed=0, **kwargs)


# ------------------------------------------------------------------------------------------
# Hole 4: no worker outlives a killed coordinator
# ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigkill_of_a_pool_coordinator_leaves_no_process_behind(tmp_path):
    path = tmp_path / "study.db"
    script = _script(tmp_path, f"""\
        tune.search(hangs, SPACE, n_trials=4, n_jobs=2, seed=0, storage={str(path)!r})
    """)
    process = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    coordinator = psutil.Process(process.pid)
    try:
        # both workers have started their trials (they said so before the objective ran)
        _wait_until(lambda: [r[1] for r in _rows(path)] == ["running", "running"]
                    and len(coordinator.children()) >= 2, process)
        time.sleep(1.0)
        children = coordinator.children(recursive=True)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert len(children) >= 2  # the two workers (and the resource tracker)
    survivors = _survivors(children)
    for p in survivors:
        p.kill()
    assert survivors == []
    # the resumed search takes over the stale lock and finishes; nothing is left beside it
    trials = _run(tmp_path, f"""\
        study = tune.search(quick, SPACE, n_trials=4, n_jobs=2, storage={str(path)!r})
        dump(study)
        study.close()
    """)
    assert [t["state"] for t in trials] == ["complete"] * 4
    assert sorted(os.listdir(tmp_path)) == ["search.py", "study.db"]


# ------------------------------------------------------------------------------------------
# Hole 7: the lock is on the resolved path; no raw IntegrityError
# ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_second_search_through_a_symlink_is_refused_clearly(tmp_path):
    path = tmp_path / "study.db"
    link = tmp_path / "elsewhere"
    link.mkdir()
    (link / "link.db").symlink_to(path)
    script = _script(tmp_path, f"""\
        def slow(params, trial):
            time.sleep(0.3)
            return params["x"]
        dump(tune.search(slow, SPACE, n_trials=8, seed=0, storage={str(path)!r}))
    """)
    process = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_until(lambda: len(_rows(path)) >= 2, process)
        with pytest.raises(RuntimeError, match=rf"another process \(pid {process.pid}\) is "
                                               "running a search on .*link.db"):
            tune.search(lambda p, t: p["x"], SPACE, n_trials=8, seed=0,
                        storage=link / "link.db")
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    trials = json.loads(out.strip().splitlines()[-1])
    assert [t["state"] for t in trials] == ["complete"] * 8
    assert [t["attempts"] for t in trials] == [1] * 8
    assert not (tmp_path / "study.db.lock").exists()


def test_a_trial_number_written_twice_is_a_clear_error(tmp_path):
    storage = Storage(tmp_path / "study.db")
    storage.insert_running(0, {"x": 0.5}, seed=1)
    with pytest.raises(RuntimeError, match="has a trial 0 already: another process wrote"):
        storage.insert_running(0, {"x": 0.7}, seed=1)
    storage.close()


# ------------------------------------------------------------------------------------------
# Lock and temporary files
# ------------------------------------------------------------------------------------------

def test_a_search_leaves_only_its_study_file(tmp_path):
    path = tmp_path / "study.db"
    study = tune.search(lambda p, t: p["x"], SPACE, n_trials=3, seed=0, storage=path)
    assert not (tmp_path / "study.db.lock").exists()
    study.ask()  # ask and tell take the lock briefly: no file stays either
    assert not (tmp_path / "study.db.lock").exists()
    study.close()
    assert os.listdir(tmp_path) == ["study.db"]


def test_a_stale_lock_file_is_taken_over_and_removed(tmp_path):
    path = tmp_path / "study.db"
    (tmp_path / "study.db.lock").write_text("999999")  # left by a killed search
    study = tune.search(lambda p, t: p["x"], SPACE, n_trials=2, seed=0, storage=path)
    assert [t.state for t in study.trials] == ["complete"] * 2
    study.close()
    assert os.listdir(tmp_path) == ["study.db"]


def test_the_lock_is_on_the_resolved_path(tmp_path):
    path = tmp_path / "study.db"
    (tmp_path / "link.db").symlink_to(path)
    study = tune.create_study(SPACE, storage=path, seed=0, n_trials=2)
    with study.lock():
        assert (tmp_path / "study.db.lock").read_text() == str(os.getpid())
        with pytest.raises(RuntimeError, match="another process .* is running a search"):
            tune.search(lambda p, t: p["x"], SPACE, n_trials=2, storage=tmp_path / "link.db")
    assert not (tmp_path / "link.db.lock").exists()
    assert len(tune.search(lambda p, t: p["x"], SPACE, storage=tmp_path / "link.db").trials) == 2
    study.close()
