"""``fit`` per batch against the bare planned step it runs, float32, 1 thread.

The bare step is what ``bench/test_train_step.py`` times as ``fastnn``:
``fastnn._plan.TrainPlan(model, X, targets).step(start, size)`` then
``model.optimizer.step(model._params, model._grads)``, here over one epoch of batches in a
shuffled order (the rows ``fit`` gathers). ``fit`` is ``model.fit(X, y, epochs=1,
batch_size=..., verbose=...)`` on the same data: validation, the plan, the epoch's
permutation and snapshot, metrics, callbacks, the progress display (``verbose=1``, written
to a string buffer) included. Networks (``[Dense(h) BatchNorm ReLU]`` per hidden width,
``Dense(10) Softmax``, Adam 1e-3): ``tiny`` 64-32-10 at batch 32, ``mlp`` 784-256-256-10 at
batches 64 and 256.

Each round times EPOCHS bare epochs (in the benchmark's ``setup``) and then a ``fit`` of as many,
alternately, so both see the same machine load; the benchmark's table is ``fit``'s, and
``extra_info`` gives the medians per batch, ``bare_us`` and ``fit_us``, and their ``ratio``
(the target: <= 1.15). Checks: every round's losses are finite, and the last epoch's mean
loss is below a quarter of an untrained model's (ln 10), for ``fit`` and for the bare step
(the labels are learnable).

``test_jax_jit_step_vs_fit`` (when JAX is installed; ``pip install jax``) times the same
training in JAX with the whole step jitted — gather of the batch's rows, forward with batch
norm in training mode, softmax cross-entropy, ``jax.value_and_grad``, Adam, the running
statistics — against ``fit`` at its default ``verbose=1``, alternately, per batch, on one
core (XLA ignores its thread flags: the test pins it, and checks its CPU time); an
epoch's losses are summed on the device and read once at its end. ``extra_info['ratio']``
is JAX's time over ``fit``'s (the targets: >= 10 on tiny-32, >= 1.25 on the MLP).
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import statistics
import time

import numpy as np
import pytest

import fastnn
from fastnn._plan import TrainPlan
from fastnn.layers import BatchNorm, Dense, ReLU, Softmax
from fastnn.optimizers import Adam

CASES = {  # name: (widths, batch, batches per epoch, rounds)
    "tiny-32": ((64, 32, 10), 32, 200, 12),
    "mlp-64": ((784, 256, 256, 10), 64, 40, 6),
    "mlp-256": ((784, 256, 256, 10), 256, 12, 5),
}
EPOCHS = 4  # per round: a fit call's own setup (checks, binding the plan) is spread as in
# a real training; a one-epoch fit of the tiny case pays ~1 ms of it (~5 us a batch)


def _model(widths):
    layers = []
    for width in widths[1:-1]:
        layers += [Dense(width), BatchNorm(), ReLU()]
    layers += [Dense(widths[-1]), Softmax()]
    model = fastnn.Sequential(layers, input_dim=widths[0], dtype="float32", seed=0)
    model.optimizer = Adam(1e-3)
    return model


def _data(widths, n):
    rng = np.random.default_rng(0)
    y = rng.integers(0, widths[-1], n)
    centers = rng.standard_normal((widths[-1], widths[0]))
    X = (centers[y] + rng.standard_normal((n, widths[0]))).astype(np.float32)
    return X, y


@pytest.mark.parametrize("verbose", [0, 1])
@pytest.mark.parametrize("case", list(CASES))
def test_fit_per_batch_vs_bare_step(benchmark, case, verbose):
    widths, batch, batches, rounds = CASES[case]
    n = batch * batches
    X, y = _data(widths, n)
    bare = _model(widths)
    bare.optimizer.build(bare.n_params, bare.dtype)
    plan = TrainPlan(bare, X, y.astype(np.int64))
    rng = np.random.default_rng(1)
    bare_times, bare_losses = [], []

    def bare_epochs():
        epoch_losses = []
        start = time.perf_counter()
        for _ in range(EPOCHS):
            plan.set_order(rng.permutation(n))
            total = 0.0
            for s in range(0, n, batch):
                total += plan.step(s, batch)
                bare.optimizer.step(bare._params, bare._grads)
            epoch_losses.append(total / batches)
        bare_times.append((time.perf_counter() - start) / (EPOCHS * batches))
        bare_losses.append(epoch_losses)

    model = _model(widths)
    model.fit(X, y, epochs=1, batch_size=batch, verbose=0)  # first call: the BLAS warm-up
    fit_times, fit_losses = [], []

    def fit_epochs():
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            history = model.fit(X, y, epochs=EPOCHS, batch_size=batch, verbose=verbose)
        fit_times.append((time.perf_counter() - start) / (EPOCHS * batches))
        fit_losses.append(history.history["loss"])

    benchmark.group = f"fit_overhead-{case}"
    benchmark.pedantic(fit_epochs, setup=bare_epochs, rounds=rounds, iterations=1,
                       warmup_rounds=1)
    # every round's losses are finite, and both trainings learned: the last epoch's mean
    # loss is far below an untrained model's (ln 10, chance on 10 classes); they may
    # wobble near zero once learned, so no round-to-round order is asserted
    assert all(math.isfinite(v) for losses in fit_losses + bare_losses for v in losses)
    chance = math.log(widths[-1])
    assert fit_losses[-1][-1] < 0.25 * chance, fit_losses[-1]
    assert bare_losses[-1][-1] < 0.25 * chance, bare_losses[-1]
    bare_us = statistics.median(bare_times) * 1e6
    fit_us = statistics.median(fit_times) * 1e6
    benchmark.extra_info.update(bench="fit_overhead", case=case, batch=batch,
                                verbose=verbose, bare_us=bare_us, fit_us=fit_us,
                                ratio=fit_us / bare_us)
    print(f"\n{case} verbose={verbose}: bare {bare_us:.1f} us/batch, fit {fit_us:.1f} "
          f"us/batch, ratio {fit_us / bare_us:.3f}")


def _jax_training(widths, batch, X, y):
    """A jitted JAX training of the same network and optimizer: a function running one
    epoch (rows in the given order) and returning its mean loss."""
    jax = pytest.importorskip("jax", reason="JAX is not installed (pip install jax)")
    jnp = jax.numpy
    key = jax.random.PRNGKey(0)
    params, stats = [], []
    for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
        key, sub = jax.random.split(key)
        layer = {"W": jax.random.normal(sub, (fan_in, fan_out), jnp.float32)
                 * jnp.sqrt(2.0 / fan_in), "b": jnp.zeros(fan_out, jnp.float32)}
        if fan_out != widths[-1]:
            layer.update(gamma=jnp.ones(fan_out, jnp.float32),
                         beta=jnp.zeros(fan_out, jnp.float32))
            stats.append((jnp.zeros(fan_out, jnp.float32), jnp.ones(fan_out, jnp.float32)))
        params.append(layer)
    state = [params, jax.tree_util.tree_map(jnp.zeros_like, params),
             jax.tree_util.tree_map(jnp.zeros_like, params), stats, jnp.zeros((), jnp.int32)]

    def loss_fn(params, stats, xb, yb):
        h, new_stats = xb, []
        for layer, (mean_run, var_run) in zip(params[:-1], stats, strict=True):
            z = h @ layer["W"] + layer["b"]
            mean, var = z.mean(axis=0), z.var(axis=0)
            z = (z - mean) * jax.lax.rsqrt(var + 1e-5) * layer["gamma"] + layer["beta"]
            h = jax.nn.relu(z)
            new_stats.append((0.9 * mean_run + 0.1 * mean, 0.9 * var_run + 0.1 * var))
        logits = h @ params[-1]["W"] + params[-1]["b"]
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, yb[:, None], axis=1).mean(), new_stats

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2, 3))
    def step(params, m, v, stats, t, X, y, idx):
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, stats, X[idx], y[idx])
        t = t + 1
        m = jax.tree_util.tree_map(lambda a, g: 0.9 * a + 0.1 * g, m, grads)
        v = jax.tree_util.tree_map(lambda a, g: 0.999 * a + 0.001 * g * g, v, grads)
        c1, c2 = 1 - 0.9 ** t, 1 - 0.999 ** t
        params = jax.tree_util.tree_map(
            lambda p, a, b: p - 1e-3 * (a / c1) / (jnp.sqrt(b / c2) + 1e-7), params, m, v)
        return params, m, v, stats, t, loss

    Xd, yd = jnp.asarray(X), jnp.asarray(y.astype(np.int32))

    def epoch(order):
        # each batch's indices go in as a NumPy array (slicing a device array would be
        # one more dispatched op per batch); the losses stay on the device until the end
        idx = order[: len(order) // batch * batch].reshape(-1, batch).astype(np.int32)
        losses = []
        params, m, v, stats, t = state
        for rows in idx:
            params, m, v, stats, t, loss = step(params, m, v, stats, t, Xd, yd, rows)
            losses.append(loss)
        state[:] = [params, m, v, stats, t]
        return float(sum(np.asarray(jax.device_get(losses)))) / len(idx)

    return epoch


@pytest.fixture
def one_core():
    """The main thread on one core while the test runs (threads it starts keep that core).
    XLA's CPU runtime ignores XLA_FLAGS' thread settings and runs a jitted step on both
    cores (1.8 CPU-seconds a second here); its threads start with JAX's backend, so this
    must precede JAX's first use in the session."""
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("needs Linux CPU affinity to hold JAX to one core")
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)


