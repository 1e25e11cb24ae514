"""Callbacks: EarlyStopping, ModelCheckpoint, LearningRateScheduler, CSVLogger, progress."""

from __future__ import annotations

import csv
import re
import sys
import time

import numpy as np
import pytest

import fastnn
from fastnn.callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    LearningRateScheduler,
    ModelCheckpoint,
)
from fastnn.layers import BatchNorm, Dense, Dropout, ReLU, Softmax, Tanh
from fastnn.optimizers import SGD


def _data(n=96, d=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-2, 2, (classes, d))
    y = rng.integers(0, classes, n)
    return centers[y] + rng.standard_normal((n, d)), y


def _model(seed=0):
    return fastnn.Sequential([Dense(12), BatchNorm(), ReLU(), Dropout(0.2), Dense(3), Softmax()],
                             seed=seed)


class _Inject(Callback):
    """Puts a scripted metric into the epoch logs (listed before the callback under test)."""

    def __init__(self, name, values):
        self.name, self.values = name, values

    def on_epoch_end(self, epoch, logs=None):
        logs[self.name] = self.values[epoch]


class _Capture(Callback):
    """get_weights() at the end of every epoch."""

    def __init__(self):
        self.weights = {}

    def on_epoch_end(self, epoch, logs=None):
        self.weights[epoch] = self.model.get_weights()


def _assert_weights_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def _assert_weights_differ(a, b):
    assert any(not np.array_equal(x, y) for x, y in zip(a, b, strict=True))


# ----------------------------------------------------------------------------------------
# EarlyStopping
# ----------------------------------------------------------------------------------------

SCORES = [5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 3.05, 2.0, 1.0, 0.5]  # best at epoch 2, then worse


def test_early_stopping_restores_best_weights():
    X, y = _data()
    model = _model()
    capture, stop = _Capture(), EarlyStopping(monitor="score", patience=2,
                                              restore_best_weights=True)
    history = model.fit(X, y, epochs=10, batch_size=16, verbose=0,
                        callbacks=[_Inject("score", SCORES), stop, capture])
    ran = len(history.epoch)
    assert 3 < ran < 8  # stopped early, after the best epoch, before the next improvement
    assert stop.best == 3.0 and stop.best_epoch == 2 and stop.stopped_epoch == ran - 1
    assert model.epochs_trained == ran
    assert history.stop_reason == model.stop_reason
    assert "early stopping: score did not improve" in history.stop_reason
    assert "at epoch 3" in history.stop_reason  # 1-based
    _assert_weights_differ(capture.weights[ran - 1], capture.weights[2])
    _assert_weights_equal(model.get_weights(), capture.weights[2])  # incl. BatchNorm stats


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_early_stopping_stops_after_patience_epochs_without_improvement(patience):
    X, y = _data()
    model = _model()
    history = model.fit(X, y, epochs=10, batch_size=16, verbose=0, callbacks=[
        _Inject("score", SCORES), EarlyStopping(monitor="score", patience=patience)])
    assert history.epoch == list(range(3 + patience))  # best at 2, then `patience` bad ones


def test_early_stopping_patience_zero_min_delta_and_mode():
    X, y = _data()
    # min_delta: improvements of 0.05 or less do not count; patience=0 stops at the first.
    stop = EarlyStopping(monitor="score", patience=0, min_delta=0.1)
    history = _model().fit(X, y, epochs=6, batch_size=32, verbose=0, callbacks=[
        _Inject("score", [1.0, 0.8, 0.75, 0.5, 0.4, 0.3]), stop])
    assert history.epoch == [0, 1, 2]
    assert stop.best == 0.8 and stop.best_epoch == 1
    # "acc" in the name means maximise (mode auto).
    stop = EarlyStopping(monitor="val_accuracy", patience=0)
    assert stop.mode == "max"
    history = _model().fit(X, y, epochs=6, batch_size=32, verbose=0, validation_data=(X, y),
                           callbacks=[_Inject("val_accuracy", [0.5, 0.6, 0.6, 0.9, 0.9, 0.9]),
                                      stop])
    assert history.epoch == [0, 1, 2] and stop.best == 0.6
    assert EarlyStopping(monitor="val_loss").mode == "min"
    # Without a stop the weights are not touched (restore only after a stop, as Keras 2).
    capture = _Capture()
    model = _model()
    model.fit(X, y, epochs=3, batch_size=32, verbose=0, callbacks=[
        _Inject("score", [3.0, 2.0, 2.5]), EarlyStopping("score", patience=5,
                                                         restore_best_weights=True), capture])
    _assert_weights_equal(model.get_weights(), capture.weights[2])


