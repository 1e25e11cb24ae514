"""Every looping compiled kernel releases the GIL while it loops.

A kernel runs in a worker thread while the main thread spins a Python loop, counting its
iterations for as long as the kernel runs. The count is taken as a share of the loop's speed
beside a worker that only sleeps (which releases the GIL): a kernel that releases the GIL
leaves the main thread running at nearly full speed (a share near 1 on an idle core, well
above RELEASED on a busy one), one that holds it stops the main thread for the whole call
(a share of a few hundredths, HELD, from the switches at the call's edges). The gap is over
an order of magnitude; no timing is asserted. A control (``sorted`` of Python floats, a C loop
that holds the GIL) checks that the method tells the two apart.

Each kernel runs on arrays grown until one call takes MIN_CALL_S, so the switches at its edges
(the GIL switch interval, lowered here to SWITCH_S) stay a small part of the window.
"""

from __future__ import annotations

import math
import sys
import threading
import time

import numpy as np
import pytest

import fastnn
from fastnn import ops

pytestmark = pytest.mark.skipif(
    ops.cython_status() is not None,
    reason=f"the cython backend is not loaded: {ops.cython_status()}",
)

F32, F64 = np.float32, np.float64
SWITCH_S = 2e-5  # the GIL switch interval while measuring
MIN_CALL_S = 0.012  # one kernel call lasts at least this long
MAX_ELEMENTS = 1 << 24  # largest array tried (128 MB in float64)
RELEASED = 0.2  # share of the main thread's speed kept while a GIL-free kernel runs
HELD = 0.05  # at most this while a GIL-holding call runs
TRIES = 3  # a busy host can starve the main thread once: the best of TRIES counts


@pytest.fixture(autouse=True)
def _short_switch_interval():
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_S)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def _spin_while(call) -> tuple[int, float]:
    """Run call() in a thread; (main-thread loop iterations while it ran, its duration)."""
    state = [0]
    window = [0.0]

    def worker():
        state[0] = 1
        start = time.perf_counter()
        try:
            call()
        finally:
            window[0] = time.perf_counter() - start
            state[0] = 2

    count = 0
    thread = threading.Thread(target=worker)
    thread.start()
    while state[0] != 2:
        if state[0] == 1:
            count += 1
    thread.join()
    return count, window[0]


def _share(call) -> float:
    """The main loop's speed while call() runs, over its speed beside a sleeping worker."""
    count, window = _spin_while(call)
    free_count, free_window = _spin_while(lambda: time.sleep(window))
    return (count / window) / (free_count / free_window)


def _calibrated(make, min_call_s=MIN_CALL_S):
    """make(elements) -> a no-argument call; grown until one call takes min_call_s."""
    elements = 1 << 21
    while True:
        call = make(elements)
        call()  # warm up (page faults, first-touch)
        start = time.perf_counter()
        call()
        seconds = time.perf_counter() - start
        if seconds >= min_call_s or elements >= MAX_ELEMENTS:
            return call
        grow = 2 ** math.ceil(math.log2(1.25 * min_call_s / max(seconds, 1e-6)))
        elements = min(elements * grow, MAX_ELEMENTS)


def _best_share(make) -> float:
    call = _calibrated(make)
    best = 0.0
    for _ in range(TRIES):
        best = max(best, _share(call))
        if best >= RELEASED:
            break
    return best


def _kernel(name, dtype, label_dtype=None):
    cython = ops.backends._BACKENDS["cython"]
    return cython.kernel(name, np.dtype(dtype), None if label_dtype is None else
                         np.dtype(label_dtype))


