"""The README's Python examples run as written, in order, as a reader would run them."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    """Block ``index`` runs after the blocks before it (in one namespace, in a scratch dir)."""
    if "sklearn" in BLOCKS[index]:
        pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. ConvergenceWarning from a short example fit
        for i in range(index + 1):
            if "sklearn" in BLOCKS[i] and i < index:
                continue  # an earlier scikit-learn block defines nothing later blocks use
            exec(compile(BLOCKS[i], f"README.md block {i}", "exec"), namespace)  # noqa: S102