def test_early_stopping_on_real_validation_loss():
    X, y = _data(160)
    model = _model()
    stop = EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
    capture = _Capture()
    history = model.fit(X, y, epochs=60, batch_size=16, verbose=0, validation_split=0.25,
                        optimizer=SGD(0.5, momentum=0.9), callbacks=[stop, capture])
    val = history.history["val_loss"]
    best = int(np.argmin(val))
    assert stop.best_epoch == best and stop.best == val[best]
    assert stop.stopped_epoch == len(val) - 1 < 59  # SGD(0.5) overshoots: it stops
    assert all(v >= val[best] for v in val[best + 1:])
    _assert_weights_equal(model.get_weights(), capture.weights[best])


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    ({"patience": -1}, ValueError, "patience"),
    ({"patience": 1.5}, TypeError, r"patience must be an integer >= 0; got 1.5 \(float\)"),
    ({"min_delta": -0.1}, ValueError, "min_delta"),
    ({"min_delta": float("nan")}, ValueError, "min_delta"),
    ({"mode": "up"}, ValueError, "mode"),
])
def test_early_stopping_rejects_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        EarlyStopping(**kwargs)


def test_monitoring_an_unreported_metric_is_an_error(tmp_path):
    X, y = _data()
    with pytest.raises(ValueError, match="EarlyStopping monitors 'val_loss'.*validation"):
        _model().fit(X, y, epochs=2, verbose=0, callbacks=[EarlyStopping("val_loss")])
    with pytest.raises(ValueError, match="ModelCheckpoint monitors 'val_loss'"):
        _model().fit(X, y, epochs=2, verbose=0, callbacks=[
            ModelCheckpoint(tmp_path / "x.npz", save_best_only=True)])
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------
# ModelCheckpoint
# ----------------------------------------------------------------------------------------


def test_model_checkpoint_every_epoch(tmp_path):
    X, y = _data()
    model = _model()
    capture = _Capture()
    ckpt = ModelCheckpoint(tmp_path / "ckpt-{epoch:02d}-{loss:.4f}.npz")
    history = model.fit(X, y, epochs=4, batch_size=16, verbose=0, callbacks=[ckpt, capture])
    names = sorted(p.name for p in tmp_path.iterdir())
    expected = [f"ckpt-{e + 1:02d}-{history.history['loss'][e]:.4f}.npz" for e in range(4)]
    assert names == sorted(expected)
    assert ckpt.saved == [str(tmp_path / name) for name in expected]
    for epoch, name in enumerate(expected):
        loaded = fastnn.load(tmp_path / name)
        assert loaded.epochs_trained == epoch + 1
        _assert_weights_equal(loaded.get_weights(), capture.weights[epoch])
        assert loaded.optimizer.iterations == 6 * (epoch + 1)