def _rows(elements, width=1000):
    return max(2, elements // width), width


# ---- per-call kernels: name -> make(dtype) -> make(elements) -> call ----------------------

def _bn_arrays(elements, dtype):
    n, d = _rows(elements)
    block = np.random.default_rng(0).standard_normal((97, d)).astype(dtype)
    x = np.resize(block, (n, d))  # random rows, repeated: quick to make at any size
    vec = lambda value: np.full(d, value, dtype)  # noqa: E731
    return n, d, x, vec


def _per_call(name, dtype):
    def make(elements):
        n, d, x, vec = _bn_arrays(elements, dtype)
        out, other = np.empty_like(x), np.empty_like(x)
        if name == "batchnorm_forward_train":
            args = (x, vec(1), vec(0), out, other, vec(0), vec(0), vec(0), vec(1), True, 0.1,
                    1e-5)
        elif name == "batchnorm_forward_eval":
            args = (x, vec(1), vec(0), vec(0), vec(1), out, vec(0), vec(0), 1e-5)
        elif name == "batchnorm_backward_train":
            args = (x, x.copy(), vec(1), vec(1), out, vec(0), vec(0))
        elif name == "batchnorm_backward_eval":
            args = (x, x.copy(), vec(1), vec(0), vec(1), out, vec(0), vec(0))
        elif name == "softmax_cross_entropy":
            labels = np.arange(n, dtype=np.int64) % d
            args = (x, labels, None, out, np.empty(n), 0.1, 1.0 / n)
            return lambda: _kernel(name, dtype, np.int64)(*args)
        elif name == "softmax":
            args = (x, out)
        else:
            p, g = x.ravel(), other.ravel()
            s1, s2, s3 = (np.zeros_like(p) for _ in range(3))
            if name == "adam_update":
                args = (p, g, s1, s2, s3, 1e-3, 0.9, 0.999, 1e-8, 0.01, False, 0.1, 0.001)
            elif name == "sgd_update":
                args = (p, g, s1, 0.01, 0.9, 0.0, True, 0.01, False)
            else:
                args = (p, g, s1, s2, s3, 0.01, 0.99, 1e-8, 0.01, 0.9)
        kernel = _kernel(name, dtype)
        return lambda: kernel(*args)
    return make


PER_CALL = ["batchnorm_forward_train", "batchnorm_forward_eval", "batchnorm_backward_train",
            "batchnorm_backward_eval", "softmax_cross_entropy", "softmax", "adam_update",
            "sgd_update", "rmsprop_update"]


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", PER_CALL)
def test_per_call_kernel_releases_the_gil(name, dtype):
    assert _best_share(_per_call(name, dtype)) >= RELEASED


# ---- bound ops ------------------------------------------------------------------------------

def _bound(kind, dtype, monkeypatch):
    def make(elements):
        n, d, x, vec = _bn_arrays(elements, dtype)
        if kind == "gather":
            labels = np.zeros(n, np.int64)
            order = np.random.default_rng(1).permutation(n).astype(np.int64)
            return ops.plan_gather(x, labels, order, np.empty_like(x), np.empty(n, np.int64))
        if kind in ("gemm", "matmul"):
            # A product of ~elements * 64 multiply-adds: a in (m, 64), b in (64, 64).
            monkeypatch.setattr(ops.bound, "SMALL_GEMM_MAX", 1 << 62 if kind == "gemm" else 0)
            m = max(1, elements // 64)
            a = np.ones((m, 256), dtype)
            b = np.ones((256, 64), dtype)
            return ops.plan_matmul(a, b, np.empty((m, 64), dtype), bias=vec(1)[:64])
        if kind == "column_sum":
            return ops.plan_column_sum(x, vec(0))
        if kind == "activation":
            return ops.plan_activation(x, "tanh")
        if kind == "activation_backward":
            return ops.plan_activation(np.tanh(x), "tanh", dout=x)
        cache = ops.batchnorm_forward(x, vec(1), vec(0))[1]
        if kind == "batchnorm_train":
            return ops.plan_batchnorm_train(x, vec(1), vec(0), vec(0), vec(1),
                                            out=np.empty_like(x), cache=cache,
                                            activation="sigmoid")
        if kind == "batchnorm_backward":
            return ops.plan_batchnorm_backward(x, cache, dx=np.empty_like(x), dgamma=vec(0),
                                               dbeta=vec(0), y=np.tanh(x), activation="tanh")
        labels = np.arange(n, dtype=np.int64) % d
        if kind == "softmax_cross_entropy":
            return ops.plan_softmax_cross_entropy(x, labels, np.empty_like(x), np.empty(n),
                                                  class_weight=vec(1), label_smoothing=0.1)
        if kind == "program":
            batch, batch_labels = np.empty_like(x), np.zeros(n, np.int64)
            gather = ops.plan_gather(x, labels, np.arange(n, dtype=np.int64), batch,
                                     batch_labels)
            loss = ops.plan_softmax_cross_entropy(batch, batch_labels, np.empty_like(x),
                                                  np.empty(n))
            return ops.program([gather, loss], gather=gather, loss=loss).run
        p = x.ravel()
        adam = ops.bind_adam(p, x.copy().ravel(), np.zeros_like(p), np.zeros_like(p),
                             np.zeros_like(p))
        return lambda: adam.update(1e-3, 0.9, 0.999, 1e-8, 0.01, True, 0.1, 0.001)
    return make


BOUND = ["gather", "gemm", "matmul", "column_sum", "activation", "activation_backward",
         "batchnorm_train", "batchnorm_backward", "softmax_cross_entropy", "program", "adam"]


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind", BOUND)
def test_bound_op_releases_the_gil(kind, dtype, monkeypatch):
    with fastnn.backend("cython"):
        assert _best_share(_bound(kind, dtype, monkeypatch)) >= RELEASED


def test_bound_op_raises_after_reacquiring_the_gil():
    # The label check runs without the GIL; its error is raised with it, as a ValueError.
    with fastnn.backend("cython"):
        z = np.zeros((4, 3), F32)
        labels = np.array([0, 1, 2, 0], np.int64)
        op = ops.plan_softmax_cross_entropy(z, labels, np.empty_like(z), np.empty(4))
        labels[2] = 3
        caught = []

        def run():
            try:
                op()
            except ValueError as exc:
                caught.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        assert len(caught) == 1 and "labels must lie in [0, 3)" in str(caught[0])


def test_control_a_gil_holding_call_stops_the_main_thread():
    # sorted() of Python floats is a C loop that never lets the GIL go: the method sees it.
    def make(elements):
        data = np.random.default_rng(0).random(elements // 8).tolist()
        return lambda: sorted(data)

    # long: the switches at its edges (milliseconds each when the host is busy and the OS
    # deschedules the worker between them) stay a small part of the window
    call = _calibrated(make, min_call_s=0.15)
    # On a busy host the error is a starved run, of the call's or of the sleeping baseline's
    # (which inflates the share): the slowest main loop beside the call against the
    # fastest beside a sleep, TRIES runs each.
    def rate(c):
        count, window = _spin_while(c)
        return count / window, window

    held, window = min(rate(call) for _ in range(TRIES))
    free = max(rate(lambda: time.sleep(window))[0] for _ in range(TRIES))
    assert held / free <= HELD
