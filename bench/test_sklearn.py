"""FastNNClassifier against scikit-learn's MLPClassifier on the bundled digits.

One group, ``sklearn-digits``: both estimators fit the same standardised training split (the
fixed split of ``fastnn train``) with the same hidden sizes, batch size, Adam rate and number
of epochs; the timed call is one whole ``fit``, reported per epoch in ``extra_info``. Each
entry checks its held-out accuracy (the fastnn one must be at least MLPClassifier's, measured
once per session on the same split).
"""

from __future__ import annotations

import warnings

import pytest

pytest.importorskip("sklearn")

from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from fastnn import datasets  # noqa: E402
from fastnn.sklearn import FastNNClassifier  # noqa: E402

EPOCHS = 30
COMMON = {"hidden_layer_sizes": (128,), "batch_size": 32, "learning_rate_init": 1e-3,
          "max_iter": EPOCHS, "random_state": 0, "tol": 0.0, "n_iter_no_change": EPOCHS + 1}
ESTIMATORS = {"fastnn": lambda: FastNNClassifier(**COMMON),
              "mlpclassifier": lambda: MLPClassifier(**COMMON)}


@pytest.fixture(scope="module")
def digits():
    X, y = datasets.load_digits(dtype="float64")
    X_train, X_test, y_train, y_test = datasets.train_test_split(X, y, test_size=0.2, seed=0)
    scaler = StandardScaler().fit(X_train)
    return scaler.transform(X_train), scaler.transform(X_test), y_train, y_test


@pytest.fixture(scope="module")
def mlp_accuracy(digits):
    X_train, X_test, y_train, y_test = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return ESTIMATORS["mlpclassifier"]().fit(X_train, y_train).score(X_test, y_test)


@pytest.mark.benchmark(group="sklearn-digits")
@pytest.mark.parametrize("impl", list(ESTIMATORS))
def test_fit_digits(benchmark, digits, mlp_accuracy, impl):
    X_train, X_test, y_train, y_test = digits
    fitted = {}

    def fit():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fitted["est"] = ESTIMATORS[impl]().fit(X_train, y_train)

    benchmark.pedantic(fit, rounds=3, iterations=1, warmup_rounds=1)
    est = fitted["est"]
    accuracy = est.score(X_test, y_test)
    assert est.n_iter_ == EPOCHS
    benchmark.extra_info.update({"kernel": "sklearn-digits", "impl": impl, "epochs": EPOCHS,
                                 "accuracy": accuracy, "mlp_accuracy": mlp_accuracy})
    assert accuracy > 0.95
    if impl == "fastnn":
        assert accuracy >= mlp_accuracy, (accuracy, mlp_accuracy)