def test_model_checkpoint_save_best_only(tmp_path):
    X, y = _data()
    model = _model()
    capture = _Capture()
    scores = [3.0, 2.0, 2.5, 1.0, 1.5, 1.0]
    ckpt_min = ModelCheckpoint(tmp_path / "min-{epoch}.npz", monitor="score",
                               save_best_only=True, mode="min")
    ckpt_max = ModelCheckpoint(tmp_path / "max-{epoch}.npz", monitor="score",
                               save_best_only=True, mode="max")
    latest = ModelCheckpoint(tmp_path / "best.npz", monitor="score", save_best_only=True,
                             mode="min")
    model.fit(X, y, epochs=6, batch_size=16, verbose=0,
              callbacks=[_Inject("score", scores), ckpt_min, ckpt_max, latest, capture])
    # Improvements only (a tie is not one): min at epochs 1, 2, 4; max at epoch 1 only.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.npz", "max-1.npz", "min-1.npz", "min-2.npz", "min-4.npz"]
    for epoch in (1, 2, 4):
        loaded = fastnn.load(tmp_path / f"min-{epoch}.npz")
        assert loaded.epochs_trained == epoch
        _assert_weights_equal(loaded.get_weights(), capture.weights[epoch - 1])
    best = fastnn.load(tmp_path / "best.npz")
    assert best.epochs_trained == 4
    _assert_weights_equal(best.get_weights(), capture.weights[3])
    assert latest.saved == [str(tmp_path / "best.npz")] * 3


# ----------------------------------------------------------------------------------------
# LearningRateScheduler
# ----------------------------------------------------------------------------------------


def test_learning_rate_scheduler_sets_the_rate_used():
    X, y = _data()
    model = fastnn.Sequential([Dense(8), Tanh(), Dense(3), Softmax()], seed=0)
    calls = []

    def schedule(epoch, lr):
        calls.append((epoch, lr))
        return [0.05, 0.0, 0.02][epoch % 3]

    capture = _Capture()
    history = model.fit(X, y, epochs=3, batch_size=16, optimizer=SGD(0.1), verbose=0,
                        callbacks=[LearningRateScheduler(schedule), capture])
    assert history.history["lr"] == [0.05, 0.0, 0.02]
    assert calls == [(0, 0.1), (1, 0.05), (2, 0.0)]  # (epoch, the rate in use)
    assert model.optimizer.lr == 0.02
    _assert_weights_equal(capture.weights[1], capture.weights[0])  # lr 0: nothing moved
    _assert_weights_differ(capture.weights[2], capture.weights[1])
    # The rate set by the scheduler is the one the step uses: a scheduled 0.05 step equals
    # a plain SGD(0.05) step from the same start, bit for bit.
    start = fastnn.Sequential([Dense(8), Tanh(), Dense(3), Softmax()], seed=0)
    start.build(5)
    w0 = start._params.copy()
    model2 = fastnn.Sequential([Dense(8), Tanh(), Dense(3), Softmax()], seed=0)
    model2.fit(X[:16], y[:16], epochs=1, batch_size=16, shuffle=False, optimizer=SGD(0.3),
               verbose=0, callbacks=[LearningRateScheduler(lambda e, lr: 0.05)])
    model3 = fastnn.Sequential([Dense(8), Tanh(), Dense(3), Softmax()], seed=0)
    model3.fit(X[:16], y[:16], epochs=1, batch_size=16, shuffle=False, optimizer=SGD(0.05),
               verbose=0)
    np.testing.assert_array_equal(model2._params, model3._params)
    assert not np.array_equal(model2._params, w0)
    # Continuing: the scheduler sees global epoch numbers.
    calls.clear()
    model.fit(X, y, epochs=2, verbose=0, callbacks=[LearningRateScheduler(schedule)])
    assert [c[0] for c in calls] == [3, 4]


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf")])
def test_learning_rate_scheduler_rejects_bad_rates(value):
    X, y = _data()
    with pytest.raises(ValueError, match="the schedule returned lr="):
        _model().fit(X, y, verbose=0, callbacks=[LearningRateScheduler(lambda e, lr: value)])
    with pytest.raises(TypeError, match="schedule must be callable"):
        LearningRateScheduler(0.1)


