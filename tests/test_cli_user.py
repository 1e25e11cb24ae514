"""Issue 13, the user's path: each item driven through the installed CLI as a user runs it
(``python -m fastnn`` in a temporary folder, real CSV/NPZ/IDX files written here)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastnn
from fastnn import datasets

# One BLAS thread: on a loaded 2-core machine OpenBLAS's second thread slows the small
# products of these runs many times over (see README, Benchmarks).
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}


def _fastnn(*args, cwd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastnn", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env or ENV)


def _ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done


def _error(done: subprocess.CompletedProcess, pattern: str) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert re.search(pattern, done.stderr), done.stderr
    return done.stderr


def _accuracy(stdout: str) -> float:
    match = re.search(r"test accuracy (\d\.\d+) \((\d+)/(\d+)\)", stdout)
    assert match, stdout
    return float(match.group(1))


def _write_csv(path: Path, header: list[str], rows) -> Path:
    with open(path, "w") as fh:
        fh.write(",".join(header) + "\n")
        for row in rows:
            fh.write(",".join(str(v) for v in row) + "\n")
    return path


@pytest.fixture(scope="module")
def breast_cancer():
    sk = pytest.importorskip("sklearn.datasets")
    bunch = sk.load_breast_cancer()
    return bunch.data, bunch.target, [str(n) for n in bunch.feature_names]


@pytest.fixture(scope="module")
def wine():
    sk = pytest.importorskip("sklearn.datasets")
    bunch = sk.load_wine()
    return bunch.data, bunch.target, [str(n) for n in bunch.feature_names]


def _bc_csv(tmp_path, breast_cancer, *, labels=True) -> Path:
    X, y, names = breast_cancer
    if not labels:
        return _write_csv(tmp_path / "bc_features.csv", names, X)
    return _write_csv(tmp_path / "bc.csv", [*names, "target"],
                      (list(row) + [label] for row, label in zip(X, y, strict=True)))


# ------------------------------------------------------------------------------------------
# A saved model carries its standardisation; predict and evaluate
# ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_saved_model_predicts_raw_features_as_the_cli_scored_them(tmp_path, breast_cancer):
    X, y, _ = breast_cancer
    csv_path = _bc_csv(tmp_path, breast_cancer)
    train = _ok(_fastnn("train", "--data", csv_path, "--epochs", "10", "--save", "bc.npz",
                        "--verbose", "0", cwd=tmp_path))
    assert _accuracy(train.stdout) > 0.9
    model = fastnn.load(tmp_path / "bc.npz")
    # the 36.8%: every row predicted class 0, because the scaler was not saved
    assert (model.predict(X) == y).mean() > 0.9
    _, X_test, _, y_test = datasets.train_test_split(X.astype(np.float32), y, test_size=0.2,
                                                     seed=0)
    correct = int(re.search(r"\((\d+)/114\)", train.stdout).group(1))
    assert int((model.predict(X_test) == y_test).sum()) == correct

    evaluate = _ok(_fastnn("evaluate", "bc.npz", "--data", csv_path, cwd=tmp_path))
    match = re.search(r"accuracy (\d\.\d+) \((\d+)/569\)", evaluate.stdout)
    assert match and int(match.group(2)) == int((model.predict(X) == y).sum())

    _ok(_fastnn("predict", "bc.npz", "--data", csv_path, "--output", "preds.csv", "--proba",
                cwd=tmp_path))
    table = np.genfromtxt(tmp_path / "preds.csv", delimiter=",", names=True)
    assert table.dtype.names == ("prediction", "p_0", "p_1")
    np.testing.assert_array_equal(table["prediction"], model.predict(X))
    np.testing.assert_allclose(table["p_0"] + table["p_1"], 1.0, atol=1e-5)
    np.testing.assert_allclose(table["p_1"], model.predict_proba(X)[:, 1], atol=1e-5)

    features_only = _bc_csv(tmp_path, breast_cancer, labels=False)  # what a user predicts on
    printed = _ok(_fastnn("predict", "bc.npz", "--data", features_only, cwd=tmp_path))
    lines = printed.stdout.split()
    assert lines[0] == "prediction" and [int(v) for v in lines[1:]] == model.predict(X).tolist()
    _error(_fastnn("evaluate", "bc.npz", "--data", features_only, cwd=tmp_path),
           "has no labels .*evaluate needs them")


def test_standardize_layer_saves_loads_and_predicts_like_its_formula(tmp_path):
    from fastnn.layers import Dense, Softmax, Standardize

    rng = np.random.default_rng(0)
    X = rng.normal(50.0, 10.0, (200, 5)).astype(np.float32)
    X[:, 2] = 7.0  # a constant feature: std 1, never a division by 0
    y = (X[:, 0] > 50).astype(int)
    layer = Standardize().adapt(X)
    np.testing.assert_allclose(layer.mean, X.astype(np.float64).mean(axis=0), rtol=1e-6)
    assert layer.std[2] == 1.0
    model = fastnn.Sequential([layer, Dense(2), Softmax()], seed=0)
    model.fit(X, y, epochs=3, verbose=0)
    model.save(tmp_path / "m.npz")
    again = fastnn.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(again.predict_proba(X), model.predict_proba(X))
    # the folded inference equals the layer-by-layer one, which is (x - mean) / std first
    np.testing.assert_allclose(again._infer(X), again._infer(X, fold=False), rtol=1e-5,
                               atol=1e-6)
    manual = ((X - layer.mean) / layer.std) @ again.layers[1].p["kernel"] + \
        again.layers[1].p["bias"]
    np.testing.assert_allclose(again._infer(X, logits=True), manual, rtol=1e-4, atol=1e-5)


def test_standardize_planned_and_per_layer_training_agree():
    from fastnn.layers import BatchNorm, Dense, ReLU, Softmax, Standardize

    X, y = datasets.load_digits(dtype="float64")
    runs = []
    for planned in (True, False):
        model = fastnn.Sequential([Standardize().adapt(X), Dense(16), BatchNorm(), ReLU(),
                                   Dense(10), Softmax()], dtype="float64", seed=0)
        model.plan_steps = planned
        model.fit(X, y, epochs=2, batch_size=64, verbose=0)
        runs.append(model._params.copy())
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-7, atol=1e-9)


def test_standardize_not_adapted_or_mismatched_is_a_clear_error():
    from fastnn.layers import Dense, Softmax, Standardize

    X = np.random.default_rng(0).normal(size=(20, 3))
    model = fastnn.Sequential([Standardize(), Dense(2), Softmax()])
    with pytest.raises(ValueError, match=r"not adapted: call layer.adapt\(X_train\)"):
        model.fit(X, np.arange(20) % 2, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="adapted on 4 features; the model's input has 3"):
        fastnn.Sequential([Standardize().adapt(np.ones((5, 4))), Dense(2)], input_dim=3)
    with pytest.raises(ValueError, match="std finite and > 0"):
        Standardize(mean=[0.0], std=[0.0])


# ------------------------------------------------------------------------------------------
# --label-column, the continuous-label warning, NaN labels
# ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_label_column_by_name_and_index_and_the_continuous_warning(tmp_path, wine):
    X, y, names = wine
    # the file: the label first, under a name fastnn does not guess; proline last
    order = [n for n in names if n != "proline"] + ["proline"]
    rows = [[label, *row[[names.index(n) for n in order]]] for row, label in zip(X, y,
                                                                               strict=True)]
    path = _write_csv(tmp_path / "wine.csv", ["cultivar", *order], rows)
    guessed = _fastnn("train", "--data", path, "--epochs", "2", "--verbose", "0", cwd=tmp_path)
    assert "look like a continuous feature" in guessed.stderr
    assert "--label-column" in guessed.stderr and "'proline'" in guessed.stderr
    for column in ("cultivar", "0"):
        done = _ok(_fastnn("train", "--data", path, "--label-column", column, "--epochs", "20",
                           "--verbose", "0", "--lr", "0.01", cwd=tmp_path))
        assert "labels: column 'cultivar' (1 of 14)" in done.stdout
        assert "continuous" not in done.stderr
        assert _accuracy(done.stdout) > 0.9
    _error(_fastnn("train", "--data", path, "--label-column", "kind", cwd=tmp_path),
           "has no column named 'kind'")


@pytest.mark.slow
@pytest.mark.parametrize("column", ["diagnosis", "0"])
def test_predict_and_evaluate_find_the_label_column_the_model_was_trained_with(
        tmp_path, breast_cancer, column):
    # the label first, under a name fastnn does not guess: without the recorded column,
    # predict took the label for a feature and dropped the last one (37% right, exit 0)
    X, y, names = breast_cancer
    path = _write_csv(tmp_path / "bc.csv", ["diagnosis", *names],
                      ([label, *row] for row, label in zip(X, y, strict=True)))
    _ok(_fastnn("train", "--data", path, "--label-column", column, "--epochs", "10",
                "--save", "bc.npz", "--verbose", "0", cwd=tmp_path))
    model = fastnn.load(tmp_path / "bc.npz")
    assert model.label_column == (int(column) if column.isdigit() else column)
    expected = model.predict(X)
    assert (expected == y).mean() > 0.9
    printed = _ok(_fastnn("predict", "bc.npz", "--data", path, cwd=tmp_path))
    assert [int(v) for v in printed.stdout.split()[1:]] == expected.tolist()
    evaluate = _ok(_fastnn("evaluate", "bc.npz", "--data", path, cwd=tmp_path))
    assert f"({int((expected == y).sum())}/569)" in evaluate.stdout
    assert "labels column 'diagnosis' (1 of 31)" in evaluate.stdout
    features_only = _bc_csv(tmp_path, breast_cancer, labels=False)
    printed = _ok(_fastnn("predict", "bc.npz", "--data", features_only, cwd=tmp_path))
    assert [int(v) for v in printed.stdout.split()[1:]] == expected.tolist()
    # an explicit --label-column still wins
    _error(_fastnn("predict", "bc.npz", "--data", path, "--label-column", "kind",
                   cwd=tmp_path), "has no column named 'kind'")


def test_saved_files_get_the_umasks_mode_or_keep_the_replaced_files(tmp_path):
    model = fastnn.Sequential(fastnn.layers.mlp([4], 2), input_dim=3, seed=0)
    model.build(3)
    old = os.umask(0o022)
    try:
        model.save(tmp_path / "m.npz")
        assert (tmp_path / "m.npz").stat().st_mode & 0o777 == 0o644
        os.chmod(tmp_path / "m.npz", 0o640)
        model.save(tmp_path / "m.npz")  # replacing a file keeps its mode
        assert (tmp_path / "m.npz").stat().st_mode & 0o777 == 0o640
        os.umask(0o077)
        model.save(tmp_path / "private.npz")
        assert (tmp_path / "private.npz").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
    X = tmp_path / "x.csv"
    X.write_text("a,b,c\n1,2,3\n4,5,6\n")
    env = {**ENV}
    done = subprocess.run(["sh", "-c", f"umask 022 && exec {sys.executable} -m fastnn "
                           f"predict m.npz --data x.csv --output p.csv"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=env)
    _ok(done)
    assert (tmp_path / "p.csv").stat().st_mode & 0o777 == 0o644


def test_loaders_choose_the_label_column(tmp_path):
    named = _write_csv(tmp_path / "named.csv", ["Class", "a", "b"], [[1, 0.5, 2], [0, 1.5, 3]])
    X, y, where = datasets.load_labeled(named)
    assert y.tolist() == [1, 0] and X.tolist() == [[0.5, 2.0], [1.5, 3.0]]
    assert where == "column 'Class' (1 of 3)"
    X, y = datasets.load_csv(named, label_column="b")
    assert y.tolist() == [2, 3] and X.shape == (2, 2)
    coords = _write_csv(tmp_path / "xy.csv", ["x", "y", "animal"], [[1, 2, "cat"], [3, 4, "dog"]])
    assert datasets.load_csv(coords)[1].tolist() == ["cat", "dog"]  # x, y are coordinates

    data = np.array([[0.5, 1.0, 3.0], [1.5, 0.0, 4.0]])
    np.savez(tmp_path / "a.npz", X=data, target=np.array([1, 0]))
    assert datasets.load(tmp_path / "a.npz")[1].tolist() == [1, 0]  # no "y": "target"
    X, y = datasets.load_npz(tmp_path / "a.npz", label_column=1)
    assert y.dtype == np.int64 and y.tolist() == [1, 0] and X.tolist() == [[0.5, 3], [1.5, 4]]
    with pytest.raises(ValueError, match="has no array 'kind' \\(label_column='kind'\\)"):
        datasets.load_npz(tmp_path / "a.npz", label_column="kind")
    np.savez(tmp_path / "features.npz", X=data)
    X, y, where = datasets.load_labeled(tmp_path / "features.npz", n_features=3)
    assert y is None and where == "no labels" and X.shape == (2, 3)


def test_idx_label_column_is_the_labels_file(tmp_path):
    import struct

    images, labels = tmp_path / "pics.idx", tmp_path / "kinds.idx"
    images.write_bytes(struct.pack(">BBBBIII", 0, 0, 0x08, 3, 2, 2, 2) + bytes(range(8)))
    labels.write_bytes(struct.pack(">BBBBI", 0, 0, 0x08, 1, 2) + bytes([3, 5]))
    X, y, where = datasets.load_labeled(images, label_column=str(labels))
    assert X.shape == (2, 4) and y.tolist() == [3, 5] and where == f"IDX file {labels}"
    with pytest.raises(ValueError, match="IDX images keep their labels in a separate file"):
        datasets.load_labeled(images, label_column=0)
    X, y, _ = datasets.load_labeled(images, n_features=4)  # predict: images alone
    assert y is None and X.shape == (2, 4)


def test_label_warning_flags_continuous_labels_only():
    assert datasets.label_warning(np.arange(178) % 121) is not None
    assert datasets.label_warning(np.array([0.5, 1.25, 2.0])) is not None
    assert datasets.label_warning(np.arange(1797) % 10) is None
    assert datasets.label_warning(np.array(["a", "b"] * 50)) is None


def test_nan_labels_get_a_clear_message(tmp_path):
    path = _write_csv(tmp_path / "gaps.csv", ["a", "b", "label"],
                      [[i, i % 3, "nan" if i in (4, 9) else i % 2] for i in range(20)])
    _error(_fastnn("train", "--data", path, cwd=tmp_path),
           r"gaps.csv: 2 of 20 labels are missing \(NaN\), the first in data row 5; remove")


# ------------------------------------------------------------------------------------------
# Honest splits: tune never sees the test rows; train takes the tuned trial
# ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_tune_holds_out_the_test_rows_and_train_takes_the_best_trial(tmp_path):
    from fastnn import tune
    from fastnn.tune.models import _fingerprint

    done = _ok(_fastnn("tune", "--trials", "2", "--epochs", "1", "--storage", "s.db",
                       "--seed", "0", cwd=tmp_path))
    assert "359 test rows held out by --test-size 0.2 --split-seed 0" in done.stdout
    assert "never seen by tuning" in done.stdout
    assert ("each trial is 5-fold cross-validated on the 1438 training rows (--cv 5): 5 "
            "models, each trained on about 1151 and scored on the other 287") in done.stdout
    assert "fastnn train --params-from s.db" in done.stdout
    X, y = datasets.load_digits()
    X_train, _, y_train, _ = datasets.train_test_split(X, y, test_size=0.2, seed=0)
    with tune.load_study(tmp_path / "s.db") as study:
        settings = study.user_attrs["tune_model"]
        best = study.best_trial
        params = best.params
    # the trials saw exactly the training rows (the 359 test rows are not in their data)
    assert settings["data"]["sha256"] == _fingerprint(X_train, y_train)

    trained = _ok(_fastnn("train", "--params-from", "s.db", "--save", "best.npz",
                          "--verbose", "0", cwd=tmp_path))
    assert f"from s.db: trial {best.number}" in trained.stdout
    model = fastnn.load(tmp_path / "best.npz")
    widths = [layer.units for layer in model.layers if layer.units is not None]
    assert widths == [params["hidden"]] * params["layers"] + [10]
    assert model.optimizer.beta_1 == pytest.approx(params["beta1"])
    assert model.optimizer.learning_rate.lr == pytest.approx(params["lr"])
    schedule = model.optimizer.learning_rate  # the default space's cosine, over the epochs
    assert params["decay"] == "cosine" and type(schedule).__name__ == "CosineDecay"
    assert schedule.total == 1
    assert model.loss.label_smoothing == pytest.approx(params["label_smoothing"])
    dropouts = [layer.rate for layer in model.layers if type(layer).__name__ == "Dropout"]
    assert dropouts == pytest.approx([params["dropout"]] * params["layers"])
    assert model.epochs_trained == 1  # the study's epochs per trial

    chosen = _ok(_fastnn("train", "--params-from", "s.db", "--trial", "0", "--epochs", "2",
                         "--beta1", "0.5", "--save", "t0.npz", "--verbose", "0", cwd=tmp_path))
    assert "overridden on the command line: --beta1, --epochs" in chosen.stdout
    model = fastnn.load(tmp_path / "t0.npz")
    assert model.epochs_trained == 2 and model.optimizer.beta_1 == 0.5


def test_train_takes_every_tuned_hyperparameter_as_a_flag():
    from fastnn import _names, cli

    parser = cli.build_parser()
    train = next(c for c in cli._subparsers(parser) if c.prog.endswith(" train"))
    flags = {opt for action in train._actions for opt in action.option_strings}
    for canonical in _names.HYPERPARAMETERS:
        flag = {"decay": "--decay-rate", "batch_size": "--batch-size"}.get(canonical,
                                                                          f"--{canonical}")
        assert flag in flags, canonical
    from fastnn.tune import digits_space

    assert set(digits_space()) <= set(_names.HYPERPARAMETERS)


# ------------------------------------------------------------------------------------------
# Resume that resumes
# ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_resume_continues_the_schedule_and_the_epoch_count(tmp_path):
    _ok(_fastnn("train", "--epochs", "4", "--save", "straight.npz", "--verbose", "0",
                cwd=tmp_path))
    _ok(_fastnn("train", "--epochs", "2", "--save", "m.npz", "--verbose", "0", cwd=tmp_path))
    resumed = _ok(_fastnn("train", "--epochs", "4", "--resume", "m.npz", "--save", "m.npz",
                          "--verbose", "2", cwd=tmp_path))
    assert re.findall(r"^Epoch (\d+)/4 ", resumed.stdout, flags=re.M) == ["3", "4"]
    straight = fastnn.load(tmp_path / "straight.npz").history.history["lr"]
    again = fastnn.load(tmp_path / "m.npz")
    # the bug: every resumed epoch at lr 0 (the cosine had ended at epoch 2)
    np.testing.assert_allclose(again.history.history["lr"], straight[2:])
    assert all(lr > 0 for lr in again.history.history["lr"])
    assert again.epochs_trained == 4

    conflict = _error(_fastnn("train", "--epochs", "6", "--resume", "m.npz", "--hidden", "64",
                              "--no-batch-norm", "--dropout", "0.2", cwd=tmp_path),
                      "conflict with the saved model")
    for flag in ("--hidden", "--no-batch-norm", "--dropout 0.2"):
        assert flag in conflict
    _error(_fastnn("train", "--epochs", "4", "--resume", "m.npz", cwd=tmp_path),
           "has trained 4 epochs already; --epochs is the total")

    steps = fastnn.load(tmp_path / "m.npz").optimizer.iterations
    switched = _ok(_fastnn("train", "--epochs", "5", "--resume", "m.npz", "--optimizer", "sgd",
                           "--save", "m.npz", "--verbose", "0", cwd=tmp_path))
    assert "optimizer changed (Adam -> SGD): it starts with a fresh state" in switched.stdout
    model = fastnn.load(tmp_path / "m.npz")
    assert type(model.optimizer).__name__ == "SGD" and model.epochs_trained == 5
    assert model.optimizer.iterations == steps // 4  # one epoch's steps since the switch
    assert model.history.history["lr"][0] > 0


@pytest.mark.slow
def test_ctrl_c_saves_the_complete_epochs_and_says_how_to_resume(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "fastnn", "train", "--epochs", "50", "--save", "m.npz",
         "--verbose", "2"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=ENV)
    for line in process.stdout:
        if line.startswith("Epoch 1/50"):
            break
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    model = fastnn.load(tmp_path / "m.npz")
    assert 1 <= model.epochs_trained < 50
    assert f"m.npz keeps the {model.epochs_trained} complete epoch(s)" in err
    command = re.search(r"^  fastnn (train .*)$", err, flags=re.M)
    assert command, err
    args = command.group(1).split()
    assert args[-2:] == ["--resume", "m.npz"]
    # the printed command goes on (fewer epochs here, to keep the test short)
    args[args.index("--epochs") + 1] = str(model.epochs_trained + 1)
    resumed = _ok(_fastnn(*args, cwd=tmp_path))
    assert f"{model.epochs_trained} epochs trained so far" in resumed.stdout
    assert fastnn.load(tmp_path / "m.npz").epochs_trained == model.epochs_trained + 1


# ------------------------------------------------------------------------------------------
# The smaller items
# ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_tune_report_into_head_has_no_broken_pipe(tmp_path):
    _ok(_fastnn("tune", "--trials", "2", "--epochs", "1", "--storage", "s.db", "--seed", "1",
                cwd=tmp_path))
    done = subprocess.run(f"{sys.executable} -m fastnn tune report s.db | head -1", shell=True,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=ENV)
    assert done.stdout.startswith("study s.db")
    assert "BrokenPipe" not in done.stderr and "Traceback" not in done.stderr
    assert done.stderr == ""


def test_plot_without_matplotlib_fails_before_any_epoch(tmp_path):
    shadow = tmp_path / "shadow" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    env = {**ENV, "PYTHONPATH": str(tmp_path / "shadow")}
    done = _fastnn("train", "--plot", "curves.png", "--verbose", "2", cwd=tmp_path, env=env)
    _error(done, r'pip install "fastnn-cpu\[plot\]"')
    assert "Epoch" not in done.stdout


def test_help_shows_the_defaults(tmp_path):
    text = _ok(_fastnn("train", "--help", cwd=tmp_path)).stdout
    text = " ".join(text.split())
    for expected in ("(default: 256)", "(default: 0.003)", "(default: cosine)",
                     "(default: 30)", "(default: 32)", "(default: adam)", "--beta1", "--beta2",
                     "--params-from", "--label-column"):
        assert expected in text, expected
    tune_help = " ".join(_ok(_fastnn("tune", "--help", cwd=tmp_path)).stdout.split())
    assert "(default: 10)" in tune_help and "never seen" in tune_help


def test_source_tree_import_says_so(tmp_path):
    package = Path(fastnn.__file__).parent
    tree = tmp_path / "checkout"
    (tree / "fastnn").mkdir(parents=True)
    for path in package.rglob("*"):
        if path.suffix in (".py", ".tp", ".h", ".npz", ".txt", ".csv") and "__pycache__" not in \
                path.parts:
            target = tree / "fastnn" / path.relative_to(package)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    (tree / "setup.py").write_text("# a checkout's setup.py\n")
    done = subprocess.run([sys.executable, "-c", "import fastnn; print(fastnn.get_backend())"],
                          cwd=tree, capture_output=True, text=True, timeout=120, env=ENV)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "numpy"
    assert "importing fastnn from its source tree" in done.stderr
    assert "pip install -e ." in done.stderr and "run from another folder" in done.stderr
    assert "circular" not in done.stderr
