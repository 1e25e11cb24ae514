"""Tuning fastnn models (tune_model, the digits objective, resume_trial) and `fastnn tune`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import fastnn
from fastnn import cli, tune
from fastnn.tune.models import checkpoint_path

NEUTRAL_DIR = tempfile.gettempdir()  # outside the checkout (see test_build.py)

SMALL_SPACE = {"lr": tune.LogUniform(1e-3, 3e-2), "hidden": tune.IntLogUniform(16, 48),
               "batch_size": 64}


def _fastnn(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastnn", *args], capture_output=True,
                          text=True, cwd=NEUTRAL_DIR, timeout=300, env=dict(os.environ))


def _main(args: list[str]) -> int:
    """cli.main, with argparse's exit (status 2 on a bad argument) as a return code."""
    try:
        return cli.main(args)
    except SystemExit as exc:
        return exc.code


def _digits():
    X, y = fastnn.datasets.load_digits()
    return X / 16.0, y


# ------------------------------------------------------------------------------------------
# tune_model, the digits objective
# ------------------------------------------------------------------------------------------

def test_tune_model_on_digits_beats_chance_clearly():
    X, y = _digits()
    study = tune.tune_model(tune.MLPBuilder(10), X, y, SMALL_SPACE, epochs=3, n_trials=3,
                            seed=0)
    assert [t.state for t in study.trials] == ["complete"] * 3
    assert study.direction == "maximize"
    assert study.best_value > 0.85  # chance is 0.1
    for t in study.trials:
        assert sorted(t.reports) == [1, 2, 3] and t.value == t.reports[3]
    settings = study.user_attrs["tune_model"]
    assert settings["metric"] == "val_accuracy" and settings["epochs"] == 3


def test_tune_model_trials_are_seeded_by_the_trial():
    X, y = _digits()
    first = tune.tune_model(tune.MLPBuilder(10), X, y, SMALL_SPACE, epochs=2, n_trials=2,
                            seed=5)
    again = tune.tune_model(tune.MLPBuilder(10), X, y, SMALL_SPACE, epochs=2, n_trials=2,
                            seed=5)
    assert [(t.params, t.value, t.reports) for t in first.trials] == [
        (t.params, t.value, t.reports) for t in again.trials]


def test_tune_model_val_loss_is_minimized_and_pruning_uses_epoch_reports():
    X, y = _digits()
    space = {"lr": tune.LogUniform(1e-5, 1e-1), "hidden": 16, "batch_size": 128}
    study = tune.tune_model(tune.MLPBuilder(10), X, y, space, epochs=4, metric="val_loss",
                            n_trials=10, seed=1, pruner=tune.MedianPruner(n_startup_trials=2))
    assert study.direction == "minimize"
    assert study.best_value == min(t.value for t in study.trials if t.state == "complete")
    pruned = [t for t in study.trials if t.state == "pruned"]
    assert pruned and all(len(t.reports) < 4 for t in pruned)


def test_build_fn_may_return_model_and_optimizer():
    X, y = _digits()
    seen = []

    def build(params):
        model = fastnn.Sequential(fastnn.layers.mlp([16], 10))
        optimizer = fastnn.optimizers.SGD(params["lr"], momentum=0.9)
        seen.append(optimizer)
        return model, optimizer

    study = tune.tune_model(build, X, y, {"lr": tune.LogUniform(1e-2, 1e-1)}, epochs=2,
                            n_trials=2, seed=0)
    assert all(t.state == "complete" for t in study.trials)
    assert [o.learning_rate for o in seen] == [t.params["lr"] for t in study.trials]
    assert all(o.iterations > 0 for o in seen)


