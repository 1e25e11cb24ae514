"""fastnn.tune's runner across executors: process pools, a thread pool, a Dask cluster, and a
search killed with SIGKILL then resumed."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import tune_objectives as objectives

from fastnn import tune
from fastnn.tune.runner import THREAD_VARIABLES

TESTS_DIR = Path(__file__).resolve().parent
SPACE = {"x": tune.Uniform(0.0, 1.0), "lr": tune.LogUniform(1e-4, 1e-1)}


@pytest.fixture(autouse=True)
def _workers_find_the_objectives(monkeypatch):
    """Spawned workers get this process's sys.path; Dask workers and subprocesses the
    environment: both must reach tests/tune_objectives.py."""
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS_DIR), path])))
    monkeypatch.delenv(objectives.SLEEP_VARIABLE, raising=False)


def _key(trial) -> tuple:
    return trial.number, trial.state, trial.params, trial.seed, trial.value


STRATEGIES = {
    "random": {},
    "grid": {"points": 3},
    "coarse_to_fine": {"rounds": 3},
    "bayes": {"n_initial": 4, "batch_size": 2, "candidates": 200},
}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_same_trials_inline_and_in_a_process_pool(strategy):
    options = STRATEGIES[strategy]
    inline = tune.search(objectives.quadratic, SPACE, strategy, n_trials=9, seed=21, **options)
    pooled = tune.search(objectives.quadratic, SPACE, strategy, n_trials=9, seed=21, n_jobs=2,
                         **options)
    assert [_key(t) for t in pooled.trials] == [_key(t) for t in inline.trials]
    assert all(t.state == "complete" for t in pooled.trials)
    # the trial seed reached the worker: the objective's seed term is in the value
    t = pooled.trials[3]
    assert t.value == objectives.quadratic(t.params, t)


def test_pool_workers_run_single_threaded_and_the_parent_env_is_restored(monkeypatch):
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    study = tune.search(objectives.worker_threads, SPACE, n_trials=4, n_jobs=2, seed=0)
    assert [t.value for t in study.trials] == [1.0] * 4
    assert os.environ["OMP_NUM_THREADS"] == "7"
    assert "OPENBLAS_NUM_THREADS" not in os.environ


def test_a_trial_that_kills_its_worker_fails_alone():
    study = tune.search(objectives.kill_worker, SPACE, n_trials=8, n_jobs=2, seed=0)
    for t in study.trials:
        if t.params["x"] > 0.8:
            assert t.state == "failed" and "worker process died" in t.error
            assert "exit code 3" in t.error
        else:
            assert t.state == "complete" and t.value == t.params["x"]
        assert t.attempts == 1  # the pool knows which trial its dead worker ran: no re-runs
    assert any(t.state == "failed" for t in study.trials)
    assert sum(t.state == "complete" for t in study.trials) >= 4


def test_any_executor_through_submit():
    inline = tune.search(objectives.quadratic, SPACE, "coarse_to_fine", n_trials=8, seed=4,
                         rounds=2)
    with cf.ThreadPoolExecutor(max_workers=3) as executor:
        threaded = tune.search(objectives.quadratic, SPACE, "coarse_to_fine", n_trials=8,
                               seed=4, executor=executor, rounds=2)
        assert executor.submit(int, "5").result() == 5  # not shut down by the search
    assert [_key(t) for t in threaded.trials] == [_key(t) for t in inline.trials]


def test_dask_local_cluster_gives_the_inline_trials():
    distributed = pytest.importorskip("distributed")
    inline = tune.search(objectives.learning_curve, SPACE, "coarse_to_fine", n_trials=8,
                         seed=13, rounds=2)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        on_dask = tune.search(objectives.learning_curve, SPACE, "coarse_to_fine",
                              n_trials=8, seed=13, executor=client.get_executor(), rounds=2)
        worker_pids = set(client.run(os.getpid).values())
    assert [_key(t) + (t.reports,) for t in on_dask.trials] == [
        _key(t) + (t.reports,) for t in inline.trials]
    assert len(worker_pids) == 2 and os.getpid() not in worker_pids


# ------------------------------------------------------------------------------------------
# SIGKILL and resume
# ------------------------------------------------------------------------------------------

N_TRIALS = 8
SEARCH_ARGS = dict(strategy="coarse_to_fine", n_trials=N_TRIALS, seed=2024, rounds=2)
SCRIPT = f"""\
import sys
from fastnn import tune
import tune_objectives

space = {{"x": tune.Uniform(0.0, 1.0), "lr": tune.LogUniform(1e-4, 1e-1)}}
tune.search(tune_objectives.quadratic, space, storage=sys.argv[1], **{SEARCH_ARGS!r})
"""


def _rows(path) -> dict:
    with sqlite3.connect(path, timeout=10) as conn:
        rows = conn.execute("SELECT number, state, params, seed, value, datetime_start, "
                            "datetime_complete, duration, attempts FROM trials").fetchall()
    conn.close()
    return {row[0]: row for row in rows}


def _wait_for_kill_point(path, process, deadline: float) -> None:
    """Until >= 3 trials are complete and one is running."""
    while time.monotonic() < deadline:
        assert process.poll() is None, "the search process ended before it was killed"
        if path.exists():
            try:
                states = [row[1] for row in _rows(path).values()]
            except sqlite3.OperationalError:  # tables not created yet
                states = []
            if states.count("complete") >= 3 and "running" in states:
                return
        time.sleep(0.02)
    raise AssertionError("the search did not get 3 trials done in time")


def test_sigkill_then_resume_loses_nothing_and_counts_nothing_twice(tmp_path, monkeypatch):
    path = tmp_path / "study.db"
    script = tmp_path / "search.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = dict(os.environ, **{objectives.SLEEP_VARIABLE: "0.2"})
    process = subprocess.Popen([sys.executable, str(script), str(path)], cwd=tmp_path,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_kill_point(path, process, time.monotonic() + 60)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    before = _rows(path)
    running = [n for n, row in before.items() if row[1] == "running"]
    done = [n for n, row in before.items() if row[1] == "complete"]
    assert running and len(done) >= 3, before
    assert len(before) < N_TRIALS

    study = tune.search(objectives.quadratic, SPACE, storage=path, **SEARCH_ARGS)
    after = _rows(path)
    assert sorted(after) == list(range(N_TRIALS))  # every number exactly once
    assert all(row[1] == "complete" for row in after.values())
    for n in done:  # completed before the kill: untouched (value, params, timestamps)
        assert after[n] == before[n]
    for n in running:  # re-run with the same params and seed
        assert after[n][2:4] == before[n][2:4]
        assert after[n][8] == 2 and after[n][6] is not None
    straight = tune.search(objectives.quadratic, SPACE, **SEARCH_ARGS)
    assert [_key(t) for t in study.trials] == [_key(t) for t in straight.trials]


UNGUARDED_SCRIPT = """\
from fastnn import tune

def objective(params, trial):
    return -(params["x"] - 0.3) ** 2

study = tune.search(objective, {"x": tune.Uniform(0.0, 1.0)}, n_trials=2, n_jobs=2, seed=0)
print(study.trials[0].state)
print(study.trials[0].error)
"""


def test_a_script_without_a_main_guard_is_told_why_its_workers_die(tmp_path):
    # Spawned workers import the script, whose top-level search then runs again inside
    # them and they die: every trial fails, and the error says what to do.
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    state, error = done.stdout.splitlines()[-2:]
    assert state == "failed"
    assert "worker process died" in error and 'if __name__ == "__main__":' in error
