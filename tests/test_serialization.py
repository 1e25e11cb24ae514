"""save / load: exact round trips, exact resumption, atomic writes, clear errors on bad files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import fastnn
from fastnn.layers import BatchNorm, Dense, Dropout, ReLU, Softmax, Tanh
from fastnn.optimizers import SGD, Adam, RMSprop
from fastnn.schedules import ExponentialDecay, StepDecay


def _data(n=120, d=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-2, 2, (classes, d))
    y = rng.integers(0, classes, n)
    return centers[y] + rng.standard_normal((n, d)), y


def _model(dtype="float32", seed=1, classes=3):
    return fastnn.Sequential([Dense(16), BatchNorm(), ReLU(), Dropout(0.25), Dense(8), Tanh(),
                              Dense(classes), Softmax()], dtype=dtype, seed=seed)


def _assert_same_weights(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb)
    for x, y in zip(wa, wb, strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def _assert_same_history(a, b):
    assert a.epoch == b.epoch
    assert a.history == b.history  # float == : bit for bit
    assert a.stop_reason == b.stop_reason


# ----------------------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("labels", [None, np.array(["setosa", "versicolor", "virginica"]),
                                    np.array([10, 20, 30])], ids=["ints", "strings", "codes"])
def test_save_load_round_trip(tmp_path, dtype, labels):
    X, y = _data()
    y_fit = y if labels is None else labels[y]
    model = _model(dtype)
    opt = Adam(StepDecay(0.01, drop=0.5, every=2), beta_2=0.99, amsgrad=True)
    model.fit(X, y_fit, epochs=3, batch_size=16, optimizer=opt, validation_split=0.25,
              seed=9, verbose=0)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = fastnn.load(path)
    assert loaded.dtype == np.dtype(dtype)
    _assert_same_weights(model, loaded)
    np.testing.assert_array_equal(loaded._params, model._params)
    np.testing.assert_array_equal(loaded._states, model._states)
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    np.testing.assert_array_equal(loaded.classes_, model.classes_)
    if labels is not None:
        assert loaded.predict(X).dtype.kind == labels.dtype.kind
        assert set(loaded.predict(X).tolist()) <= set(labels.tolist())
    assert loaded.evaluate(X, y_fit) == model.evaluate(X, y_fit)
    assert loaded.epochs_trained == 3 and loaded.train_seed == 9
    _assert_same_history(loaded.history, model.history)
    assert loaded.history.history["lr"] == [0.01, 0.01, 0.005]
    # The optimizer: class, configuration (schedule included), step count, state arrays.
    lopt = loaded.optimizer
    assert type(lopt) is Adam and lopt is not opt
    assert lopt.get_config() == opt.get_config()
    assert lopt.iterations == opt.iterations == 3 * 6
    assert isinstance(lopt.learning_rate, StepDecay)
    assert sorted(lopt.state_arrays()) == ["m", "v", "v_max"]
    for name, arr in opt.state_arrays().items():
        assert lopt.state_arrays()[name].dtype == arr.dtype
        np.testing.assert_array_equal(lopt.state_arrays()[name], arr)
    assert loaded.get_config() == model.get_config()
    assert repr(loaded) == repr(model)


def test_save_load_regressor_and_unfitted_model(tmp_path):
    X, _ = _data()
    model = fastnn.Sequential([Dense(8), Tanh(), Dense(1)], input_dim=5, dtype="float64",
                              seed=2)
    model.save(tmp_path / "fresh.npz")  # built, never fitted: no optimizer, no history
    fresh = fastnn.load(tmp_path / "fresh.npz")
    assert fresh.optimizer is None and fresh.history is None and fresh.epochs_trained == 0
    np.testing.assert_array_equal(fresh.predict(X), model.predict(X))
    model.fit(X, X[:, 0] - X[:, 1], epochs=2, verbose=0, optimizer=SGD(0.01, momentum=0.5))
    model.save(str(tmp_path / "reg.npz"))  # a str path works too
    loaded = fastnn.load(str(tmp_path / "reg.npz"))
    assert loaded.predict(X).shape == (120,)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    np.testing.assert_array_equal(loaded.optimizer.state_arrays()["velocity"],
                                  model.optimizer.state_arrays()["velocity"])


def test_save_unbuilt_model_raises(tmp_path):
    model = fastnn.Sequential([Dense(3), Softmax()])
    with pytest.raises(RuntimeError, match="not built"):
        model.save(tmp_path / "x.npz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("optimizer", [
    lambda: Adam(StepDecay(0.02, drop=0.5, every=1)),
    lambda: RMSprop(ExponentialDecay(0.01, 0.8), momentum=0.5, centered=True),
    lambda: SGD(ExponentialDecay(0.1, 0.7, per_step=True), momentum=0.9, nesterov=True),
], ids=["adam-step", "rmsprop-exp", "sgd-per-step"])
def test_resumed_training_is_identical(backend, tmp_path, optimizer):
    X, y = _data(150, seed=3)
    labels = np.array(["a", "b", "c"])[y]

    def fit(model, epochs):
        return model.fit(X, labels, epochs=epochs, batch_size=16, validation_split=0.2,
                         verbose=0)  # shuffled, Dropout, seeds from the model

    straight = _model("float64")
    straight.fit(X, labels, epochs=0, optimizer=optimizer(), verbose=0)
    h_all = fit(straight, 4)

    first = _model("float64")
    first.fit(X, labels, epochs=0, optimizer=optimizer(), verbose=0)
    h_first = fit(first, 2)
    first.save(tmp_path / "half.npz")
    resumed = fastnn.load(tmp_path / "half.npz")
    _assert_same_history(resumed.history, h_first)
    h_second = fit(resumed, 2)

    assert h_first.epoch + h_second.epoch == h_all.epoch == [0, 1, 2, 3]
    for key in h_all.history:
        assert h_first.history[key] + h_second.history[key] == h_all.history[key], key
    assert len(set(h_all.history["lr"])) > 1  # the schedule really changed the rate
    _assert_same_weights(straight, resumed)
    assert resumed.optimizer.iterations == straight.optimizer.iterations
    for name, arr in straight.optimizer.state_arrays().items():
        np.testing.assert_array_equal(resumed.optimizer.state_arrays()[name], arr)
    assert resumed.epochs_trained == straight.epochs_trained == 4


# ----------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------


def test_failed_replace_leaves_previous_file_and_no_temp(tmp_path, monkeypatch):
    X, y = _data()
    model = _model()
    model.fit(X, y, epochs=1, verbose=0)
    path = tmp_path / "model.npz"
    model.save(path)
    saved = path.read_bytes()
    before = model.predict_proba(X)
    model.fit(X, y, epochs=1, verbose=0)  # now different
    assert not np.array_equal(model.predict_proba(X), before)

    def failing_replace(src, dst, *args, **kwargs):
        assert os.path.exists(src)  # the complete temporary file was written
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(fastnn.serialization.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        model.save(path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]  # no temp left
    assert path.read_bytes() == saved
    old = fastnn.load(path)
    assert old.epochs_trained == 1
    np.testing.assert_array_equal(old.predict_proba(X), before)


_SAVER = textwrap.dedent("""
    import sys
    import fastnn
    from fastnn.layers import Dense, ReLU, Softmax

    path = sys.argv[1]
    model = fastnn.Sequential([Dense(1024), ReLU(), Dense(1024), Dense(10), Softmax()],
                              input_dim=768, seed=0)
    i = 0
    while True:
        i += 1
        model._params.fill(i)  # each version is recognisable: every parameter equals i
        model.epochs_trained = i
        model.save(path)
        if i == 1:
            print(fastnn.__file__, flush=True)