def test_make_optimizer_reads_the_course_names():
    opt = tune.make_optimizer({"lr": 0.02, "beta1": 0.95, "decay": 1.0})
    assert isinstance(opt, fastnn.optimizers.Adam) and opt.beta_1 == 0.95
    opt.set_epoch(1)
    assert opt.lr == pytest.approx(0.01)  # inverse time: 0.02 / (1 + 1 * 1)
    sgd = tune.make_optimizer({"learning_rate": 0.1, "momentum": 0.8}, kind="sgd")
    assert isinstance(sgd, fastnn.optimizers.SGD) and sgd.momentum == 0.8 and sgd.lr == 0.1
    cosine = tune.make_optimizer({"lr": 0.1, "decay": "cosine", "optimizer": "rmsprop"},
                                 epochs=4)
    assert isinstance(cosine, fastnn.optimizers.RMSprop)
    cosine.set_epoch(4)
    assert cosine.lr == pytest.approx(0.0)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        tune.make_optimizer({"optimizer": "lbfgs"})


def test_digits_objective_is_picklable_and_quick():
    import pickle
    import time

    objective = pickle.loads(pickle.dumps(tune.digits_objective))
    start = time.perf_counter()
    value = objective({"lr": 3e-3, "beta1": 0.9, "hidden": 32, "batch_size": 64, "layers": 1,
                       "decay": 0.1}, tune.Trial(0, {}, seed=0))
    assert value > 0.9
    assert time.perf_counter() - start < 30  # generous: a sanity bound, not a benchmark
    assert len(pickle.dumps(tune.digits_objective)) < 2000  # the data are not pickled


def test_cv_value_is_the_mean_of_the_folds_trained_by_hand():
    X, y = _digits()
    X, y = X[:400], y[:400]
    space = {"lr": tune.LogUniform(3e-3, 3e-2), "hidden": 24, "batch_size": 64}
    study = tune.tune_model(tune.MLPBuilder(10), X, y, space, epochs=2, cv=3, split_seed=4,
                            standardize=True, n_trials=2, seed=0)
    assert study.user_attrs["tune_model"]["cv"] == 3
    assert study.user_attrs["tune_model"]["validation_split"] is None
    trial = study.trials[1]
    # the same thing, by hand: one model per fold of k_fold(y, 3, seed=4), each from the
    # trial's seed, standardised by its own training rows
    folds = fastnn.datasets.k_fold(y, 3, seed=4)
    accuracies = []
    for train, val in folds:
        mean, std = X[train].mean(axis=0), X[train].std(axis=0)
        std[std == 0] = 1.0
        model = tune.MLPBuilder(10)(trial.params)
        model.seed = trial.seed
        model.optimizer = tune.make_optimizer(trial.params, epochs=2)
        history = model.fit((X[train] - mean) / std, y[train], epochs=2, batch_size=64,
                            validation_data=((X[val] - mean) / std, y[val]), seed=trial.seed,
                            verbose=0)
        accuracies.append(history.history["val_accuracy"][-1])
    assert trial.value == pytest.approx(np.mean(accuracies), abs=1e-12)
    assert len(set(accuracies)) > 1  # the folds differ: a mean of three, not one value
    # each fold reports its epochs after the previous fold's (a pruner compares like
    # with like: fold k, epoch e is step k * epochs + e)
    assert sorted(trial.reports) == [1, 2, 3, 4, 5, 6]
    assert [trial.reports[k * 2 + 2] for k in range(3)] == pytest.approx(accuracies)


