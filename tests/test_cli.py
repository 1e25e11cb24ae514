"""`fastnn train`: the main job, end to end, as a user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import fastnn
from fastnn import cli

NEUTRAL_DIR = tempfile.gettempdir()  # outside the checkout (see test_build.py)


def _fastnn(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastnn", *args], capture_output=True,
                          text=True, cwd=cwd or NEUTRAL_DIR, timeout=300, env=dict(os.environ))


def _accuracy(stdout: str) -> float:
    match = re.search(r"test accuracy (\d\.\d+) \((\d+)/(\d+)\)", stdout)
    assert match, stdout
    return float(match.group(1))


def test_train_default_reaches_97_percent_on_digits():
    done = _fastnn("train", "--verbose", "2")
    assert done.returncode == 0, done.stderr
    assert "bundled UCI digits" in done.stdout
    assert len(re.findall(r"^Epoch \d+/30 ", done.stdout, flags=re.M)) == 30
    assert _accuracy(done.stdout) >= 0.97
    assert "no bias: followed by BatchNorm" in done.stdout


def test_train_numpy_backend_float64_agrees(tmp_path):
    fast = _fastnn("train", "--epochs", "3", "--verbose", "0", "--dtype", "float64")
    slow = _fastnn("train", "--epochs", "3", "--verbose", "0", "--dtype", "float64",
                   "--backend", "numpy")
    assert fast.returncode == 0 and slow.returncode == 0, fast.stderr + slow.stderr
    assert "on the numpy backend" in slow.stdout
    assert abs(_accuracy(fast.stdout) - _accuracy(slow.stdout)) < 1e-9


def test_train_save_then_resume(tmp_path):
    path = tmp_path / "digits-model.npz"
    first = _fastnn("train", "--epochs", "2", "--verbose", "0", "--save", str(path))
    assert first.returncode == 0, first.stderr
    assert path.exists()
    model = fastnn.load(path)
    assert model.epochs_trained == 2
    # with --resume, --epochs is the total to reach: 3 more epochs to 5
    second = _fastnn("train", "--epochs", "5", "--verbose", "2", "--resume", str(path),
                     "--save", str(path))
    assert second.returncode == 0, second.stderr
    assert "resumed" in second.stdout and "2 epochs trained so far" in second.stdout
    assert re.findall(r"^Epoch (\d+)/5 ", second.stdout, flags=re.M) == ["3", "4", "5"]
    assert fastnn.load(path).epochs_trained == 5


def test_train_on_a_csv_file(tmp_path):
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(-2, 1, (60, 3)), rng.normal(2, 1, (60, 3))])
    labels = np.array(["left"] * 60 + ["right"] * 60)
    path = tmp_path / "two.csv"
    with open(path, "w") as fh:
        for row, label in zip(X, labels, strict=True):
            fh.write(",".join(f"{v:.5f}" for v in row) + f",{label}\n")
    # 120 samples: a few steps per epoch, so a larger rate than the digits default.
    done = _fastnn("train", "--data", str(path), "--epochs", "30", "--lr", "0.01",
                   "--verbose", "0", "--hidden", "8")
    assert done.returncode == 0, done.stderr
    assert _accuracy(done.stdout) > 0.9


@pytest.mark.parametrize("args, message", [
    (["--hidden", "0"], "layer widths must be integers >= 1"),
    (["--hidden", "a,b"], "expected comma-separated layer widths"),
    (["--lr", "-1"], "expected a positive number"),
    (["--epochs", "0"], "expected a positive integer"),
    (["--dropout", "1.5"], r"expected a number in \[0, 1\)"),
    (["--optimizer", "lbfgs"], "invalid choice"),
    (["--data", "/no/such/file.csv"], "no such file"),
    (["--resume", "/no/such/model.npz"], "no such model file"),
])
def test_train_bad_arguments_exit_2_with_one_line(args, message):
    done = _fastnn("train", *args)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert re.search(message, done.stderr), done.stderr


def test_train_bad_data_file_exits_2(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("1,2,3,0\n4,5,1\n")
    done = _fastnn("train", "--data", str(path))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "ragged.csv" in done.stderr


def test_train_resume_of_a_foreign_file_exits_2(tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, a=np.arange(3))
    done = _fastnn("train", "--resume", str(path))
    assert done.returncode == 2
    assert "is not a fastnn model" in done.stderr


def test_plot_without_matplotlib_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code = cli.main(["train", "--epochs", "1", "--verbose", "0", "--plot", "curves.png"])
    assert code == 2
    assert 'pip install "fastnn-cpu[plot]"' in capsys.readouterr().err


def test_plot_writes_an_image(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "curves.png"
    done = _fastnn("train", "--epochs", "3", "--verbose", "0", "--plot", str(path))
    assert done.returncode == 0, done.stderr
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