""")


def test_sigkill_during_save_leaves_a_loadable_file(tmp_path):
    script = tmp_path / "saver.py"
    script.write_text(_SAVER)
    path = tmp_path / "big.npz"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(fastnn.__file__))
    rng = np.random.default_rng(0)
    interrupted = 0
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()  # after the first complete save
            assert line.strip() == fastnn.__file__, proc.stderr.read()
            time.sleep(rng.uniform(0.0, 0.15))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        temps = [p for p in tmp_path.iterdir() if p.name.startswith(".big.npz.")]
        interrupted += bool(temps)
        for p in temps:  # a killed writer cannot clean up; the target must still be whole
            p.unlink()
        loaded = fastnn.load(path)
        version = loaded.epochs_trained
        assert version >= 1
        np.testing.assert_array_equal(loaded._params, np.full(loaded.n_params, version,
                                                              np.float32))
    assert interrupted >= 1  # at least one kill really landed in the middle of a save


# ----------------------------------------------------------------------------------------
# Bad files: clear errors naming the file
# ----------------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    X, y = _data()
    model = _model()
    model.fit(X, y, epochs=1, verbose=0)
    path = tmp_path / "good.npz"
    model.save(path)
    return path


def _entries(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def test_truncated_file(saved, tmp_path):
    raw = saved.read_bytes()
    for i, cut in enumerate((len(raw) // 2, len(raw) - 30, 100, 10, 0)):
        bad = tmp_path / f"truncated{i}.npz"
        bad.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match=f"truncated{i}.npz(: not a valid| is not a "
                                             f"readable) fastnn model file"):
            fastnn.load(bad)


def test_foreign_npz(tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, weights=np.arange(5.0))
    with pytest.raises(ValueError, match=r"foreign.npz is not a fastnn model.*'weights'"):
        fastnn.load(path)


def test_pickle_bearing_npz_is_never_unpickled(saved, tmp_path):
    marker = tmp_path / "unpickled.marker"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))  # unpickling would create the marker file

    entries = _entries(saved)
    entries["extra"] = np.array([Payload()], dtype=object)
    path = tmp_path / "pickled.npz"
    np.savez(path, **entries)
    with pytest.raises(ValueError, match="pickled.npz: array .extra. holds Python objects.*"
                       "pickled data is refused"):
        fastnn.load(path)
    # Without a fastnn config it is simply not a fastnn model.
    bare = tmp_path / "bare.npz"
    np.savez(bare, payload=np.array([Payload()], dtype=object))
    with pytest.raises(ValueError, match="bare.npz is not a fastnn model"):
        fastnn.load(bare)
    assert not marker.exists()


def test_random_bytes_file(tmp_path):
    path = tmp_path / "noise.bin"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ValueError, match="noise.bin"):
        fastnn.load(path)


@pytest.mark.parametrize("content", [b"sepal_length,species\n5.1,setosa\n",
                                     np.random.default_rng(1).bytes(300)], ids=["csv", "noise"])
def test_non_npz_file_is_not_reported_as_pickled(tmp_path, content):
    path = tmp_path / "data.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        fastnn.load(path)
    assert "data.csv" in str(info.value)
    assert "pickled" not in str(info.value)


def test_npy_file(tmp_path):
    path = tmp_path / "array.npy"
    np.save(path, np.arange(4.0))
    with pytest.raises(ValueError, match="array.npy"):
        fastnn.load(path)


def _rewrite_config(saved, tmp_path, name, change):
    entries = _entries(saved)
    config = json.loads(str(entries["fastnn_config"]))
    config = change(config)
    entries["fastnn_config"] = np.array(json.dumps(config))
    path = tmp_path / name
    np.savez(path, **entries)
    return path


def test_future_format_version(saved, tmp_path):
    def bump(config):
        config["format_version"] = fastnn.serialization.FORMAT_VERSION + 1
        return config

    path = _rewrite_config(saved, tmp_path, "future.npz", bump)
    with pytest.raises(ValueError, match=r"future.npz has format version 2; .* reads versions "
                                         r"up to 1"):
        fastnn.load(path)


def test_wrong_format_name_and_inconsistent_arrays(saved, tmp_path):
    def rename(config):
        config["format"] = "something-else"
        return config

    path = _rewrite_config(saved, tmp_path, "other.npz", rename)
    with pytest.raises(ValueError, match="other.npz is not a fastnn model"):
        fastnn.load(path)
    entries = _entries(saved)
    entries["params"] = entries["params"][:-1]
    short = tmp_path / "short.npz"
    np.savez(short, **entries)
    with pytest.raises(ValueError, match="short.npz: the saved model is inconsistent"):
        fastnn.load(short)


def test_config_that_is_not_a_json_object(saved, tmp_path):
    path = _rewrite_config(saved, tmp_path, "listconfig.npz", lambda config: [1, 2])
    with pytest.raises(ValueError, match="listconfig.npz is not a fastnn model"):
        fastnn.load(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "model.npz"
    with pytest.raises(FileNotFoundError, match="model.npz"):
        fastnn.load(path)