@pytest.mark.parametrize("case", list(CASES))
def test_jax_jit_step_vs_fit(benchmark, case, one_core):
    widths, batch, batches, rounds = CASES[case]
    n = batch * batches
    X, y = _data(widths, n)
    jax_epoch = _jax_training(widths, batch, X, y)
    rng = np.random.default_rng(1)
    jax_epoch(rng.permutation(n))  # compiles the step
    model = _model(widths)
    model.fit(X, y, epochs=1, batch_size=batch, verbose=0)
    jax_times, jax_losses, fit_times, fit_losses = [], [], [], []

    jax_cpu = []

    def jax_epochs():
        start, cpu = time.perf_counter(), time.process_time()
        jax_losses.append([jax_epoch(rng.permutation(n)) for _ in range(EPOCHS)])
        wall = time.perf_counter() - start
        jax_cpu.append((time.process_time() - cpu) / wall)
        jax_times.append(wall / (EPOCHS * batches))

    def fit_epochs():
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            history = model.fit(X, y, epochs=EPOCHS, batch_size=batch)  # verbose=1
        fit_times.append((time.perf_counter() - start) / (EPOCHS * batches))
        fit_losses.append(history.history["loss"])

    benchmark.group = f"fit_vs_jax-{case}"
    benchmark.pedantic(fit_epochs, setup=jax_epochs, rounds=rounds, iterations=1,
                       warmup_rounds=1)
    chance = math.log(widths[-1])
    assert all(math.isfinite(v) for losses in fit_losses + jax_losses for v in losses)
    assert fit_losses[-1][-1] < 0.25 * chance and jax_losses[-1][-1] < 0.25 * chance, \
        (fit_losses[-1], jax_losses[-1])
    assert max(jax_cpu) < 1.25, jax_cpu  # JAX ran on one core, as fastnn did
    jax_us = statistics.median(jax_times) * 1e6
    fit_us = statistics.median(fit_times) * 1e6
    import jax

    benchmark.extra_info.update(bench="fit_vs_jax", case=case, batch=batch, jax=jax.__version__,
                                jax_us=jax_us, fit_us=fit_us, ratio=jax_us / fit_us)
    print(f"\n{case}: JAX jit {jax_us:.1f} us/batch, fit {fit_us:.1f} us/batch, "
          f"JAX / fit {jax_us / fit_us:.2f}")
