"""Learning-rate schedules and the Optimizer classes (the kernels have their own tests)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from reference import adam_steps, rmsprop_steps, sgd_steps

import fastnn
from fastnn import optimizers, schedules
from fastnn.callbacks import Callback
from fastnn.layers import BatchNorm, Dense, ReLU, Softmax
from fastnn.optimizers import SGD, Adam, AdamW, RMSprop
from fastnn.schedules import (
    Constant,
    CosineDecay,
    ExponentialDecay,
    InverseSqrtDecay,
    InverseTimeDecay,
    StepDecay,
)

TIMES = [0, 1, 2, 3, 5, 9, 10, 11, 37, 100]

# (schedule, closed form written from the module's table)
SCHEDULES = {
    "constant": (Constant(0.03), lambda t: 0.03),
    "inverse_time": (InverseTimeDecay(0.1, decay_rate=0.5), lambda t: 0.1 / (1 + 0.5 * t)),
    "exponential": (ExponentialDecay(0.2, rate=0.9), lambda t: 0.2 * 0.9**t),
    "inverse_sqrt": (InverseSqrtDecay(0.05, k=2.0), lambda t: 0.05 * 2.0 / math.sqrt(t + 1)),
    "step": (StepDecay(0.4, drop=0.25, every=10), lambda t: 0.4 * 0.25 ** (t // 10)),
    "cosine": (CosineDecay(0.1, total=10, min_lr=0.01),
               lambda t: 0.01 + (0.1 - 0.01) * (1 + math.cos(math.pi * min(t, 10) / 10)) / 2),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_closed_forms(name):
    schedule, formula = SCHEDULES[name]
    for t in TIMES:
        assert schedule(t) == pytest.approx(formula(t), rel=1e-14, abs=0), t
        assert isinstance(schedule(t), float)
    with pytest.raises(ValueError, match="t must be >= 0"):
        schedule(-1)


def test_schedule_landmarks():
    # A few values worked out by hand.
    assert InverseTimeDecay(0.1, decay_rate=1.0)(3) == pytest.approx(0.025)
    assert StepDecay(1.0, drop=0.5, every=2)(3) == 0.5 and StepDecay(1.0, 0.5, 2)(4) == 0.25
    cosine = CosineDecay(1.0, total=4)
    assert cosine(0) == 1.0 and cosine(2) == pytest.approx(0.5) and cosine(4) == 0.0
    assert cosine(9) == 0.0  # flat after total
    assert InverseSqrtDecay(1.0)(3) == 0.5
    assert ExponentialDecay(1.0, rate=0.5)(3) == 0.125


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("per_step", [False, True])
def test_schedule_config_round_trip(name, per_step):
    schedule, _ = SCHEDULES[name]
    config = schedule.get_config()
    config["per_step"] = per_step
    rebuilt = schedules.from_config(json.loads(json.dumps(config)))
    assert type(rebuilt) is type(schedule)
    assert rebuilt.per_step is per_step
    assert rebuilt.get_config() == config
    for t in TIMES:
        assert rebuilt(t) == schedule(t)


@pytest.mark.parametrize(("make", "match"), [
    (lambda: Constant(-0.1), "lr must be finite and >= 0"),
    (lambda: Constant("fast"), "lr must be a number"),
    (lambda: InverseTimeDecay(0.1, decay_rate=-1), "decay_rate"),
    (lambda: ExponentialDecay(0.1, rate=1.5), "rate must be in"),
    (lambda: ExponentialDecay(0.1, rate=0), "rate must be finite and > 0"),
    (lambda: InverseSqrtDecay(0.1, k=float("inf")), "k must be finite"),
    (lambda: StepDecay(0.1, drop=2.0), "drop must be in"),
    (lambda: StepDecay(0.1, every=0), "every must be an integer >= 1"),
    (lambda: StepDecay(0.1, every=2.5), "every"),
    (lambda: CosineDecay(0.1, total=0), "total must be an integer >= 1"),
    (lambda: CosineDecay(0.1, total=5, min_lr=0.2), "min_lr must be <= lr"),
    (lambda: schedules.from_config({"class": "Warmup", "lr": 0.1}), "unknown schedule class"),
])
def test_schedule_rejects_bad_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


class _RateLog(Callback):
    def __init__(self):
        self.rates = []  # (iterations before the step, rate the step used)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = self.model.optimizer.iterations

    def on_batch_end(self, batch, logs=None):
        opt = self.model.optimizer
        self.rates.append((opt.iterations - 1, opt._last_rate))


class _SpySGD(SGD):
    """SGD that remembers the rate of its last step."""

    def _update(self, params, grads, lr, t):
        self._last_rate = lr
        super()._update(params, grads, lr, t)


def _toy(n=64, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-2, 2, (3, 4))
    y = rng.integers(0, 3, n)
    return centers[y] + rng.standard_normal((n, 4)), y


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_history_lr_follows_epoch_schedule(name):
    schedule, formula = SCHEDULES[name]
    X, y = _toy()
    model = fastnn.Sequential([Dense(8), ReLU(), Dense(3), Softmax()], seed=0)
    log = _RateLog()
    history = model.fit(X, y, epochs=4, batch_size=16, optimizer=_SpySGD(schedule),
                        verbose=0, callbacks=[log])
    assert history.history["lr"] == [schedule(e) for e in range(4)]
    # Within an epoch every step uses that epoch's rate.
    assert [rate for _, rate in log.rates] == [schedule(e) for e in range(4) for _ in range(4)]
    # Continuing: epochs count on.
    history = model.fit(X, y, epochs=2, batch_size=16, verbose=0)
    assert history.history["lr"] == pytest.approx([formula(4), formula(5)], rel=1e-14)


def test_per_step_schedule_advances_every_step():
    schedule = ExponentialDecay(0.1, rate=0.8, per_step=True)
    X, y = _toy()
    model = fastnn.Sequential([Dense(8), ReLU(), Dense(3), Softmax()], seed=0)
    log = _RateLog()
    history = model.fit(X, y, epochs=3, batch_size=16, optimizer=_SpySGD(schedule),
                        verbose=0, callbacks=[log])
    assert [t for t, _ in log.rates] == list(range(12))
    assert [rate for _, rate in log.rates] == [0.1 * 0.8**t for t in range(12)]
    assert history.history["lr"] == [schedule(0), schedule(4), schedule(8)]
    assert model.optimizer.lr == schedule(12)


def test_per_step_rates_are_the_rates_applied(backend):
    # SGD without momentum: after k steps on a constant gradient g,
    # param = p0 - g * sum(rate(t) for t < k).
    schedule = InverseTimeDecay(0.5, decay_rate=0.25, per_step=True)
    opt = SGD(schedule)
    params = np.full(7, 2.0)
    grads = np.linspace(-1, 1, 7)
    for _ in range(5):
        opt.step(params, grads)
    expected = 2.0 - grads * sum(schedule(t) for t in range(5))
    np.testing.assert_allclose(params, expected, rtol=1e-14, atol=1e-15)
    assert opt.iterations == 5


# ----------------------------------------------------------------------------------------
# Optimizer classes: hyperparameter mapping, state, config
# ----------------------------------------------------------------------------------------


def _run_steps(opt, param, grads):
    p = param.copy()
    for g in grads:
        opt.step(p, g)
    return p


@pytest.fixture
def steps():
    rng = np.random.default_rng(3)
    return rng.standard_normal(50), [rng.standard_normal(50) for _ in range(6)]


def test_optimizer_classes_match_reference(backend, steps):
    param, grads = steps
    np.testing.assert_allclose(
        _run_steps(Adam(0.01, beta_1=0.8, beta_2=0.95, epsilon=1e-6, weight_decay=0.1),
                   param, grads),
        adam_steps(param, grads, lr=0.01, beta1=0.8, beta2=0.95, eps=1e-6,
                   weight_decay=0.1)[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        _run_steps(AdamW(0.01, weight_decay=0.2, amsgrad=True), param, grads),
        adam_steps(param, grads, lr=0.01, weight_decay=0.2, decoupled=True, amsgrad=True)[0],
        rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        _run_steps(SGD(0.05, momentum=0.9, nesterov=True, weight_decay=0.01), param, grads),
        sgd_steps(param, grads, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)[0],
        rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        _run_steps(RMSprop(0.01, rho=0.8, epsilon=1e-7, momentum=0.5, centered=True),
                   param, grads),
        rmsprop_steps(param, grads, lr=0.01, alpha=0.8, eps=1e-7, momentum=0.5, centered=True),
        rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("opt", "names"), [
    (SGD(0.1), []), (SGD(0.1, momentum=0.5), ["velocity"]), (RMSprop(), ["square_avg"]),
    (RMSprop(momentum=0.1, centered=True), ["grad_avg", "momentum_buffer", "square_avg"]),
    (Adam(), ["m", "v"]), (Adam(amsgrad=True), ["m", "v", "v_max"]), (AdamW(), ["m", "v"]),
])
def test_optimizer_state_buffers(opt, names):
    opt.build(10, np.float32)
    assert sorted(opt.state_arrays()) == names
    assert all(a.shape == (10,) and a.dtype == np.float32 and not a.any()
               for a in opt.state_arrays().values())
    kept = opt.state_arrays()
    opt.build(10, np.float32)  # same size: kept (continuing fit)
    assert all(opt.state_arrays()[k] is kept[k] for k in kept)


OPTIMIZERS = [
    lambda: SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
    lambda: SGD(StepDecay(0.1, drop=0.5, every=3)),
    lambda: RMSprop(0.002, rho=0.95, epsilon=1e-6, momentum=0.3, centered=True,
                    weight_decay=0.01),
    lambda: Adam(0.003, beta_1=0.85, beta_2=0.98, epsilon=1e-7, weight_decay=0.02,
                 amsgrad=True),
    lambda: AdamW(CosineDecay(0.01, total=20, min_lr=0.001, per_step=True), weight_decay=0.05),
]


@pytest.mark.parametrize("make", OPTIMIZERS, ids=["sgd", "sgd-step", "rmsprop", "adam", "adamw"])
def test_optimizer_config_round_trip(make):
    opt = make()
    opt.iterations, opt._epoch = 17, 4
    config = json.loads(json.dumps(opt.get_config()))
    rebuilt = optimizers.from_config(config)
    assert type(rebuilt) is type(opt)
    assert rebuilt.get_config() == opt.get_config()
    assert rebuilt.iterations == 17 and rebuilt.lr == opt.lr
    assert repr(rebuilt) == repr(opt)
    assert not rebuilt.state_arrays()  # state arrays travel separately (see serialization)


def test_optimizer_get_and_bad_arguments():
    assert type(optimizers.get("Adam")) is Adam and type(optimizers.get("sgd")) is SGD
    assert type(optimizers.get("rmsprop")) is RMSprop and type(optimizers.get("adamw")) is AdamW
    opt = Adam()
    assert optimizers.get(opt) is opt
    for make, match in [(lambda: SGD(-0.1), "lr"), (lambda: SGD(float("inf")), "lr"),
                        (lambda: SGD(0.1, momentum=1.5), "momentum"),
                        (lambda: SGD(0.1, nesterov=True), "nesterov=True needs momentum"),
                        (lambda: Adam(beta_1=1.0), "beta_1"), (lambda: Adam(epsilon=-1), "eps"),
                        (lambda: RMSprop(rho=2), "rho"), (lambda: AdamW(weight_decay=-1),
                                                         "weight_decay"),
                        (lambda: optimizers.get("adagrad"), "optimizer must be"),
                        (lambda: optimizers.from_config({"class": "Lion", "lr": 1}),
                         "unknown optimizer class")]:
        with pytest.raises(ValueError, match=match):
            make()
    opt = SGD(0.1)
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1
    assert opt.lr == 0.1
    opt.lr = ExponentialDecay(0.5, 0.5)
    opt.set_epoch(2)
    assert opt.lr == 0.125


# ----------------------------------------------------------------------------------------
# Every optimizer trains a digits-like toy problem
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_problem():
    try:
        from fastnn.datasets import make_blobs

        X, y = make_blobs(800, n_features=16, centers=10, cluster_std=5.0, seed=0)
    except ImportError:  # the datasets module is newer than this test
        rng = np.random.default_rng(0)
        centers = rng.uniform(-10, 10, (10, 16))
        y = np.repeat(np.arange(10), 80)
        X = (centers[y] + 5.0 * rng.standard_normal((800, 16))).astype(np.float32)
    assert X.shape == (800, 16) and set(np.unique(y)) == set(range(10))
    return (X - X.mean(axis=0)) / X.std(axis=0), y


@pytest.mark.parametrize("make", [lambda: SGD(0.05, momentum=0.9), lambda: RMSprop(0.003),
                                  lambda: Adam(0.005), lambda: AdamW(0.005, weight_decay=0.01)],
                         ids=["sgd", "rmsprop", "adam", "adamw"])
def test_each_optimizer_trains_toy_problem(backend, toy_problem, make):
    X, y = toy_problem
    model = fastnn.Sequential([Dense(32), BatchNorm(), ReLU(), Dense(10), Softmax()], seed=0)
    before = model.fit(X, y, epochs=0, verbose=0, optimizer=make())
    assert before.epoch == []
    start = model.evaluate(X, y)["accuracy"]
    history = model.fit(X, y, epochs=8, batch_size=32, verbose=0, seed=1)
    accuracy = float(np.mean(model.predict(X) == y))
    assert accuracy > 0.9, (start, history.history["accuracy"])
    assert accuracy == pytest.approx(model.evaluate(X, y)["accuracy"])
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert start < 0.5
