"""Predictions from many threads at once on one model equal the single-threaded ones,
bit for bit (inference shares no scratch buffer between calls)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fastnn
from fastnn.layers import BatchNorm, Dense, Dropout, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh

N_THREADS = 4
CALLS = 40


def _model():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 6)).astype(np.float32) * 3 + 1
    y = (X[:, 0] > 1).astype(np.int64) + (X[:, 1] > 1)
    # every eval step kind: a leading BatchNorm (scale), folded Dense+BatchNorm, activations
    # run as layers, Dropout (identity), a final Softmax
    model = fastnn.Sequential(
        [BatchNorm(), Dense(16), BatchNorm(), ReLU(), Dropout(0.1), Dense(12), Tanh(),
         Dense(8), LeakyReLU(0.1), Dense(8), Sigmoid(), Dense(3), Softmax()], seed=0)
    model.fit(X, y, epochs=2, batch_size=32, verbose=0)
    return model, rng


def _hammer(fn, inputs):
    """fn(inputs[k]) from N_THREADS threads, each over every input CALLS times in its own
    order; every result, keyed by (thread, call)."""
    results, errors = {}, []
    start = threading.Barrier(N_THREADS)

    def worker(t):
        order = np.random.default_rng(t).integers(0, len(inputs), CALLS)
        start.wait()
        try:
            for c, k in enumerate(order):
                results[t, c] = (int(k), fn(inputs[k]))
        except Exception as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(N_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return results


@pytest.mark.parametrize("method", ["predict_proba", "predict"])
def test_concurrent_predictions_equal_single_threaded(method):
    model, rng = _model()
    # same shapes from every thread (the old per-shape scratch buffers collided there)
    inputs = [rng.standard_normal((64, 6)).astype(np.float32) for _ in range(6)]
    fn = getattr(model, method)
    expected = [fn(x) for x in inputs]
    results = _hammer(fn, inputs)
    assert len(results) == N_THREADS * CALLS
    for (k, got) in results.values():
        np.testing.assert_array_equal(got, expected[k])


def test_concurrent_estimator_predict_proba_equals_single_threaded():
    sk = pytest.importorskip("fastnn.sklearn", exc_type=ImportError)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((150, 5))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = sk.FastNNClassifier(hidden_layer_sizes=(16, 8), activation="tanh", max_iter=5,
                                  random_state=0).fit(X, y)
    inputs = [rng.standard_normal((32, 5)) for _ in range(5)]
    expected = [clf.predict_proba(x) for x in inputs]
    for (k, got) in _hammer(clf.predict_proba, inputs).values():
        np.testing.assert_array_equal(got, expected[k])
