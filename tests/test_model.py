"""Sequential: eval-mode inference (BatchNorm folding), labels, and input validation.

Every rejected call must raise ValueError/TypeError naming the argument and leave
the model exactly as it was (weights, epochs, optimizer state, classes; an unbuilt
model stays unbuilt).
"""

from __future__ import annotations

import numpy as np
import pytest
from reference import model_forward

import fastnn
from fastnn.callbacks import EarlyStopping
from fastnn.layers import BatchNorm, Dense, Dropout, LeakyReLU, ReLU, Softmax, Tanh

# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


def _blobs(n, d, centers, seed, spread=4.0):
    rng = np.random.default_rng(seed)
    means = rng.uniform(-spread, spread, (centers, d))
    y = rng.integers(0, centers, n)
    X = means[y] + rng.standard_normal((n, d))
    return X, y


def _folding_model(dtype):
    # A leading BatchNorm (a "scale" step), a Dense with a forced bias before a BatchNorm,
    # Dense->BatchNorm pairs without bias, Dropout (skipped in eval), a fused Softmax.
    return fastnn.Sequential(
        [BatchNorm(), Dense(16, use_bias=True), BatchNorm(), ReLU(), Dropout(0.2), Dense(12),
         BatchNorm(), Tanh(), Dense(8), LeakyReLU(0.05), Dense(4), Softmax()],
        dtype=dtype, seed=0)


@pytest.fixture(scope="module")
def blobs():
    X, y = _blobs(300, 6, 4, seed=1)
    return X * 3.0 + 2.0, y  # off-centre, off-scale inputs: non-trivial running statistics


# ----------------------------------------------------------------------------------------
# 3. BatchNorm folding and eval-mode predictions
# ----------------------------------------------------------------------------------------


FOLD_TOL = {"float32": {"rtol": 2e-5, "atol": 2e-5}, "float64": {"rtol": 1e-11, "atol": 1e-12}}
REF_TOL = {"float32": {"rtol": 1e-4, "atol": 1e-4}, "float64": {"rtol": 1e-10, "atol": 1e-11}}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_folded_inference_equals_unfolded_and_reference(backend, dtype, blobs):
    X, y = blobs
    model = _folding_model(dtype)
    model.fit(X, y, epochs=3, batch_size=32, verbose=0)
    bns = [layer for layer in model.layers if isinstance(layer, BatchNorm)]
    # The running statistics moved far from their initial values (mean 0, variance 1); the
    # second BatchNorm's mean stays ~0: its Dense bias gets no gradient through BatchNorm.
    for bn in bns:
        assert np.abs(bn.s["running_var"] - 1).max() > 0.5
    assert np.abs(bns[0].s["running_mean"]).max() > 0.5
    assert np.abs(bns[2].s["running_mean"]).max() > 0.5
    states = model._states.copy()
    Xc = np.ascontiguousarray(X, dtype=dtype)
    for logits in (False, True):
        folded = model._infer(Xc, logits=logits, fold=True)
        unfolded = model._infer(Xc, logits=logits, fold=False)
        assert folded.dtype == unfolded.dtype == np.dtype(dtype)
        np.testing.assert_allclose(folded, unfolded, **FOLD_TOL[dtype])
    np.testing.assert_array_equal(model._states, states)  # inference never updates state
    reference = model_forward(model, X.astype(dtype))
    np.testing.assert_allclose(model.predict_proba(X), reference, **REF_TOL[dtype])
    # The plan really folds: one affine step per Dense, no BatchNorm layer left.
    plan = model._inference_plan()
    kinds = [step[0] for step in plan]
    assert kinds.count("affine") == 4 and kinds.count("scale") == 1
    assert not any(kind == "layer" and isinstance(step[0], (BatchNorm, Dropout))
                   for kind, *step in plan)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_predict_proba_rows_sum_to_one_and_single_row_matches_batch(backend, dtype, blobs):
    X, y = blobs
    model = _folding_model(dtype)
    model.fit(X, y, epochs=2, batch_size=32, verbose=0)
    probs = model.predict_proba(X)
    assert probs.shape == (300, 4) and probs.dtype == np.dtype(dtype)
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6 if dtype == "float32" else 1e-13)
    labels = model.predict(X)
    np.testing.assert_array_equal(labels, np.argmax(probs, axis=1))
    for i in (0, 17, 299):
        one = model.predict_proba(X[i:i + 1])
        np.testing.assert_allclose(one[0], probs[i], **FOLD_TOL[dtype])
        assert model.predict(X[i:i + 1])[0] == labels[i]
    # A row inside a different batch: still independent of its neighbours (eval mode).
    np.testing.assert_allclose(model.predict_proba(X[::-1])[::-1], probs, **FOLD_TOL[dtype])


