"""The README's Python examples run as written, each on its own, as a reader would paste it.

Every ```python block of README.md runs in a fresh temporary folder in a new interpreter
(nothing defined by another block, nothing left over), and prints no warning."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs_alone(index, tmp_path):
    if "sklearn" in BLOCKS[index]:
        pytest.importorskip("sklearn")
    script = tmp_path / f"readme_block_{index}.py"
    script.write_text(BLOCKS[index])
    # one BLAS thread: on a loaded 2-core machine OpenBLAS's second thread slows small
    # products many times over (README, Benchmarks)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-W", "always", str(script)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, f"README block {index} failed:\n{done.stderr}"
    assert "Warning" not in done.stderr, f"README block {index} warned:\n{done.stderr}"
    assert "Traceback" not in done.stderr
