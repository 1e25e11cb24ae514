"""Import time: ``import fastnn`` in a fresh interpreter, against NumPy's own import.

One group, ``import``, with three entries, each a fresh ``python -c`` subprocess:

* ``python``: the interpreter starting and doing nothing (the floor under both);
* ``numpy``: ``import numpy`` (fastnn's one runtime dependency, most of its import);
* ``fastnn``: ``import fastnn``.

The issue's target is ``import fastnn`` <= 0.2 s; ``bench/report.py`` prints
fastnn - python and numpy - python from the same run. Each entry checks what it imported:
``import fastnn`` must leave the lazily imported parts (datasets, tune, serialization, the
scikit-learn estimators, the CLI) unloaded, and must load the compiled kernels (a missing
or stale build would fall back to NumPy and time something else).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROUNDS = 15

_CODE = {
    "python": "pass",
    "numpy": "import numpy",
    "fastnn": "import fastnn",
}

_CHECK = """
import sys
lazy = ["fastnn.datasets", "fastnn.tune", "fastnn.serialization", "fastnn.sklearn",
        "fastnn.cli", "sklearn", "torch", "matplotlib", "tqdm"]
loaded = [name for name in lazy if name in sys.modules]
assert not loaded, loaded
from fastnn import ops
assert ops.cython_status() is None, ops.cython_status()
print("ok")
"""


def _env() -> dict:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # time the cached bytecode, as installed
    return env


def _run(code: str) -> subprocess.CompletedProcess:
    # From a directory outside the checkout: the source tree must not shadow the package.
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_env(), cwd=os.path.dirname(os.path.abspath(os.sep)), check=False)


@pytest.mark.parametrize("what", list(_CODE))
def test_import_time(benchmark, what):
    benchmark.group = "import"
    benchmark.extra_info.update(bench="import", impl=what)
    if what == "fastnn":
        done = _run("import fastnn" + _CHECK)
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    first = _run(_CODE[what])  # also writes any missing bytecode cache
    assert first.returncode == 0, first.stderr
    result = benchmark.pedantic(_run, args=(_CODE[what],), rounds=ROUNDS, iterations=1)
    assert result.returncode == 0, result.stderr