# ----------------------------------------------------------------------------------------
# CSVLogger
# ----------------------------------------------------------------------------------------


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_csv_logger_header_and_rows(tmp_path):
    X, y = _data()
    path = tmp_path / "log.csv"
    model = _model()
    history = model.fit(X, y, epochs=3, batch_size=16, validation_split=0.25, verbose=0,
                        callbacks=[CSVLogger(path)])
    rows = _read_csv(path)
    keys = ["accuracy", "loss", "lr", "val_accuracy", "val_loss"]
    assert rows[0] == ["epoch", *keys]
    assert len(rows) == 4
    for epoch, row in enumerate(rows[1:]):
        assert int(row[0]) == epoch
        for key, cell in zip(keys, row[1:], strict=True):
            assert float(cell) == history.history[key][epoch]  # exact: repr round-trips

    # append=True continues the file without a second header; epochs keep counting.
    history2 = model.fit(X, y, epochs=2, batch_size=16, validation_split=0.25, verbose=0,
                         callbacks=[CSVLogger(path, append=True)])
    rows = _read_csv(path)
    assert len(rows) == 6 and rows.count(rows[0]) == 1
    assert [int(r[0]) for r in rows[1:]] == [0, 1, 2, 3, 4]
    assert float(rows[-1][2]) == history2.history["loss"][-1]
    # append=False starts over.
    model.fit(X, y, epochs=1, verbose=0, callbacks=[CSVLogger(path, separator=";")])
    rows = [line.split(";") for line in path.read_text().splitlines()]
    assert rows[0] == ["epoch", "accuracy", "loss", "lr"] and len(rows) == 2
    assert rows[1][0] == "5"


# ----------------------------------------------------------------------------------------
# Progress output
# ----------------------------------------------------------------------------------------


def test_verbose_0_prints_nothing(capsys):
    X, y = _data()
    _model().fit(X, y, epochs=2, verbose=0, validation_split=0.2)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_verbose_2_prints_one_line_per_epoch(capsys):
    X, y = _data()
    history = _model().fit(X, y, epochs=3, batch_size=16, verbose=2)
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert len(lines) == 3 and "\r" not in out.out and out.err == ""
    for i, line in enumerate(lines):
        assert re.match(rf"Epoch {i + 1}/3 - \d+\.\d\ds - loss: ", line), line
        assert f"loss: {history.history['loss'][i]:.4f}" in line
        assert f"accuracy: {history.history['accuracy'][i]:.4f}" in line
        assert "lr: 0.001" in line


