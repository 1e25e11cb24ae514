"""Peak working memory / data size: fit, predict, evaluate and the scikit-learn estimators on
a float32 X in memory and on a memory-mapped ``.npy`` (``np.load(path, mmap_mode="r")``),
float32 and float64 files.

Working memory is NumPy's allocations as tracemalloc sees them (NumPy reports its data
buffers to tracemalloc), the peak above what was allocated before the call; the pages of a
memory-mapped file are the file's (page cache), not counted. Data: 200,000 rows x 64
features (51.2 MB as float32), labels of 10 classes; network 64-32-10 with BatchNorm,
batch 256, one epoch. ``extra_info``: ``peak_mb`` and ``peak_ratio`` (peak / the float32
data's bytes). What remains per row: fit keeps the encoded labels and the epoch's order
(~24 bytes a row), predict and evaluate their outputs (and evaluate its loss gradient).

Each entry checks its result: fit's loss is finite and the model's weights changed;
predictions equal those from the in-memory float32 array.
"""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest

import fastnn
from fastnn.layers import BatchNorm, Dense, ReLU, Softmax

N, WIDTH, CLASSES = 200_000, 64, 10
SOURCES = ("memory-f32", "memmap-f32", "memmap-f64")
CALLS = ("fit-shuffle", "fit-blocks", "fit-in-order", "predict", "evaluate",
         "classifier-fit", "classifier-predict_proba")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    y = rng.integers(0, CLASSES, N)
    X = (rng.standard_normal((N, WIDTH)) + y[:, None] * 0.1).astype(np.float32)
    folder = tmp_path_factory.mktemp("memory")
    np.save(folder / "f32.npy", X)
    np.save(folder / "f64.npy", X.astype(np.float64))
    return {"memory-f32": X, "memmap-f32": np.load(folder / "f32.npy", mmap_mode="r"),
            "memmap-f64": np.load(folder / "f64.npy", mmap_mode="r"), "y": y}


def _model():
    return fastnn.Sequential([Dense(32), BatchNorm(), ReLU(), Dense(CLASSES), Softmax()],
                             input_dim=WIDTH, seed=0)


def _peak(fn):
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = fn()
        return result, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def _call(call, X, y, reference):
    """(function to measure, check of its result)."""
    if call.startswith("fit"):
        shuffle = {"fit-shuffle": True, "fit-blocks": "blocks", "fit-in-order": False}[call]
        model = _model()
        start = model._params.copy()

        def check(history):
            assert np.isfinite(history.history["loss"][0])
            assert not np.array_equal(model._params, start)
        return (lambda: model.fit(X, y, epochs=1, batch_size=256, verbose=0,
                                  shuffle=shuffle, block_rows=8192)), check
    if call in ("predict", "evaluate"):
        model = reference["model"]
        if call == "predict":
            return (lambda: model.predict(X)), (
                lambda out: np.testing.assert_array_equal(out, reference["predict"]))
        return (lambda: model.evaluate(X, y)), (
            lambda out: np.testing.assert_allclose(out["loss"], reference["loss"], rtol=1e-6))
    from fastnn.sklearn import FastNNClassifier

    if call == "classifier-fit":
        clf = FastNNClassifier(hidden_layer_sizes=(32,), max_iter=1, random_state=0)

        def fit():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # one epoch: the ConvergenceWarning
                return clf.fit(X, y)
        return fit, lambda est: np.isfinite(est.loss_) or pytest.fail("loss not finite")
    clf = reference["classifier"]
    return (lambda: clf.predict_proba(X)), (
        lambda out: np.testing.assert_array_equal(out, reference["proba"]))


@pytest.fixture(scope="module")
def reference(data):
    pytest.importorskip("sklearn")
    from fastnn.sklearn import FastNNClassifier

    X, y = data["memory-f32"], data["y"]
    model = _model()
    model.fit(X[:20_000], y[:20_000], epochs=1, batch_size=256, verbose=0)
    clf = FastNNClassifier(hidden_layer_sizes=(32,), max_iter=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(X[:20_000], y[:20_000])
    return {"model": model, "predict": model.predict(X), "loss": model.evaluate(X, y)["loss"],
            "classifier": clf, "proba": clf.predict_proba(X)}


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("call", CALLS)
def test_peak_working_memory(benchmark, data, reference, call, source):
    X, y = data[source], data["y"]
    fn, check = _call(call, X, y, reference)
    fn()  # warm: buffers and compiled plans that any first call makes
    fn, check = _call(call, X, y, reference)
    result, peak = _peak(fn)
    check(result)
    benchmark.group = f"memory-{call}"
    benchmark.pedantic(fn, rounds=1, iterations=1)
    nbytes = data["memory-f32"].nbytes
    benchmark.extra_info.update(bench="memory", call=call, source=source, rows=N,
                                data_mb=nbytes / 1e6, peak_mb=peak / 1e6,
                                peak_ratio=peak / nbytes)
    print(f"\n{call:26s} {source:11s} peak {peak / 1e6:7.2f} MB = {peak / nbytes:.3f} x data")