def test_cv_prunes_after_a_fold_and_is_seeded():
    X, y = _digits()
    X, y = X[:300], y[:300]
    space = {"lr": tune.LogUniform(1e-6, 1e-1), "hidden": 16, "batch_size": 100}
    run = dict(epochs=2, cv=3, n_trials=8, seed=2,
               pruner=tune.MedianPruner(n_startup_trials=2, n_warmup_steps=2))
    first = tune.tune_model(tune.MLPBuilder(10), X, y, space, **run)
    again = tune.tune_model(tune.MLPBuilder(10), X, y, space, **run)
    assert [(t.state, t.value, t.reports) for t in first.trials] == [
        (t.state, t.value, t.reports) for t in again.trials]
    pruned = [t for t in first.trials if t.state == "pruned"]
    assert pruned and all(max(t.reports) < 6 for t in pruned)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"cv": 1}, ValueError, r"cv must be an int of at least 2 \(the number of folds\) or "
                            r"None; got 1"),
    ({"cv": True}, ValueError, r"cv must be an int of at least 2"),
    ({"cv": 2.0}, ValueError, r"cv must be an int of at least 2"),
    ({"cv": 3, "validation_data": "X_val"}, ValueError, r"give cv or validation_data"),
    ({"cv": 3, "checkpoint_dir": "ckpt"}, ValueError, r"checkpoint_dir needs one model"),
    ({"cv": 500}, ValueError, r"n_splits must be at most the number of samples \(100\)"),
])
def test_cv_bad_arguments(kwargs, error, match, tmp_path):
    X, y = _digits()
    X, y = X[:100], y[:100]
    if kwargs.get("validation_data") == "X_val":
        kwargs["validation_data"] = (X[:10], y[:10])
    if "checkpoint_dir" in kwargs:
        kwargs["checkpoint_dir"] = tmp_path / "ckpt"
    with pytest.raises(error, match=match):
        tune.tune_model(tune.MLPBuilder(10), X, y, SMALL_SPACE, epochs=1, n_trials=1,
                        seed=0, **kwargs)


def test_cross_validated_objective_refuses_sample_weights_and_one_fold():
    X, y = _digits()
    folds = fastnn.datasets.k_fold(y, 2)
    with pytest.raises(ValueError, match=r"per row of the whole data"):
        tune.CrossValidatedObjective(tune.MLPBuilder(10), X, y, folds,
                                     fit_kwargs={"sample_weight": np.ones(len(y))})
    with pytest.raises(ValueError, match=r"folds must hold at least 2 \(train, val\) pairs; "
                                         r"got 1"):
        tune.CrossValidatedObjective(tune.MLPBuilder(10), X, y, folds[:1])


def test_mlp_builder_label_smoothing():
    model = tune.MLPBuilder(10)({"hidden": 8, "label_smoothing": 0.15})
    assert model.loss.label_smoothing == 0.15
    assert tune.MLPBuilder(10, label_smoothing=0.05)({}).loss.label_smoothing == 0.05
    with pytest.raises(ValueError, match=r"label_smoothing=0.1 needs a classifier"):
        tune.MLPBuilder(1, softmax=False)({"label_smoothing": 0.1})
    with pytest.raises(ValueError, match=r"label_smoothing"):
        tune.MLPBuilder(10, label_smoothing=1.5)


def test_mlp_space_is_on_the_courses_scales():
    space = tune.mlp_space()
    assert isinstance(space["lr"], tune.LogUniform)
    assert isinstance(space["beta1"], tune.OneMinusLogUniform)
    assert space["decay"] == "cosine"
    assert space["hidden"].high == 512


# ------------------------------------------------------------------------------------------
# Panda: resuming one trial from its checkpoint with a new learning rate
# ------------------------------------------------------------------------------------------

def test_resume_trial_continues_from_the_checkpoint_with_a_new_rate(tmp_path):
    X, y = _digits()
    study = tune.tune_model(tune.MLPBuilder(10), X, y, SMALL_SPACE, epochs=2, n_trials=2,
                            seed=3, storage=tmp_path / "study.db",
                            checkpoint_dir=tmp_path / "ckpt")
    parent = study.best_trial
    saved = fastnn.load(checkpoint_path(tmp_path / "ckpt", parent.number))
    assert saved.epochs_trained == 2
    assert saved.optimizer.lr == pytest.approx(parent.params["lr"])

    child = tune.resume_trial(study, parent.number, X, y, lr=1e-4, epochs=3)
    assert child.number == 2 and child.parent == parent.number and child.state == "complete"
    assert child.params == {**parent.params, "lr": 1e-4}
    assert sorted(child.reports) == [3, 4, 5]  # steps go on from the parent's epochs
    continued = fastnn.load(checkpoint_path(tmp_path / "ckpt", child.number))
    assert continued.epochs_trained == 5
    assert continued.optimizer.lr == 1e-4
    assert continued.optimizer.iterations > saved.optimizer.iterations
    # the parent's checkpoint and row are untouched; the child is stored
    assert fastnn.load(checkpoint_path(tmp_path / "ckpt", parent.number)).epochs_trained == 2
    loaded = tune.load_study(tmp_path / "study.db")
    assert loaded.trials[parent.number] == parent
    assert loaded.trials[2].parent == parent.number
    # and it chains
    grandchild = tune.resume_trial(loaded, child.number, X, y, epochs=1)
    assert grandchild.parent == child.number and sorted(grandchild.reports) == [6]