def test_predict_in_chunks_matches_reference(backend):
    # More rows than one inference chunk (4096).
    X, y = _blobs(4100, 3, 3, seed=2)
    model = fastnn.Sequential([Dense(5), BatchNorm(), ReLU(), Dense(3), Softmax()],
                              dtype="float64", seed=1)
    model.fit(X[:200], y[:200], epochs=1, batch_size=50, verbose=0)
    np.testing.assert_allclose(model.predict_proba(X), model_forward(model, X),
                               rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------
# 6. Labels
# ----------------------------------------------------------------------------------------


def _classifier(outputs=3, seed=0):
    return fastnn.Sequential([Dense(16), BatchNorm(), ReLU(), Dense(outputs), Softmax()],
                             seed=seed)


@pytest.fixture(scope="module")
def separable():
    X, y = _blobs(240, 4, 3, seed=3, spread=6.0)
    return X, y


def test_integer_labels_map_to_themselves(separable):
    X, y = separable
    model = _classifier()
    model.fit(X, y, epochs=15, batch_size=24, verbose=0, seed=0)
    np.testing.assert_array_equal(model.classes_, [0, 1, 2])
    pred = model.predict(X)
    np.testing.assert_array_equal(pred, np.argmax(model.predict_proba(X), axis=1))
    assert np.mean(pred == y) > 0.95
    # A subset of 0..C-1 also maps to itself (no re-indexing of {0, 2}).
    sub = _classifier()
    keep = y != 1
    sub.fit(X[keep], y[keep], epochs=1, verbose=0)
    np.testing.assert_array_equal(sub.classes_, [0, 1, 2])


@pytest.mark.parametrize("labels", [np.array([3, 7, 9]), np.array(["cat", "dog", "emu"]),
                                    np.array([-5, 0, 100])], ids=["ints", "strings", "neg"])
def test_arbitrary_labels_map_to_indices_and_back(separable, labels):
    X, y = separable
    y_labels = labels[y]
    model = _classifier()
    model.fit(X, y_labels, epochs=15, batch_size=24, verbose=0, seed=0)
    np.testing.assert_array_equal(model.classes_, np.sort(labels))
    pred = model.predict(X)
    assert pred.dtype.kind == labels.dtype.kind
    assert set(pred.tolist()) <= set(labels.tolist())
    np.testing.assert_array_equal(pred, np.sort(labels)[np.argmax(model.predict_proba(X), 1)])
    assert np.mean(pred == y_labels) > 0.95
    result = model.evaluate(X, y_labels)
    assert result["accuracy"] == pytest.approx(np.mean(pred == y_labels))
    # The loss uses index = position of the label among the sorted classes.
    index = np.searchsorted(np.sort(labels), y_labels)
    probs = model.predict_proba(X).astype(np.float64)
    assert result["loss"] == pytest.approx(-np.mean(np.log(probs[np.arange(240), index])),
                                           rel=1e-4)


def test_integer_valued_float_labels_accepted(separable):
    X, y = separable
    a, b = _classifier(), _classifier()
    a.fit(X, y, epochs=2, verbose=0, seed=1)
    b.fit(X, y.astype(np.float64), epochs=2, verbose=0, seed=1)
    np.testing.assert_array_equal(b.classes_, [0, 1, 2])
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    c = _classifier()
    c.fit(X, np.array([3.0, 7.0, 9.0])[y], epochs=1, verbose=0)
    np.testing.assert_array_equal(c.classes_, [3, 7, 9])
    assert set(c.predict(X).tolist()) <= {3, 7, 9}


@pytest.mark.parametrize("bad", [0.5, np.nan, np.inf])
def test_non_integer_float_labels_rejected(separable, bad):
    X, y = separable
    y_bad = y.astype(np.float64)
    y_bad[5] = bad
    model = _classifier()
    with pytest.raises(ValueError, match="y has non-integer float labels"):
        model.fit(X, y_bad, verbose=0)
    assert not model.built and model.classes_ is None


# ----------------------------------------------------------------------------------------
# 5. Input validation: fit / predict / evaluate reject bad input, model unchanged
# ----------------------------------------------------------------------------------------


def _snapshot(model):
    snap = {"built": model.built, "epochs": model.epochs_trained,
            "classes": None if model.classes_ is None else model.classes_.copy(),
            "optimizer": model.optimizer, "history": model.history,
            "train_seed": model.train_seed}
    if model.built:
        snap["weights"] = model.get_weights()
    if model.optimizer is not None:
        snap["iterations"] = model.optimizer.iterations
        snap["lr"] = model.optimizer.lr
        snap["opt_state"] = {k: v.copy() for k, v in model.optimizer.state_arrays().items()}
    return snap


def _assert_unchanged(model, snap):
    after = _snapshot(model)
    assert after.keys() == snap.keys()
    for key, value in snap.items():
        if key == "weights":
            for a, b in zip(after[key], value, strict=True):
                np.testing.assert_array_equal(a, b)
        elif key == "opt_state":
            assert after[key].keys() == value.keys()
            for name in value:
                np.testing.assert_array_equal(after[key][name], value[name])
        elif key == "classes":
            assert (after[key] is None) == (value is None)
            if value is not None:
                np.testing.assert_array_equal(after[key], value)
        elif key in ("optimizer", "history"):
            assert after[key] is value
        else:
            assert after[key] == value, key


N, D = 40, 4
_rng = np.random.default_rng(30)
X0 = _rng.standard_normal((N, D))
Y0 = _rng.integers(0, 3, N)
X_NAN = X0.copy()
X_NAN[7, 2] = np.nan
X_INF = X0.copy()
X_INF[0, 0] = -np.inf
SW_NAN = np.ones(N)
SW_NAN[3] = np.nan
SW_INF = np.ones(N)
SW_INF[0] = np.inf
SW_NEG = np.ones(N)
SW_NEG[0] = -1.0


class _NotACallback:
    def on_epoch_end(self, epoch, logs=None):  # duck-typed: still rejected
        pass


# name -> (X, y, fit kwargs, exception, message regex); None means "the default data".
FIT_CASES = {
    "X nan": (X_NAN, None, {}, ValueError, r"X contains NaN or inf \(first at row 7, column 2"),
    "X inf": (X_INF, None, {}, ValueError, "X contains NaN or inf"),
    "X empty": (np.empty((0, D)), np.empty(0, np.int64), {}, ValueError, "X is empty"),
    "X 1-D": (X0[:, 0], None, {}, ValueError, "X must be 2-D"),
    "X strings": (X0.astype(str), None, {}, TypeError, "X must be numeric"),
    "X None": (None, None, {"X": None}, ValueError, "X is required"),
    "y short": (None, Y0[:-1], {}, ValueError, r"y must have 40 entries .*got shape \(39,\)"),
    "y long": (None, np.append(Y0, 0), {}, ValueError, "y must have 40 entries"),
    "y None": (None, None, {"y": None}, ValueError, "y is required"),
    "y 2-D": (None, Y0[:, None], {}, ValueError, "y must be 1-D class labels"),
    # Unbuilt: "y has 4 classes but the model has only 3 outputs"; built: an unknown label.
    "y four classes": (None, np.arange(N) % 4 + 10, {}, ValueError,
                       "y has (4 classes but the model has only 3 outputs|label .*10)"),
    "y two string classes": (None, np.array(["a", "b"])[Y0 % 2], {}, ValueError,
                             "y has (2 classes .* for a model with 3 outputs|labels of dtype)"),
    "batch_size 0": (None, None, {"batch_size": 0}, ValueError, "batch_size must be an integer"),
    "batch_size -3": (None, None, {"batch_size": -3}, ValueError, "batch_size"),
    "batch_size True": (None, None, {"batch_size": True}, TypeError,
                        r"batch_size must be an integer >= 1; got True \(bool\)"),
    "batch_size 2.5": (None, None, {"batch_size": 2.5}, TypeError,
                       r"batch_size must be an integer >= 1; got 2.5 \(float\)"),
    "batch_size 1 with BatchNorm": (None, None, {"batch_size": 1}, ValueError,
                                    "BatchNorm needs at least 2 samples.*batch_size=1"),
    "epochs -1": (None, None, {"epochs": -1}, ValueError, "epochs must be an integer >= 0"),
    "epochs 1.5": (None, None, {"epochs": 1.5}, TypeError, "epochs must be an integer >= 0"),
    "epochs True": (None, None, {"epochs": True}, TypeError, "epochs must be an integer >= 0"),
    "validation_split 1": (None, None, {"validation_split": 1.0}, ValueError,
                           "validation_split"),
    "validation_split -0.1": (None, None, {"validation_split": -0.1}, ValueError,
                              "validation_split"),
    "validation_split nan": (None, None, {"validation_split": float("nan")}, ValueError,
                             "validation_split"),
    "validation_split str": (None, None, {"validation_split": "0.2"}, ValueError,
                             "validation_split"),
    "validation_split empties train": (None, None, {"validation_split": 0.99}, ValueError,
                                       "validation_split=0.99 leaves 0 of 40"),
    "validation both": (None, None, {"validation_split": 0.2, "validation_data": (X0, Y0)},
                        ValueError, "validation_data or validation_split, not both"),
    "validation_data not a tuple": (None, None, {"validation_data": X0}, ValueError,
                                    "validation_data must be a tuple"),
    "validation_data features": (None, None, {"validation_data": (X0[:, :3], Y0)}, ValueError,
                                 "validation_data X has 3 features"),
    "validation_data nan": (None, None, {"validation_data": (X_NAN, Y0)}, ValueError,
                            "validation_data X contains NaN"),
    "validation_data label": (None, None, {"validation_data": (X0, np.full(N, 7))}, ValueError,
                              "validation_data y has label"),
    "callbacks element": (None, None, {"callbacks": [object()]}, TypeError,
                          r"callbacks\[0\] must be a fastnn.callbacks.Callback"),
    "callbacks duck-typed": (None, None, {"callbacks": [_NotACallback()]}, TypeError,
                             r"callbacks\[0\]"),
    "verbose 3": (None, None, {"verbose": 3}, ValueError, "verbose must be 0, 1 or 2"),
    "verbose -1": (None, None, {"verbose": -1}, ValueError, "verbose"),
    "verbose str": (None, None, {"verbose": "2"}, ValueError, "verbose"),
    "sample_weight nan": (None, None, {"sample_weight": SW_NAN}, ValueError, "sample_weight"),
    "sample_weight inf": (None, None, {"sample_weight": SW_INF}, ValueError, "sample_weight"),
    "sample_weight negative": (None, None, {"sample_weight": SW_NEG}, ValueError,
                               "sample_weight"),
    "sample_weight zeros": (None, None, {"sample_weight": np.zeros(N)}, ValueError,
                            "sample_weight"),
    "sample_weight shape": (None, None, {"sample_weight": np.ones(N - 1)}, ValueError,
                            r"sample_weight must have shape \(40,\)"),
    "seed negative": (None, None, {"seed": -1}, ValueError, "seed must be an integer >= 0"),
    "optimizer unknown": (None, None, {"optimizer": "adamax"}, ValueError,
                          "optimizer must be"),
}

# Cases that only apply once the model is built (and has classes 0..2).
BUILT_ONLY = {
    "X features": (X0[:, :3], None, {}, ValueError, "X has 3 features; the model expects 4"),
    "y unknown label": (None, np.where(Y0 == 0, 3, Y0), {}, ValueError,
                        r"y has label .*3.* outside this model's classes 0..2"),
    "y strings for int classes": (None, np.array(["a", "b", "c"])[Y0], {}, ValueError,
                                  "y has labels of dtype"),
}


def _fit_call(model, case):
    X, y, kwargs, exc, match = case
    X = X0 if X is None else X
    args = {"verbose": 0, "epochs": 1, "batch_size": 8, **kwargs}
    if "X" in args:
        X = args.pop("X")
    if "y" in args:
        y = args.pop("y")
    elif y is None:
        y = Y0
    with pytest.raises(exc, match=match):
        model.fit(X, y, **args)


def _trained_model():
    model = fastnn.Sequential([Dense(6), BatchNorm(), ReLU(), Dense(3), Softmax()], seed=4)
    model.fit(X0, Y0, epochs=2, batch_size=8, verbose=0, seed=5)
    return model


@pytest.mark.parametrize("name", sorted({**FIT_CASES, **BUILT_ONLY}))
def test_fit_rejects_bad_input_built_model_unchanged(name):
    model = _trained_model()
    snap = _snapshot(model)
    assert snap["iterations"] == 10 and snap["epochs"] == 2
    _fit_call(model, {**FIT_CASES, **BUILT_ONLY}[name])
    _assert_unchanged(model, snap)
    # Still usable and continuing from where it was.
    model.fit(X0, Y0, epochs=1, batch_size=8, verbose=0)
    assert model.epochs_trained == 3 and model.optimizer.iterations == 15


@pytest.mark.parametrize("name", sorted(FIT_CASES))
def test_fit_rejects_bad_input_unbuilt_model_stays_unbuilt(name):
    model = fastnn.Sequential([Dense(6), BatchNorm(), ReLU(), Dense(3), Softmax()], seed=4)
    snap = _snapshot(model)
    _fit_call(model, FIT_CASES[name])
    _assert_unchanged(model, snap)
    assert not model.built and model.input_dim is None and model.optimizer is None


@pytest.mark.parametrize("bad", [EarlyStopping(monitor="loss"), 5], ids=["single", "int"])
def test_fit_rejects_non_list_callbacks_naming_the_argument(bad):
    model = _trained_model()
    snap = _snapshot(model)
    with pytest.raises(TypeError, match="callbacks"):
        model.fit(X0, Y0, verbose=0, callbacks=bad)
    _assert_unchanged(model, snap)


def test_fit_rejects_callback_monitoring_unreported_metric_before_training():
    model = _trained_model()
    snap = _snapshot(model)
    with pytest.raises(ValueError, match="val_loss"):
        model.fit(X0, Y0, epochs=2, verbose=0, callbacks=[EarlyStopping(monitor="val_loss")])
    _assert_unchanged(model, snap)


PREDICT_CASES = {
    "features": (np.hstack([X0, X0[:, :1]]), ValueError, "X has 5 features; the model expects 4"),
    "nan": (X_NAN, ValueError, "X contains NaN or inf"),
    "inf": (X_INF, ValueError, "X contains NaN or inf"),
    "empty": (np.empty((0, D)), ValueError, "X is empty"),
    "1-D": (X0[0], ValueError, "X must be 2-D"),
    "strings": (X0.astype(str), TypeError, "X must be numeric"),
    "None": (None, ValueError, "X is required"),
}


@pytest.mark.parametrize("method", ["predict", "predict_proba"])
@pytest.mark.parametrize("name", sorted(PREDICT_CASES))
def test_predict_rejects_bad_input(method, name):
    model = _trained_model()
    snap = _snapshot(model)
    X, exc, match = PREDICT_CASES[name]
    with pytest.raises(exc, match=match):
        getattr(model, method)(X)
    _assert_unchanged(model, snap)


EVALUATE_CASES = {
    "unknown label": (X0, np.where(Y0 == 2, 5, Y0), {}, ValueError,
                      r"y has label .*5.* outside this model's classes"),
    "y length": (X0, Y0[:10], {}, ValueError, "y must have 40 entries"),
    "features": (X0[:, :2], Y0, {}, ValueError, "X has 2 features"),
    "nan": (X_NAN, Y0, {}, ValueError, "X contains NaN"),
    "sample_weight nan": (X0, Y0, {"sample_weight": SW_NAN}, ValueError, "sample_weight"),
    "sample_weight inf": (X0, Y0, {"sample_weight": SW_INF}, ValueError, "sample_weight"),
    "float label": (X0, Y0 + 0.5, {}, ValueError, "non-integer float labels"),
}


@pytest.mark.parametrize("name", sorted(EVALUATE_CASES))
def test_evaluate_rejects_bad_input(name):
    model = _trained_model()
    snap = _snapshot(model)
    X, y, kwargs, exc, match = EVALUATE_CASES[name]
    with pytest.raises(exc, match=match):
        model.evaluate(X, y, **kwargs)
    _assert_unchanged(model, snap)


def test_evaluate_unknown_string_label():
    model = fastnn.Sequential([Dense(4), ReLU(), Dense(3), Softmax()], seed=0)
    labels = np.array(["a", "b", "c"])
    model.fit(X0, labels[Y0], epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"y has label .*zebra.* not among this model's classes"):
        model.evaluate(X0, np.where(Y0 == 0, "zebra", labels[Y0]))
    with pytest.raises(ValueError, match=r"y has label .*not among this model's classes"):
        model.evaluate(X0, Y0)


def test_unbuilt_model_predict_and_weights_raise():
    model = fastnn.Sequential([Dense(4), ReLU(), Dense(3), Softmax()])
    for call in (lambda: model.predict(X0), lambda: model.predict_proba(X0),
                 lambda: model.evaluate(X0, Y0), model.get_weights, model.summary):
        with pytest.raises(RuntimeError, match="not built"):
            call()
    assert not model.built


def test_evaluate_matches_independent_loss_and_accuracy(backend):
    model = fastnn.Sequential([Dense(6), BatchNorm(), Tanh(), Dense(3), Softmax()],
                              dtype="float64", seed=6)
    model.fit(X0, Y0, epochs=3, batch_size=8, verbose=0)
    weights = np.random.default_rng(7).uniform(0.0, 2.0, N)
    probs = model_forward(model, X0)
    rows = -np.log(probs[np.arange(N), Y0])
    result = model.evaluate(X0, Y0, sample_weight=weights)
    assert result["loss"] == pytest.approx(np.dot(weights, rows) / weights.sum(), rel=1e-10)
    correct = np.argmax(probs, axis=1) == Y0
    assert result["accuracy"] == pytest.approx(np.dot(weights, correct) / weights.sum())
    plain = model.evaluate(X0, Y0)
    assert plain["loss"] == pytest.approx(rows.mean(), rel=1e-10)
    assert plain["accuracy"] == pytest.approx(correct.mean())


def test_regressor_targets_shape_round_trip(backend):
    X = X0
    y1 = X0 @ np.array([1.0, -2.0, 0.5, 0.0])
    model = fastnn.Sequential([Dense(8), Tanh(), Dense(1)], dtype="float64", seed=0)
    model.fit(X, y1, epochs=2, verbose=0)
    assert model.predict(X).shape == (N,)
    model2 = fastnn.Sequential([Dense(8), Tanh(), Dense(1)], dtype="float64", seed=0)
    model2.fit(X, y1[:, None], epochs=2, verbose=0)
    assert model2.predict(X).shape == (N, 1)
    np.testing.assert_allclose(model2.predict(X)[:, 0], model.predict(X), rtol=1e-12)
    with pytest.raises(TypeError, match="predict_proba needs a classifier"):
        model.predict_proba(X)
    with pytest.raises(ValueError, match=r"y must have shape \(40,\) or \(40, 1\)"):
        model.fit(X, np.ones((N, 2)), verbose=0)
    y_nan = y1.copy()
    y_nan[0] = np.nan
    with pytest.raises(ValueError, match="y contains NaN or inf"):
        model.fit(X, y_nan, verbose=0)


def test_class_labels_for_a_model_without_softmax_say_to_add_one():
    # A classifier whose last layer is not Softmax is a regressor: the message says so
    # and names the fix, instead of listing the shape it was given as allowed.
    model = fastnn.Sequential([Dense(8), ReLU(), Dense(3)], seed=0)
    with pytest.raises(ValueError, match=r"y must have shape \(40, 3\) for a regressor with 3 "
                       r"outputs; got \(40,\)\. y looks like class labels: .*end it with "
                       r"Softmax\(\) for classification"):
        model.fit(X0, Y0, verbose=0)
    assert not model.built  # rejected before anything changed
    one = fastnn.Sequential([Dense(8), ReLU(), Dense(1)], seed=0)
    with pytest.raises(ValueError, match=r"must have shape \(40,\) or \(40, 1\) for a "
                       r"regressor with 1 output; got \(40, 2\)$"):
        one.fit(X0, np.zeros((N, 2)), verbose=0)
