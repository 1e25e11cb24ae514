"""Two models trained in two Python threads at once, against one after the other.

Every kernel a planned training step runs releases the GIL, so two threads each fitting its own
model (``fastnn.Sequential.fit``, which takes planned steps on the cython backend) can use both
cores: the Python between the kernels (the fit loop, the op-by-op ``Program.run``) is what still
serialises them. Two different models on synthetic data of the digits' size (1797 x 64, 10
classes), float32, BLAS at one thread (``threadpoolctl.threadpool_limits(1)``; fastnn's kernels
are single-threaded unless built with OpenMP):

* ``a``: 64-[512 BatchNorm ReLU]-[256 BatchNorm ReLU]-10, batch 128;
* ``b``: 64-[768 BatchNorm Tanh]-10, batch 64.

Wide enough that a step's kernels (~0.1-1 ms) outweigh its Python: with the tiny networks of
``test_train_step.py`` (~30 us a step, mostly Python) two threads would only take turns.

The group ``threads-2-models`` has two entries: ``sequential`` (fit ``a``, then ``b``, in this
thread) and ``concurrent`` (``a`` and ``b`` fitted in two threads started together). Each round
fits fresh models from the same seeds, so every round must end with the same weights, and the
concurrent ones must equal the sequential ones bit for bit (each model's arithmetic is its own).
``extra_info["speedup"]`` of the concurrent entry is the median sequential time over the median
concurrent time, both timed in this test, interleaved (ideal 2 on two idle cores; 1 means the
threads serialise).
"""

from __future__ import annotations

import os
import statistics
import threading
import time

import numpy as np
import pytest

import fastnn
from fastnn import ops
from fastnn.layers import BatchNorm, Dense, ReLU, Softmax, Tanh

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # part of the `bench` extra
    threadpool_limits = None

pytestmark = pytest.mark.skipif(
    ops.cython_status() is not None,
    reason=f"the cython backend is not loaded: {ops.cython_status()}",
)

SEED = 20240611
EPOCHS = 3
ROUNDS = 5


def _data():
    rng = np.random.default_rng(SEED)
    X = rng.random((1797, 64), dtype=np.float32)
    y = rng.integers(0, 10, 1797)
    return X, y


MODELS = {
    "a": (lambda: [Dense(512), BatchNorm(), ReLU(), Dense(256), BatchNorm(), ReLU(), Dense(10),
                   Softmax()], 128),
    "b": (lambda: [Dense(768), BatchNorm(), Tanh(), Dense(10), Softmax()], 64),
}


def _fit(name: str, X, y) -> list[np.ndarray]:
    layers, batch_size = MODELS[name]
    model = fastnn.Sequential(layers(), input_dim=64, dtype="float32", seed=SEED)
    model.fit(X, y, epochs=EPOCHS, batch_size=batch_size, verbose=0, seed=SEED + 1)
    return model.get_weights()


def _sequential(X, y) -> dict[str, list[np.ndarray]]:
    return {name: _fit(name, X, y) for name in MODELS}


def _concurrent(X, y) -> dict[str, list[np.ndarray]]:
    results: dict[str, list[np.ndarray]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(MODELS))

    def work(name):
        try:
            start.wait()
            results[name] = _fit(name, X, y)
        except BaseException as exc:  # re-raised in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(name,)) for name in MODELS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def _assert_same(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        assert len(got[name]) == len(expected[name]), name
        for i, (a, b) in enumerate(zip(got[name], expected[name], strict=True)):
            assert np.array_equal(a, b), f"model {name}, weight {i} differs"


def _timed(fn, X, y) -> tuple[float, dict]:
    start = time.perf_counter()
    out = fn(X, y)
    return time.perf_counter() - start, out


@pytest.mark.skipif(threadpool_limits is None, reason="needs threadpoolctl (the bench extra)")
def test_two_models_train_concurrently(benchmark):
    X, y = _data()
    with fastnn.backend("cython"), threadpool_limits(limits=1):
        reference = _sequential(X, y)
        # Interleaved, so that a disturbance of the host hits both entries alike.
        seq_times, conc_times = [], []
        for _ in range(ROUNDS):
            seconds, out = _timed(_sequential, X, y)
            _assert_same(out, reference)
            seq_times.append(seconds)
            seconds, out = _timed(_concurrent, X, y)
            _assert_same(out, reference)
            conc_times.append(seconds)
        speedup = statistics.median(seq_times) / statistics.median(conc_times)

        benchmark.group = "threads-2-models"
        benchmark.name = "concurrent"
        benchmark.extra_info.update(
            bench="threads", impl="concurrent", epochs=EPOCHS, models=sorted(MODELS),
            sequential_s=statistics.median(seq_times),
            concurrent_s=statistics.median(conc_times), speedup=round(speedup, 3),
            # A shared host: with the other core busy, two threads can only take turns.
            loadavg_1min=os.getloadavg()[0])
        out = benchmark.pedantic(_concurrent, args=(X, y), rounds=ROUNDS, iterations=1)
        _assert_same(out, reference)
    print(f"\ntwo models, {EPOCHS} epochs each: sequential {statistics.median(seq_times):.3f} s, "
          f"concurrent {statistics.median(conc_times):.3f} s, speedup {speedup:.2f}x "
          f"(load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs)")