def test_resume_trial_errors(tmp_path):
    X, y = _digits()
    plain = tune.tune_model(tune.MLPBuilder(10), X, y, SMALL_SPACE, epochs=1, n_trials=1,
                            seed=0)
    with pytest.raises(ValueError, match="without checkpoint_dir"):
        tune.resume_trial(plain, 0, X, y, lr=1e-3)
    study = tune.tune_model(tune.MLPBuilder(10), X, y, SMALL_SPACE, epochs=1, n_trials=1,
                            seed=0, checkpoint_dir=tmp_path / "ckpt")
    with pytest.raises(ValueError, match="not the data this study was tuned on"):
        tune.resume_trial(study, 0, X[:-1], y[:-1], lr=1e-3)
    with pytest.raises(ValueError, match="no trial 7"):
        tune.resume_trial(study, 7, X, y)
    other = tune.search(lambda p, t: 0.0, SMALL_SPACE, n_trials=1, seed=0)
    with pytest.raises(ValueError, match="made by tune_model"):
        tune.resume_trial(other, 0, X, y)


def test_tune_digits_checkpoints_and_resume_without_data(tmp_path):
    study = tune.tune_digits(SMALL_SPACE, epochs=1, n_trials=1, seed=0,
                             checkpoint_dir=tmp_path / "ckpt")
    child = tune.resume_trial(study, 0, lr=2e-3, epochs=1)
    assert child.state == "complete" and child.value > 0.5 and child.reports.keys() == {2}


# ------------------------------------------------------------------------------------------
# The command line
# ------------------------------------------------------------------------------------------

def _table_values(text: str) -> list[float]:
    rows = re.findall(r"^\s*(\d+)\s+complete\s+([0-9.]+)\s", text, flags=re.M)
    return [float(value) for _, value in rows]


def test_cli_tune_then_report(tmp_path, capsys):
    db = tmp_path / "study.db"
    code = cli.main(["tune", "--trials", "3", "--epochs", "2", "--storage", str(db),
                     "--seed", "0"])
    out = capsys.readouterr().out
    assert code == 0
    assert len(re.findall(r"^trial\s+\d+ complete", out, flags=re.M)) == 3
    best = re.search(r"best: trial (\d+), val_accuracy (\d\.\d+)", out)
    assert best and float(best.group(2)) > 0.5
    study = tune.load_study(db)
    assert len(study.trials) == 3 and study.seed == 0
    assert study.best_trial.number == int(best.group(1))

    code = cli.main(["tune", "report", str(db), "--top", "2"])
    report = capsys.readouterr().out
    assert code == 0
    values = _table_values(report)
    assert len(values) == 2 and values == sorted(values, reverse=True)
    assert values[0] == pytest.approx(study.best_value, abs=1e-5)
    assert "seed 0" in report and "3 complete" in report


def test_cli_tune_resumes_the_same_storage(tmp_path, capsys):
    db = tmp_path / "study.db"
    assert cli.main(["tune", "--trials", "2", "--epochs", "1", "--storage", str(db),
                     "--strategy", "coarse_to_fine", "--seed", "4"]) == 0
    first = tune.load_study(db).trials
    capsys.readouterr()
    assert cli.main(["tune", "--trials", "4", "--epochs", "1", "--storage", str(db)]) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"^trial\s+\d+ complete", out, flags=re.M)) == 2  # only the new
    study = tune.load_study(db)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert study.trials[:2] == first and study.strategy.name == "coarse_to_fine"
    code = cli.main(["tune", "--trials", "5", "--epochs", "1", "--storage", str(db),
                     "--strategy", "bayes"])
    assert code == 2
    assert "different strategy" in capsys.readouterr().err


