"""Benchmark session setup: every library runs on one thread.

fastnn's kernels are compared with NumPy and PyTorch kernel for kernel, so none of them may use
the second core: the environment variables below are read when the thread pools start (so they
are set before NumPy or torch is imported), and ``threadpoolctl`` plus ``torch.set_num_threads``
pin the pools that are already running, for the whole session.

torch is optional: without it the torch benchmarks skip and everything else runs.
"""

from __future__ import annotations

import os

for _var in (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
):
    os.environ[_var] = "1"
# JAX (an optional comparison in test_fit_overhead.py): XLA's CPU backend on one thread
os.environ.setdefault("XLA_FLAGS",
                      "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

try:
    # Imported before the limits are applied, so that threadpoolctl finds its OpenMP runtime.
    import torch
except ImportError:
    torch = None

try:
    from threadpoolctl import threadpool_info, threadpool_limits
except ImportError:  # part of the `bench` extra; without it only the variables above apply
    threadpool_info = threadpool_limits = None

# The thread pools as the benchmarks saw them (filled in while the limits apply).
_POOLS: list[dict] = []


def pytest_configure(config):
    # Also declared in pyproject.toml; repeated so that `pytest bench/` works from any rootdir.
    config.addinivalue_line(
        "markers", "torch: compares against PyTorch CPU (skipped when torch is not installed)"
    )


@pytest.fixture(scope="session", autouse=True)
def single_thread():
    """One thread for BLAS, for OpenMP (fastnn's if built with it, torch's) and for torch."""
    if torch is not None:
        torch.set_num_threads(1)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # settable only before the inter-op pool starts; the kernels run intra-op
    if threadpool_limits is None:
        yield
        return
    with threadpool_limits(limits=1):
        _POOLS[:] = threadpool_info()
        yield


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record the build, library versions and thread pools in the --benchmark-json file."""
    import numpy as np

    import fastnn

    problem = fastnn.ops.cython_status()
    machine_info["fastnn"] = {
        "version": fastnn.__version__,
        "cython_build": fastnn.ops.backend_info("cython") if problem is None else problem,
    }
    machine_info["numpy"] = np.__version__
    if torch is not None:
        machine_info["torch"] = {"version": torch.__version__, "threads": torch.get_num_threads()}
    if _POOLS:
        machine_info["threadpools"] = _POOLS
