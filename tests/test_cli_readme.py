"""README's drop-in table: each stated difference from MLPClassifier / MLPRegressor holds,
checked against scikit-learn itself."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPClassifier, MLPRegressor  # noqa: E402

from fastnn.sklearn import FastNNClassifier, FastNNRegressor  # noqa: E402

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_the_table_names_each_difference():
    table = README[README.index("| | scikit-learn's MLP |"):]
    table = table[:table.index("\n\n")]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert [re.split(r"\s*\|\s*", row)[1] for row in rows[1:]] == [
        "batch norm", "binary classification", "`loss_` of a regressor", "`solver`"]


def test_batch_norm_is_on_by_default():
    assert FastNNClassifier().batch_norm is True and FastNNRegressor().batch_norm is True
    assert "batch_norm" not in MLPClassifier().get_params()


def test_binary_problems_get_two_softmax_units():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = (X[:, 0] > 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = FastNNClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0).fit(X, y)
        theirs = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0).fit(X, y)
    assert (ours.n_outputs_, ours.out_activation_) == (2, "softmax")
    assert (theirs.n_outputs_, theirs.out_activation_) == (1, "logistic")


def test_regressor_loss_is_the_full_squared_error_twice_mlpregressors():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 3.0
    # a rate so small that the weights stay put during the one epoch: loss_ is then the
    # loss of the fitted model's own predictions
    kwargs = dict(hidden_layer_sizes=(8,), max_iter=1, learning_rate_init=1e-9, alpha=0.0,
                  batch_size=200, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = FastNNRegressor(batch_norm=False, **kwargs).fit(X, y)
        theirs = MLPRegressor(**kwargs).fit(X, y)
    assert ours.loss_ == pytest.approx(np.mean((y - ours.predict(X)) ** 2), rel=1e-4)
    assert theirs.loss_ == pytest.approx(np.mean((y - theirs.predict(X)) ** 2) / 2, rel=1e-4)


def test_there_is_no_lbfgs():
    assert "lbfgs" in MLPClassifier._parameter_constraints["solver"][0].options
    with pytest.raises(ValueError, match="solver"):
        FastNNClassifier(solver="lbfgs").fit(np.zeros((4, 2)), [0, 1, 0, 1])