def test_cli_report_writes_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    db = tmp_path / "study.db"
    tune.search(lambda p, t: -abs(p["lr"] - 0.01) - (1 - p["beta1"]),
                {"lr": tune.LogUniform(1e-4, 1e-1), "beta1": tune.OneMinusLogUniform(0.9, 0.999)},
                n_trials=8, seed=0, storage=db)
    plots = tmp_path / "plots"
    assert cli.main(["tune", "report", str(db), "--plots", str(plots)]) == 0
    out = capsys.readouterr().out
    for name in ("value_vs_lr.png", "value_vs_one_minus_beta.png", "best_so_far.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert name in out


def test_cli_report_plots_without_matplotlib_name_the_extra(tmp_path, monkeypatch, capsys):
    db = tmp_path / "study.db"
    tune.search(lambda p, t: p["lr"], {"lr": tune.LogUniform(1e-4, 1e-1)}, n_trials=2,
                seed=0, storage=db)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli.main(["tune", "report", str(db), "--plots", str(tmp_path / "p")]) == 2
    assert 'pip install "fastnn-cpu[plot]"' in capsys.readouterr().err


def test_cli_report_shows_failures_and_coarse_to_fine_boxes(tmp_path, capsys):
    db = tmp_path / "study.db"

    def objective(params, trial):
        if trial.number == 1:
            raise RuntimeError("boom in trial one")
        return params["x"]

    tune.search(objective, {"x": tune.Uniform(0.0, 1.0)}, "coarse_to_fine", n_trials=6,
                seed=0, storage=db, rounds=2)
    assert cli.main(["tune", "report", str(db)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s*1\s+failed .*RuntimeError: boom in trial one", out, flags=re.M)
    assert re.search(r"round 1 box: x=\[", out)
    values = _table_values(out)
    assert values == sorted(values, reverse=True) and len(values) == 5


def test_cli_tune_staged_on_a_csv_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(-2, 1, (60, 3)), rng.normal(2, 1, (60, 3))])
    path = tmp_path / "two.csv"
    with open(path, "w") as fh:
        for row, label in zip(X, ["left"] * 60 + ["right"] * 60, strict=True):
            fh.write(",".join(f"{v:.5f}" for v in row) + f",{label}\n")
    db = tmp_path / "study.db"
    code = cli.main(["tune", "--data", str(path), "--staged", "--trials", "6", "--epochs",
                     "3", "--seed", "1", "--storage", str(db)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "120 samples, 3 features, 2 classes" in out
    assert "strategy staged" in out
    assert float(re.search(r"val_accuracy (\d\.\d+)", out).group(1)) > 0.8
    assert cli.main(["tune", "report", str(db)]) == 0
    report = capsys.readouterr().out
    assert re.search(r"stage 1: lr \(random, trials 0\.\.1\), best lr=", report), report
    assert "stage 3: layers, label_smoothing, dropout" in report  # decay is cosine (fixed)


def test_cli_tune_as_a_user_runs_it(tmp_path):
    db = tmp_path / "study.db"
    done = _fastnn("tune", "--trials", "2", "--epochs", "1", "--jobs", "2", "--storage",
                   str(db), "--seed", "3")
    assert done.returncode == 0, done.stderr
    assert "bundled UCI digits" in done.stdout and "2 worker(s)" in done.stdout
    report = _fastnn("tune", "report", str(db))
    assert report.returncode == 0, report.stderr
    assert len(_table_values(report.stdout)) == 2


@pytest.mark.parametrize("flags, says, stored", [
    ([], "each trial is 5-fold cross-validated on the 96 training rows (--cv 5)",
     {"cv": 5, "validation_split": None}),
    (["--cv", "3"], "each trial is 3-fold cross-validated on the 96 training rows (--cv 3): 3 "
     "models, each trained on about 64 and scored on the other 32", {"cv": 3}),
    (["--validation-split", "0.25"], "each trial trains on about 72 and is scored on about 24 "
     "validation rows (--validation-split 0.25)", {"validation_split": 0.25}),
    (["--checkpoint-dir", "ckpt"], "scored on about 20 validation rows (--validation-split 0.2)",
     {"validation_split": 0.2}),
])
def test_cli_tune_scores_by_cross_validation_unless_told(flags, says, stored, tmp_path,
                                                         capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal(-1, 1, (60, 4)), rng.normal(1, 1, (60, 4))])
    np.savez(tmp_path / "two.npz", X=X, y=np.repeat([0, 1], 60))
    code = cli.main(["tune", "--data", "two.npz", "--trials", "2", "--epochs", "2", "--seed",
                     "0", "--storage", "s.db", *flags])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "24 test rows held out" in out and says in out
    with tune.load_study(tmp_path / "s.db") as study:
        settings = study.user_attrs["tune_model"]
        assert all(t.state == "complete" for t in study.trials)
    assert {k: settings.get(k) for k in stored} == stored


@pytest.mark.parametrize("args, message", [
    (["report", "/no/such/study.db"], "no such study file"),
    (["--storage", "/no/such/dir/study.db"], "storage directory '/no/such/dir' does not exist"),
    (["--strategy", "annealing"], "invalid choice"),
    (["--jobs", "0"], "expected a positive integer"),
    (["--trials", "-2"], "expected a positive integer"),
    (["--data", "/no/such/file.csv"], "no such file"),
    (["--space", "/no/such/space.json"], "no such space file"),
    (["--cv", "1"], "expected a number of folds of at least 2; got 1"),
    (["--cv", "3", "--validation-split", "0.2"], "not allowed with argument --cv"),
    (["--cv", "3", "--checkpoint-dir", "ckpt"], "--checkpoint-dir keeps one model per trial"),
    (["--cv", "5000"], r"--cv 5000: more folds than the 1438 training rows"),
])
def test_cli_tune_bad_arguments_exit_2_with_one_line(args, message, capsys):
    code = _main(["tune", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err


def test_cli_tune_space_file(tmp_path, capsys):
    space = tmp_path / "space.json"
    space.write_text('{"lr": {"type": "LogUniform", "low": 0.001, "high": 0.01}, '
                     '"hidden": 16, "batch_size": 128}')
    assert cli.main(["tune", "--space", str(space), "--trials", "2", "--epochs", "1",
                     "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"lr=0\.00\d+ hidden=16 batch_size=128", out)
    space.write_text('{"lr": {"type": "LogUniform", "low": -1, "high": 0.01}}')
    assert cli.main(["tune", "--space", str(space), "--trials", "1"]) == 2
    assert "low must be > 0" in capsys.readouterr().err


def test_import_fastnn_does_not_import_tune():
    code = "import sys, fastnn; assert 'fastnn.tune' not in sys.modules, 'eager import'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=NEUTRAL_DIR, env=dict(os.environ), timeout=60)
    assert done.returncode == 0, done.stderr


def test_cli_tune_dask_without_distributed_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)
    assert cli.main(["tune", "--dask", "local", "--trials", "1", "--epochs", "1"]) == 2
    assert 'pip install "fastnn-cpu[dask]"' in capsys.readouterr().err


@pytest.mark.slow
def test_tune_cli_fails_a_trial_that_overruns_trial_timeout(tmp_path):
    storage = tmp_path / "s.db"
    done = _fastnn("tune", "--trials", "2", "--epochs", "300", "--trial-timeout", "0.05",
                   "--storage", str(storage))
    assert "Traceback" not in done.stderr
    assert done.stdout.count("TimeoutError: the trial ran longer than trial_timeout") == 2
    study = tune.load_study(str(storage))
    assert [t.state for t in study.trials] == ["failed", "failed"]
    bad = _fastnn("tune", "--trials", "2", "--trial-timeout", "0")
    assert bad.returncode == 2 and "--trial-timeout" in bad.stderr
