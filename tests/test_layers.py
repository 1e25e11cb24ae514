"""Layers inside a model: whole-model gradient checks, summary, get/set_weights.

The gradient checks run the model's own training path (``_forward``, the loss,
``_backward``) and compare ``model._grads`` with central differences of the loss
over every entry of the flat parameter buffer, in float64. BatchNorm runs in
training mode (batch statistics), Dropout with a generator seeded identically for
every forward (the same mask each time).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from reference import cross_entropy, model_forward

import fastnn
from fastnn.layers import BatchNorm, Dense, Dropout, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from fastnn.losses import SoftmaxCrossEntropy

# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


def _loss(model, X, y, seed, sample_weight=None):
    """The training-mode loss (writes the output gradient into the model's buffer)."""
    rng = None if seed is None else np.random.default_rng(seed)
    out = model._forward(X, rng)
    grad = model._output_grad_buffer(X.shape[0])
    return model.loss(out, y, grad, sample_weight=sample_weight), grad


def _analytic(model, X, y, seed, sample_weight=None):
    loss, grad = _loss(model, X, y, seed, sample_weight)
    model._grads[...] = np.nan  # every entry must be written by the backward pass
    model._backward(grad)
    return loss, model._grads.copy()


def _numerical(model, X, y, seed, sample_weight=None, h=1e-6):
    params = model._params
    num = np.empty(params.size)
    for i in range(params.size):
        keep = params[i]
        params[i] = keep + h
        up = _loss(model, X, y, seed, sample_weight)[0]
        params[i] = keep - h
        down = _loss(model, X, y, seed, sample_weight)[0]
        params[i] = keep
        num[i] = (up - down) / (2 * h)
    return num


def _check_gradient(model, X, y, seed=None, sample_weight=None):
    states = model._states.copy()
    params = model._params.copy()
    loss, analytic = _analytic(model, X, y, seed, sample_weight)
    numeric = _numerical(model, X, y, seed, sample_weight)
    # Nothing left perturbed; restore the running statistics the forwards updated.
    np.testing.assert_array_equal(model._params, params)
    model._states[...] = states
    assert np.isfinite(loss)
    assert np.all(np.isfinite(analytic))
    assert np.abs(analytic).max() > 1e-3  # a meaningful check, not all zeros
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)
    return loss


def _data(n, d, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) * 1.5 + 0.3


# ----------------------------------------------------------------------------------------
# 1. Whole-model finite-difference gradient checks (float64)
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_kind", ["plain", "smoothed_weighted", "sample_weight"])
def test_gradient_check_classifier_all_activations(backend, loss_kind):
    X = _data(12, 5)
    y = np.random.default_rng(1).integers(0, 3, 12)
    loss = (SoftmaxCrossEntropy(label_smoothing=0.1, class_weight=[0.5, 2.0, 1.0])
            if loss_kind == "smoothed_weighted" else None)
    model = fastnn.Sequential(
        [Dense(7), BatchNorm(), ReLU(), Dense(6), BatchNorm(), LeakyReLU(0.1), Dense(5), Tanh(),
         Dense(5), BatchNorm(), Sigmoid(), Dense(3), Softmax()],
        input_dim=5, dtype="float64", seed=3, loss=loss)
    assert model.fused_softmax
    sample_weight = (np.random.default_rng(2).uniform(0.1, 3.0, 12)
                     if loss_kind == "sample_weight" else None)
    value = _check_gradient(model, X, y, sample_weight=sample_weight)

    # The loss itself against an independent forward (training-mode BatchNorm).
    probs = model_forward(model, X, training=True)
    logits = np.log(probs)  # log-softmax of the logits, which cross_entropy re-normalises
    if loss_kind == "plain":
        expected = cross_entropy(logits, y)
    elif loss_kind == "smoothed_weighted":
        expected = cross_entropy(logits, y, smoothing=0.1, weight=[0.5, 2.0, 1.0])
    else:
        rows = -logits[np.arange(12), y]
        expected = float(np.dot(sample_weight, rows) / sample_weight.sum())
    assert value == pytest.approx(expected, rel=1e-10)


def test_gradient_check_mse_regressor(backend):
    X = _data(10, 4, seed=5)
    y = np.random.default_rng(6).standard_normal((10, 2))
    model = fastnn.Sequential([Dense(6), BatchNorm(), Tanh(), Dense(5), LeakyReLU(0.2),
                               Dense(4), Sigmoid(), Dense(2)],
                              input_dim=4, dtype="float64", seed=7)
    assert type(model.loss).__name__ == "MeanSquaredError"
    value = _check_gradient(model, X, y)
    out = model_forward(model, X, training=True)
    assert value == pytest.approx(float(np.mean((out - y) ** 2)), rel=1e-10)


def test_gradient_check_with_dropout_fixed_generator(backend):
    X = _data(16, 5, seed=8)
    y = np.random.default_rng(9).integers(0, 3, 16)
    model = fastnn.Sequential([Dense(8), BatchNorm(), ReLU(), Dropout(0.3), Dense(6), Tanh(),
                               Dropout(0.5), Dense(3), Softmax()],
                              input_dim=5, dtype="float64", seed=10)
    # Dropout really is active: the same seed gives the same output, another seed another.
    a = model._forward(X, np.random.default_rng(11)).copy()
    b = model._forward(X, np.random.default_rng(11)).copy()
    c = model._forward(X, np.random.default_rng(12)).copy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    masks = [layer._mask for layer in model.layers if isinstance(layer, Dropout)]
    assert all(m is not None and m.any() and not m.all() for m in masks)
    _check_gradient(model, X, y, seed=11)


