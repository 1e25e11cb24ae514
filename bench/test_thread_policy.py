"""fastnn's thread policy (``fastnn._threads``): one BLAS thread for small products, both
cores where they pay.

* ``busy-core``: ``fastnn train`` (the README's command: the bundled digits, 64-256-10,
  batch 32, 30 epochs) on a quiet machine and with another process spinning on one core
  (pinned there with ``sched_setaffinity``), interleaved, ``ROUNDS`` each.
  ``extra_info["busy_over_quiet"]`` is the median busy time over the median quiet time
  (the issue's goal: at most 1.3 on a 2-core machine; it was 2.25 before the policy,
  when OpenBLAS's second thread spun on the busy core). Each run must report the same
  test accuracy, above 0.9.
* ``two-threads``: an epoch of ``fit`` at batch 256 and ``predict_proba`` on 1024 rows of
  an MLP 784-256-256-10 with BatchNorm, float32, under ``fastnn.threads(1)`` and
  ``fastnn.threads(2)``, interleaved; ``extra_info["speedup"]`` is the one-thread median
  over the two-thread median (goal >= 1.6 on a quiet 2-core machine). Both thread counts
  must give the same loss and predictions (BLAS sums do not depend on its threads to
  within float32 tolerance).

These measure the machine as it is: run them on a quiet one.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest

import fastnn
from fastnn import Sequential, ops
from fastnn import layers as L

pytestmark = pytest.mark.skipif(
    ops.cython_status() is not None or not hasattr(os, "sched_setaffinity"),
    reason="needs the cython backend and Linux CPU affinity",
)

ROUNDS = 3


def _train_once(cwd) -> tuple[float, float]:
    # from a temporary folder, as a user runs it: from the checkout, `python -m fastnn`
    # would import the unbuilt source tree
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "fastnn", "train", "--verbose", "0"],
                          cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items()
                               if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                            "FASTNN_NUM_THREADS")})
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", done.stdout).group(1))
    return elapsed, accuracy


def _spinner() -> subprocess.Popen:
    cores = sorted(os.sched_getaffinity(0))
    code = f"import os\nos.sched_setaffinity(0, {{{cores[-1]}}})\nwhile True:\n    pass\n"
    return subprocess.Popen([sys.executable, "-c", code])


def test_train_with_one_core_busy(benchmark, tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    quiet, busy, accuracies = [], [], set()
    for _ in range(ROUNDS):
        seconds, accuracy = _train_once(tmp_path)
        quiet.append(seconds)
        accuracies.add(accuracy)
        spinner = _spinner()
        try:
            time.sleep(0.2)
            seconds, accuracy = _train_once(tmp_path)
        finally:
            spinner.kill()
            spinner.wait()
        busy.append(seconds)
        accuracies.add(accuracy)
    assert len(accuracies) == 1 and accuracies.pop() > 0.9  # the same training each time
    benchmark.group = "busy-core"
    benchmark.extra_info.update(quiet_s=statistics.median(quiet),
                                busy_s=statistics.median(busy),
                                busy_over_quiet=statistics.median(busy)
                                / statistics.median(quiet))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # the figures are extra_info


def _mlp_and_data():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((4096, 784)).astype(np.float32)
    y = rng.integers(0, 10, 4096)
    return X, y


def _fit_epoch(threads: int):
    X, y = _mlp_and_data()
    model = Sequential(L.mlp([256, 256], 10), seed=0)
    model.build(784)
    with fastnn.threads(threads):
        start = time.perf_counter()
        history = model.fit(X, y, epochs=1, batch_size=256, shuffle=False, verbose=0)
        return time.perf_counter() - start, history.history["loss"][0]


@pytest.mark.parametrize("what", ["fit-batch-256", "predict-1024"])
def test_two_threads_against_one(benchmark, what):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    from threadpoolctl import threadpool_limits

    # the bench session holds BLAS at one thread (conftest), and fastnn never raises the
    # program's own limit: lift it to two here, and let fastnn.threads() decide
    with threadpool_limits(limits=2, user_api="blas"):
        _two_threads_against_one(benchmark, what)


def _two_threads_against_one(benchmark, what):
    times = {1: [], 2: []}
    results = {}
    if what == "fit-batch-256":
        for _ in range(ROUNDS):
            for threads in (1, 2):
                seconds, loss = _fit_epoch(threads)
                times[threads].append(seconds)
                results.setdefault(threads, loss)
        np.testing.assert_allclose(results[1], results[2], rtol=1e-4)
    else:
        X, y = _mlp_and_data()
        model = Sequential(L.mlp([256, 256], 10), seed=0)
        model.fit(X[:512], y[:512], epochs=1, batch_size=256, verbose=0)
        rows = X[:1024]
        for _ in range(ROUNDS * 5):
            for threads in (1, 2):
                with fastnn.threads(threads):
                    start = time.perf_counter()
                    results[threads] = model.predict_proba(rows)
                    times[threads].append(time.perf_counter() - start)
        np.testing.assert_allclose(results[1], results[2], rtol=1e-4, atol=1e-6)
    benchmark.group = "two-threads"
    benchmark.extra_info.update(one_thread_s=statistics.median(times[1]),
                                two_threads_s=statistics.median(times[2]),
                                speedup=statistics.median(times[1])
                                / statistics.median(times[2]))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