def test_verbose_1_plain_progress_bar_without_tqdm(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    X, y = _data()
    history = _model().fit(X, y, epochs=2, batch_size=16, verbose=1)
    out = capsys.readouterr().out
    epochs = out.split("\n")
    assert epochs[-1] == "" and len(epochs) == 3  # one finished line per epoch
    for i, text in enumerate(epochs[:2]):
        draws = text.split("\r")[1:]
        assert draws, text
        assert draws[-1].startswith(f"Epoch {i + 1}/2 [{'=' * 30}] 6/6 - loss: ")
        for draw in draws:
            bar = re.match(rf"Epoch {i + 1}/2 \[([=>.]{{30}})\] (\d)/6 - loss: \d+\.\d{{4}}",
                           draw)
            assert bar, draw
        assert f"- loss: {history.history['loss'][i]:.4f} - accuracy: " in draws[-1]


class _Slow(fastnn.callbacks.Callback):
    def on_batch_end(self, batch, logs=None):
        time.sleep(0.04)


@pytest.mark.parametrize("slow", [False, True])
def test_verbose_1_tqdm_bar_one_finished_line_per_epoch(capsys, slow):
    pytest.importorskip("tqdm", reason="the progress extra (tqdm) is not installed")
    X, y = _data()
    history = _model().fit(X, y, epochs=2, batch_size=16, verbose=1,
                           callbacks=[_Slow()] if slow else [])
    out = capsys.readouterr()
    text = out.out + out.err
    epochs = text.split("\n")
    assert epochs[-1] == "" and len(epochs) == 3, text
    for i, line in enumerate(epochs[:2]):
        draws = [d for d in line.split("\r") if d]
        assert draws[-1].startswith(f"Epoch {i + 1}/2: 100%"), line
        assert "6/6" in draws[-1]
        assert f"loss: {history.history['loss'][i]:.4f}" in draws[-1]
        assert f"accuracy: {history.history['accuracy'][i]:.4f}" in draws[-1]
        # a quick epoch is drawn once, when it ends; a slow one (0.24 s) also as it goes
        assert len(draws) >= 2 if slow else len(draws) == 1, draws


class _StopAt(fastnn.callbacks.Callback):
    def on_batch_end(self, batch, logs=None):
        if batch == 2:
            raise KeyboardInterrupt


def test_verbose_1_tqdm_line_of_an_interrupted_epoch_says_where_it_stopped(capsys):
    pytest.importorskip("tqdm", reason="the progress extra (tqdm) is not installed")
    X, y = _data()
    with pytest.raises(KeyboardInterrupt):
        _model().fit(X, y, epochs=2, batch_size=16, verbose=1, callbacks=[_StopAt()])
    out = capsys.readouterr()
    lines = (out.out + out.err).split("\n")
    assert lines[-1] == "" and len(lines) == 2, lines
    # the bar had seen batches 0 and 1 (the callback raised in batch 2, before it)
    assert re.match(r"Epoch 1/2:  33%\|.*\| 2/6 \[.*loss=\d+\.\d{4}\]$", lines[0]), lines[0]


# ----------------------------------------------------------------------------------------
# History
# ----------------------------------------------------------------------------------------


def test_history_records_global_epochs_and_metrics():
    X, y = _data()
    model = _model()
    h1 = model.fit(X, y, epochs=2, verbose=0, validation_data=(X[:20], y[:20]))
    assert h1.epoch == [0, 1]
    assert sorted(h1.history) == ["accuracy", "loss", "lr", "val_accuracy", "val_loss"]
    assert all(len(v) == 2 for v in h1.history.values())
    assert h1.history["val_loss"][-1] == model.evaluate(X[:20], y[:20])["loss"]
    h2 = model.fit(X, y, epochs=1, verbose=0)
    assert h2.epoch == [2] and model.history is h2 and h1.epoch == [0, 1]
    assert repr(h2) == "History(1 epochs: loss, accuracy, lr)"
    assert model.fit(X, y, epochs=0, verbose=0).epoch == []


class _Batches(fastnn.callbacks.Callback):
    def __init__(self):
        self.seen = []

    def on_batch_end(self, batch, logs=None):
        self.seen.append((batch, logs["loss"]))


@pytest.mark.parametrize("verbose", [0, 1])
def test_a_callback_with_on_batch_end_gets_every_batch_and_the_running_loss(verbose,
                                                                           capsys):
    X, y = _data()
    cb = _Batches()
    history = _model().fit(X, y, epochs=2, batch_size=16, verbose=verbose, callbacks=[cb])
    capsys.readouterr()
    assert [b for b, _ in cb.seen] == list(range(6)) * 2
    assert cb.seen[5][1] == pytest.approx(history.history["loss"][0], rel=1e-12)
    assert cb.seen[11][1] == pytest.approx(history.history["loss"][1], rel=1e-12)


def test_the_progress_bar_is_drawn_sparingly_but_always_finishes(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    calls = []
    real = fastnn.callbacks.ProgressBar.on_batch_end
    monkeypatch.setattr(fastnn.callbacks.ProgressBar, "on_batch_end",
                        lambda self, batch, logs=None: (calls.append(batch),
                                                        real(self, batch, logs)))
    X, y = _data(n=4000)
    _model().fit(X, y, epochs=1, batch_size=8, verbose=1)  # 500 quick batches
    out = capsys.readouterr().out
    assert calls[-1] == 499 and 0 in calls
    assert len(calls) < 100, len(calls)  # about 20 a second, not 500
    assert f"[{'=' * 30}] 500/500 - loss: " in out