def test_gradient_check_standalone_softmax_with_mse(backend):
    X = _data(9, 4, seed=13)
    targets = np.random.default_rng(14).dirichlet(np.ones(4), 9)
    model = fastnn.Sequential([Dense(5), Tanh(), Dense(4), Softmax()], input_dim=4,
                              dtype="float64", seed=15, loss="mse")
    assert not model.fused_softmax
    assert model._train_layers[-1] is model.layers[-1]  # the Softmax runs in training
    value = _check_gradient(model, X, targets)
    probs = model_forward(model, X, training=True)
    assert value == pytest.approx(float(np.mean((probs - targets) ** 2)), rel=1e-10)


# ----------------------------------------------------------------------------------------
# 13. summary(), get_weights / set_weights
# ----------------------------------------------------------------------------------------


def _summary_model():
    return fastnn.Sequential([Dense(16), BatchNorm(), ReLU(), Dense(8, use_bias=True),
                              BatchNorm(), Tanh(), Dropout(0.1), Dense(3), Softmax()],
                             input_dim=5, seed=0)


def test_summary_notes_and_parameter_counts():
    model = _summary_model()
    text = model.summary(print_fn=None)
    rows = {int(m.group(1)): line for line in text.splitlines()
            if (m := re.match(r"(\d+): ", line))}
    assert len(rows) == 9
    assert "no bias: followed by BatchNorm" in rows[0]
    assert "no bias" not in rows[3]  # use_bias=True forces a bias
    assert text.count("no bias") == 1
    # Counts computed by hand: kernel in*out (+ out for a bias); BatchNorm gamma and beta.
    expected = {0: 5 * 16, 1: 2 * 16, 2: 0, 3: 16 * 8 + 8, 4: 2 * 8, 5: 0, 6: 0,
                7: 8 * 3 + 3, 8: 0}
    for i, count in expected.items():
        assert re.search(rf"\(None, \d+\)\s+{count:,}\b", rows[i]), rows[i]
    total = sum(expected.values())
    assert model.n_params == total
    assert f"Total params: {total:,}" in text
    assert f"non-trainable state: {2 * 16 + 2 * 8:,}" in text
    assert model.layers[0].has_bias is False and model.layers[3].has_bias is True
    assert model.layers[7].has_bias is True


def test_summary_prints_with_print_fn(capsys):
    model = _summary_model()
    returned = model.summary()
    assert capsys.readouterr().out == returned + "\n"


def test_get_weights_keras_order_and_semantics():
    model = _summary_model()
    X = _data(64, 5, seed=20)
    y = np.random.default_rng(21).integers(0, 3, 64)
    model.fit(X, y, epochs=2, batch_size=16, verbose=0)
    weights = model.get_weights()
    shapes = [w.shape for w in weights]
    assert shapes == [(5, 16), (16,), (16,), (16,), (16,),
                      (16, 8), (8,), (8,), (8,), (8,), (8,),
                      (8, 3), (3,)]
    bn = model.layers[1]
    for got, ref in zip(weights[1:5], (bn.p["gamma"], bn.p["beta"], bn.s["running_mean"],
                                       bn.s["running_var"]), strict=True):
        np.testing.assert_array_equal(got, ref)
    assert np.all(weights[4] > 0)  # a running variance
    # Copies, not views.
    weights[0][...] = 0
    assert np.abs(model.layers[0].p["kernel"]).max() > 0
    # The eval forward rebuilt from the list (kernel as (in, out)) is what predict computes.
    np.testing.assert_allclose(model.predict_proba(X), model_forward(model, X),
                               rtol=1e-4, atol=1e-5)


def test_set_weights_round_trip_and_copies():
    model = _summary_model()
    rng = np.random.default_rng(22)
    new = [rng.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in model.get_weights()]
    model.set_weights(new)
    for got, ref in zip(model.get_weights(), new, strict=True):
        np.testing.assert_array_equal(got, ref)
    new[0][...] = 7.0
    assert not np.any(model.get_weights()[0] == 7.0)
    X = _data(10, 5, seed=23)
    np.testing.assert_allclose(model.predict_proba(X), model_forward(model, X),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", ["too_few", "too_many", "bad_shape_last", "bad_shape_first",
                                  "nan", "strings"])
def test_set_weights_rejects_without_changing_anything(case):
    model = _summary_model()
    before = model.get_weights()
    new = [w + 1 for w in before]
    if case == "too_few":
        new = new[:-1]
        match = "set_weights needs 13 arrays; got 12"
    elif case == "too_many":
        new = [*new, np.zeros(3)]
        match = "set_weights needs 13 arrays; got 14"
    elif case == "bad_shape_last":
        new[-1] = np.zeros(4)
        match = r"weights\[12\] \(Dense.bias\) must have shape \(3,\)"
    elif case == "bad_shape_first":
        new[0] = new[0].T
        match = r"weights\[0\] \(Dense.kernel\) must have shape \(5, 16\)"
    elif case == "nan":
        new[7] = np.full(8, np.nan)
        match = r"weights\[7\] \(BatchNorm.gamma\) must be finite"
    else:
        new[2] = np.array(["a"] * 16)
        match = r"weights\[2\]"
    with pytest.raises(ValueError, match=match):
        model.set_weights(new)
    for got, ref in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, ref)
