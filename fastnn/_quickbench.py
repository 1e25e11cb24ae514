"""``fastnn bench``: a quick, dependency-free comparison of the two backends here.

For each kernel at a few sizes it times the same ``fastnn.ops`` call on the
cython and numpy backends (best of several repeats, float32) and checks that
both give the same result. The full benchmark suite, with PyTorch and the
memory-bandwidth bound, is ``bench/`` (pytest-benchmark).
"""

from __future__ import annotations

import timeit
from collections.abc import Callable

import numpy as np

from . import ops

SIZES = {
    "batchnorm f+b": [(64, 128), (1024, 512), (8192, 1024)],
    "softmax-CE f+b": [(64, 10), (1024, 1000), (8192, 1000)],
    "adam step": [(10_000,), (1_000_000,), (10_000_000,)],
}


def _batchnorm(shape, rng):
    n, d = shape
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    gamma, beta = np.ones(d, np.float32), np.zeros(d, np.float32)
    rm, rv = np.zeros(d, np.float32), np.ones(d, np.float32)
    out, dx = np.empty_like(x), np.empty_like(x)
    dgamma, dbeta = np.empty_like(gamma), np.empty_like(gamma)
    cache = None

    def run():
        nonlocal cache
        _, cache = ops.batchnorm_forward(x, gamma, beta, rm, rv, out=out, cache=cache)
        ops.batchnorm_backward(dy, cache, dx=dx, dgamma=dgamma, dbeta=dbeta)
        return out, dx, dgamma, dbeta

    return run


def _cross_entropy(shape, rng):
    n, c = shape
    z = rng.standard_normal(shape, dtype=np.float32) * 3
    y = rng.integers(0, c, n)
    grad = np.empty_like(z)
    return lambda: (ops.softmax_cross_entropy(z, y, grad=grad)[1],)


def _adam(shape, rng):
    g = rng.standard_normal(shape, dtype=np.float32)
    p, m, v = rng.standard_normal(shape, dtype=np.float32), np.zeros_like(g), np.zeros_like(g)
    return lambda: (ops.adam_update(p, g, m, v, 10), p)[1:]


MAKERS: dict[str, Callable] = {
    "batchnorm f+b": _batchnorm,
    "softmax-CE f+b": _cross_entropy,
    "adam step": _adam,
}


def _best_time(fn: Callable, budget: float) -> float:
    fn()
    number, elapsed = 1, 0.0
    while elapsed < budget / 5:
        elapsed = timeit.timeit(fn, number=number)
        if elapsed < budget / 5:
            number *= 2
    return min(timeit.repeat(fn, number=number, repeat=5)) / number


def run(quick: bool = False, echo: Callable[[str], None] = print) -> list[dict]:
    """Time every kernel on both backends; returns rows and prints a table via ``echo``.

    Each kernel returns a tuple of arrays, compared between the backends
    (float32 tolerance) so that a fast wrong answer cannot pass.
    """
    if "cython" not in ops.available_backends():
        raise RuntimeError(f"the cython backend is unavailable: {ops.cython_status()}")
    budget = 0.05 if quick else 0.3
    rows = []
    echo(f"{'kernel':<16}{'size':>14}{'cython':>12}{'numpy':>12}{'speed-up':>10}")
    for kernel, sizes in SIZES.items():
        for shape in sizes[:2] if quick else sizes:
            times, results = {}, {}
            for name in ("cython", "numpy"):
                # Same inputs and state for both; outputs preallocated as a model does.
                fn = MAKERS[kernel](shape, np.random.default_rng(0))
                with ops.backend(name):
                    results[name] = tuple(a.copy() for a in fn())
                    times[name] = _best_time(fn, budget)
            for a, b in zip(results["cython"], results["numpy"], strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
            size = "x".join(str(s) for s in shape)
            ratio = times["numpy"] / times["cython"]
            rows.append({"kernel": kernel, "size": size, **times, "speedup": ratio})
            echo(f"{kernel:<16}{size:>14}{times['cython'] * 1e6:>10.1f}us"
                 f"{times['numpy'] * 1e6:>10.1f}us{ratio:>9.1f}x")
    return rows
