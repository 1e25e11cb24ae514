"""Module-level objectives for the tune tests.

Process pools pickle a function by reference (module and name), so the objectives of the
n_jobs > 1 tests live here; the tests put this directory on the workers' path.
"""

from __future__ import annotations

import math
import os
import time

from fastnn.tune import TrialPruned

SLEEP_VARIABLE = "FASTNN_TUNE_TEST_SLEEP"


def quadratic(params, trial):
    """A smooth function of the params plus a small term from the trial seed, so a test can
    tell that the seed reached the worker. Sleeps $FASTNN_TUNE_TEST_SLEEP seconds."""
    sleep = float(os.environ.get(SLEEP_VARIABLE, "0") or 0)
    if sleep:
        time.sleep(sleep)
    value = -(params["x"] - 0.3) ** 2 - (math.log10(params["lr"]) + 2.5) ** 2 / 10
    return value + (trial.seed % 1000) * 1e-9


def failing(params, trial):
    """Raises for x > 0.7, returns NaN for x < 0.2, a float otherwise."""
    if params["x"] > 0.7:
        raise ValueError(f"x too large: {params['x']:.3f}")
    if params["x"] < 0.2:
        return float("nan")
    return params["x"]


def learning_curve(params, trial):
    """A curve over 8 steps that rises to x; prunes when the pruner says so."""
    value = 0.0
    for step in range(1, 9):
        value = params["x"] * (1 - 0.5 ** step)
        trial.report(value, step)
        if trial.should_prune():
            raise TrialPruned(f"pruned at step {step}")
    return value


def kill_worker(params, trial):
    """Kills its own worker process for x > 0.8 (a crash in native code, say)."""
    if params["x"] > 0.8:
        os._exit(3)
    return params["x"]


def worker_threads(params, trial):
    """The BLAS thread variable the worker process started with (as a float)."""
    return float(os.environ.get("OPENBLAS_NUM_THREADS", "-1"))
