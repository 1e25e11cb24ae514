"""Shared fixtures: every kernel test runs on both backends and both dtypes."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn

BACKENDS = ("cython", "numpy")
DTYPES = (np.float32, np.float64)

# Agreement of two implementations of the same formula, per dtype.
TOL = {
    np.float32: {"rtol": 2e-5, "atol": 2e-6},
    np.float64: {"rtol": 1e-12, "atol": 1e-12},
}
# Agreement with a float64 reference (float32 inputs carry float32 rounding).
REF_TOL = {
    np.float32: {"rtol": 1e-4, "atol": 1e-5},
    np.float64: {"rtol": 1e-10, "atol": 1e-11},
}


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Run the test on one backend (the cython backend must load: no silent skip)."""
    with fastnn.backend(request.param):
        yield request.param


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def run_on_each_backend(fn):
    """fn() evaluated under each backend: {name: result}."""
    results = {}
    for name in BACKENDS:
        with fastnn.backend(name):
            results[name] = fn()
    return results
