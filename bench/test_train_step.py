"""Training-step benchmark, float32: fastnn against its limit, PyTorch and sklearn, 1 and 2 threads.

One step of a BatchNorm MLP (``[Dense(h) BatchNorm ReLU] per hidden width h, Dense(classes)
Softmax``; a Dense before a BatchNorm has no bias) on one batch: forward, softmax
cross-entropy, backward, one Adam update (lr 1e-3) of all parameters. The cases:

* ``tiny``: 64-32-10, batch 32;
* ``mlp``: 784-256-256-10, batches 64 and 256.

One benchmark group per case, batch and thread count, ``train_step-{case}-{batch}-t{threads}``
(``train_step-tiny-32-t1`` ... ``train_step-mlp-256-t2``), with the entries

* ``fastnn``: the planned step exactly as ``fastnn.trainer._run`` takes it on the cython
  backend: ``fastnn._plan.TrainPlan(model, X, targets).step(start, size)`` (gather, forward,
  loss and backward in one compiled call, gradients left in ``model._grads``), then
  ``model.optimizer.step(model._params, model._grads)`` (Adam bound once, one C call);
* ``fastnn-layers``: the cython backend with ``model.plan_steps = False``: the per-layer path
  (``model._forward``, ``model._output_grad_buffer``, ``model.loss``, ``model._backward``, then
  the optimizer), for information: what planning gained;
* ``fastnn-numpy``: the per-layer path on the numpy backend (which always takes it);
* ``torch``: the same network in PyTorch CPU (``Linear(bias=False)`` before each
  ``BatchNorm1d``), ``F.cross_entropy``, ``torch.optim.Adam`` (fused where supported);
* ``mlpclassifier``: ``sklearn.neural_network.MLPClassifier.partial_fit`` on one batch (the
  same MLP without BatchNorm, which sklearn does not have), when scikit-learn is installed.
  ``partial_fit`` validates its input on every call (with scikit-learn 1.9 that is most of the
  time on the tiny case), so ``extra_info["fit_per_batch"]`` also gives sklearn's step inside
  ``fit``: the median over FIT_REPEATS fits of one epoch over copies of the batch, / batches;
* ``gemm-floor``: the step's matrix products alone, ``np.matmul`` into preallocated outputs
  (forward h_{j-1}@W_j for every layer j, h_0 = x; backward h_{j-1}.T@d_j and, but for the
  first layer, d_j@W_j.T): 8 products for ``mlp``, 5 for ``tiny``;
* ``adam-pass``: ``np.copyto`` of ceil(3.5 * n_params) float32 (14 B read and 14 B written per
  parameter: the 28 B per parameter an Adam step must move, at copy bandwidth); its
  ``extra_info["adam_kernel"]`` is the median time of ``fastnn.ops.adam_update`` on n_params.

The step's limit in ``bench/report.py`` is gemm-floor + adam-pass of the same group.

Threads: the session runs everything on one thread (``bench/conftest.py``). A ``t2`` entry times
(and warms up) inside ``threadpoolctl.threadpool_limits(limits=2)``, which raises the BLAS and
OpenMP pools to 2, and fastnn's thread policy to 2 (``fastnn._threads.limited(2)``, which
``fit`` enters itself), and its torch entry also under ``torch.set_num_threads(2)`` (1 again
after). fastnn gains at 2 threads through its large products: its packed product's own
second thread (BLAS where that product is not used); its other kernels are single-threaded
unless built with ``FASTNN_OPENMP=1``. The pools as the timing saw them are
in ``extra_info["pools"]``. The host may be shared: each entry records the CPU time other
processes used while it was timed (``others_cpu_s``, Linux), which the report turns into a
"disturbed" flag.

Every entry checks its results: fastnn (all three) and torch take one step from the initial
weights whose loss and gradients are compared with a float64 NumPy reference (torch also with
fastnn's first loss: both start from the same weights), fastnn's first Adam update with its
closed form, and, after timing, one more step whose loss is compared with the reference at the
weights it started from; gemm-floor compares its products with float64 products; adam-pass
checks the copy and the Adam kernel's closed form; mlpclassifier compares its reported loss
with a float64 forward of its own weights.

OpenBLAS state: on this project's reference machine (OpenBLAS 0.3.31, Haswell kernels on AMD
EPYC) single-threaded sgemm of these sizes runs about 3x slower in a process until a larger
GEMM (f32 ~350^3 or more, or f64 256^3) has run once, and at full speed from then on. Test order
(the float64 references, sklearn) would otherwise decide which entries see which speed, so the
module first runs one 512^3 sgemm and dgemm, at 1 and at 2 threads: every entry is timed in
that steady state.

``extra_info``: ``bench`` ("train_step"), ``case``, ``layers`` (the widths), ``batch``,
``threads``, ``impl``, ``n_params``, ``flops`` (2 m n k summed over the products), ``loss``
(the checked step's) and per entry what it used.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import statistics
import time
import warnings
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest

import fastnn
from fastnn import ops
from fastnn._plan import TrainPlan, plan_unsupported
from fastnn.layers import BatchNorm, Dense, ReLU, Softmax
from fastnn.optimizers import Adam

try:
    from threadpoolctl import threadpool_info, threadpool_limits
except ImportError:  # part of the `bench` extra: without it the 2-thread entries skip
    threadpool_info = threadpool_limits = None

F32, F64 = np.float32, np.float64
SEED = 20240611
LR, BETA1, BETA2, ADAM_EPS = 1e-3, 0.9, 0.999, 1e-8
BN_EPS = 1e-5  # fastnn's and torch's default (both momentum 0.1)


@dataclass(frozen=True)
class Arch:
    """An MLP: n_in inputs, one Dense-BatchNorm-ReLU block per hidden width, n_out classes."""

    name: str
    n_in: int
    hidden: tuple[int, ...]
    n_out: int
    batches: tuple[int, ...]

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.n_in, *self.hidden, self.n_out)

    @property
    def depth(self) -> int:
        """Weighted (Dense) layers, numbered 1 .. depth; the last is the output layer."""
        return len(self.hidden) + 1


ARCHS = {
    "tiny": Arch("tiny", 64, (32,), 10, (32,)),
    "mlp": Arch("mlp", 784, (256, 256), 10, (64, 256)),
}
THREADS = (1, 2)
IMPLS = (
    "fastnn",
    "fastnn-layers",
    "fastnn-numpy",
    "torch",
    "mlpclassifier",
    "gemm-floor",
    "adam-pass",
)

# Timed rounds (one step each) per case and batch (fastnn's steps take ~30 us, ~3 ms and
# ~10 ms), fewer for an entry whose warm-up steps say it would take over ENTRY_SECONDS (but
# at least MIN_ROUNDS): the slower entries (sklearn's partial_fit validates its input on
# every call: ~4 ms on the tiny case) then keep the file near a minute on 2 idle cores.
ROUNDS = {("tiny", 32): 3000, ("mlp", 64): 300, ("mlp", 256): 100}
ENTRY_SECONDS, MIN_ROUNDS = 1.0, 20
WARMUP_STEPS = 5  # untimed steps before timing (buffers, caches, lazy optimizer state)
WARMUP_ROUNDS = 5  # untimed steps inside the thread limits (thread pools start), timed
COPY_ROUNDS = 1000
FIT_REPEATS = 3  # MLPClassifier.fit epochs timed for fit_per_batch, of rounds // 10 batches
ADAM_KERNEL_CALLS = 300


def _gemms(arch: Arch, batch: int) -> list[tuple[str, int, int, int]]:
    """The products of a step, (name, m, k, n) for an (m, k) @ (k, n) product, named by the
    operands: x the batch, h{j} layer j's activation, W{j} its kernel, d{j} the gradient of
    its pre-activation output."""
    w, b = arch.widths, batch
    inputs = ["x"] + [f"h{j}" for j in range(1, arch.depth)]  # inputs[j - 1]: layer j's input
    forward = [(f"{inputs[j - 1]}@W{j}", b, w[j - 1], w[j]) for j in range(1, arch.depth + 1)]
    backward = []
    for j in range(arch.depth, 0, -1):
        backward.append((f"{inputs[j - 1]}.T@d{j}", w[j - 1], b, w[j]))
        if j > 1:
            backward.append((f"d{j}@W{j}.T", b, w[j], w[j - 1]))
    return forward + backward


def _flops(arch: Arch, batch: int) -> int:
    return sum(2 * m * k * n for _, m, k, n in _gemms(arch, batch))


# float32 step against the float64 reference. At the initial weights (loss ~2.9, gradients of
# order their block's maximum) the step is well conditioned: observed loss errors <= 6e-8
# relative and gradient errors <= 1.2e-6 of the block's maximum, for fastnn (all paths) and
# torch. Once the batch is learnt (loss ~1e-4 after the timed steps) the gradients are sums of
# softmax - onehot terms p - 1 with p ~ 1, whose float32 cancellation leaves them only ~10%
# accurate: only the loss is checked then. Its terms exp(z_c - z_y) carry the logits' relative
# error, and a float32 loss the rounding of 1 + (a tiny sum): observed <= 3e-5 relative (torch)
# and 1.5e-8 absolute (sklearn, which sums in float32 and clips p to 1 - eps).
LOSS_RTOL, GRAD_RTOL = 1e-6, 2e-5
LATE_LOSS_RTOL, LATE_LOSS_ATOL = 1e-4, 1e-7


# --------------------------------------------------------------------------
# Session state, threads, data and references
# --------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _openblas_steady_state():
    """One large sgemm and dgemm first, at each thread count: OpenBLAS then runs these sizes
    at full speed (see the module docstring), for every entry whatever the test order."""
    for threads in THREADS if threadpool_limits is not None else (1,):
        with _threads(threads):
            for dtype in (F32, F64):
                a = np.ones((512, 512), dtype)
                assert float((a @ a)[0, 0]) == 512.0


@contextlib.contextmanager
def _threads(n: int, torch=None):
    """BLAS and OpenMP pools at n threads (threadpoolctl), and torch's intra-op pool if given;
    back to the session's one thread afterwards. Without threadpoolctl, n must be 1 (the
    session's environment variables then pin the pools)."""
    if threadpool_limits is None:
        assert n == 1, "threadpoolctl is needed to run at more than one thread"
        yield
        return
    with threadpool_limits(limits=n), fastnn._threads.limited(n):  # as fit enters it
        if torch is not None:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            if torch is not None:
                torch.set_num_threads(1)


def _pools() -> dict[str, int]:
    """Thread count of each pool as now limited, e.g. {"openblas": 2, "libgomp": 2}."""
    pools: dict[str, int] = {}
    for pool in threadpool_info() if threadpool_info is not None else ():
        name = pool.get("internal_api", pool.get("prefix", "?"))
        pools[name] = max(pools.get(name, 0), pool["num_threads"])
    return pools


def _build_model(arch: Arch) -> fastnn.Sequential:
    layers = []
    for width in arch.hidden:
        layers += [Dense(width), BatchNorm(), ReLU()]
    layers += [Dense(arch.n_out), Softmax()]
    model = fastnn.Sequential(layers, input_dim=arch.n_in, dtype="float32", seed=SEED)
    model.optimizer = Adam(LR)
    model.optimizer.build(model.n_params, model.dtype)
    return model


def _fastnn_layers(model, arch: Arch) -> dict[str, tuple]:
    """The model's weighted layers by the reference's numbers: {"1": (Dense, BatchNorm), ...,
    str(depth): (Dense, None)}."""
    layers = model.layers
    assert len(layers) == 3 * len(arch.hidden) + 2
    out = {}
    for j in range(1, arch.depth):
        dense, bn, relu = layers[3 * (j - 1) : 3 * j]
        assert isinstance(bn, BatchNorm) and isinstance(relu, ReLU) and not dense.has_bias
        out[str(j)] = (dense, bn)
    dense, softmax = layers[-2:]
    assert isinstance(softmax, Softmax) and dense.has_bias
    out[str(arch.depth)] = (dense, None)
    return out


def _fastnn_arrays(model, arch: Arch, which: str) -> dict[str, np.ndarray]:
    """Parameters (which="p") or gradients ("g") as float64 copies, kernels (in, out)."""
    out = {}
    for j, (dense, bn) in _fastnn_layers(model, arch).items():
        out[f"W{j}"] = getattr(dense, which)["kernel"].astype(F64)
        if bn is not None:
            out[f"g{j}"] = getattr(bn, which)["gamma"].astype(F64)
            out[f"b{j}"] = getattr(bn, which)["beta"].astype(F64)
        else:
            out[f"b{j}"] = getattr(dense, which)["bias"].astype(F64)
    return out


def _reference_step(w: dict, x: np.ndarray, y: np.ndarray, bn: bool = True):
    """float64 loss and gradients of the (BN) MLP at weights w on batch (x, y).

    Layers 1 .. L (L = the number of kernels W{j} in w): every layer but the last is Dense,
    training-mode BatchNorm (batch mean, biased variance, eps 1e-5), ReLU; the last is Dense
    with bias, then softmax cross-entropy (mean over the batch). ``bn=False``: the hidden layers
    are Dense with bias, ReLU (sklearn's MLP; the biases are then ``b{j}`` and there are no
    ``g``)."""
    depth = sum(1 for key in w if key.startswith("W"))
    n = x.shape[0]
    rows = np.arange(n)
    h = x.astype(F64)
    saved = []
    for j in range(1, depth):
        z = h @ w[f"W{j}"]
        if bn:
            mean = z.mean(axis=0)
            inv_std = 1.0 / np.sqrt(z.var(axis=0) + BN_EPS)
            z_hat = (z - mean) * inv_std
            a = w[f"g{j}"] * z_hat + w[f"b{j}"]
        else:
            z_hat = inv_std = None
            a = z + w[f"b{j}"]
        saved.append((h, a, z_hat, inv_std))
        h = np.maximum(a, 0.0)
    logits = h @ w[f"W{depth}"] + w[f"b{depth}"]
    z = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    loss = float(np.mean(lse - z[rows, y]))

    d = np.exp(z - lse[:, None])
    d[rows, y] -= 1.0
    d /= n
    grads = {f"W{depth}": h.T @ d, f"b{depth}": d.sum(axis=0)}
    dh = d @ w[f"W{depth}"].T
    for j in range(depth - 1, 0, -1):
        h_in, a, z_hat, inv_std = saved[j - 1]
        da = dh * (a > 0)
        if bn:
            dbeta, dgamma = da.sum(axis=0), (da * z_hat).sum(axis=0)
            dz = w[f"g{j}"] * inv_std / n * (n * da - dbeta - z_hat * dgamma)
            grads[f"g{j}"], grads[f"b{j}"] = dgamma, dbeta
        else:
            dz = da
            grads[f"b{j}"] = da.sum(axis=0)
        grads[f"W{j}"] = h_in.T @ dz
        if j > 1:
            dh = dz @ w[f"W{j}"].T
    return loss, grads


@functools.cache
def _case(name: str, batch: int) -> SimpleNamespace:
    """The batch, the initial weights (fastnn's seeded init), and the first step's reference."""
    arch = ARCHS[name]
    rng = np.random.default_rng([SEED, batch, arch.n_in])
    x = rng.standard_normal((batch, arch.n_in), dtype=F32)
    y = rng.integers(0, arch.n_out, batch, dtype=np.int64)  # as torch and TrainPlan want
    x.flags.writeable = y.flags.writeable = False

    model = _build_model(arch)
    w0 = _fastnn_arrays(model, arch, "p")
    loss0, grads0 = _reference_step(w0, x, y)
    # fastnn's own first-step loss (active backend), which torch must reproduce from w0.
    logits = model._forward(x, np.random.default_rng(SEED))
    fastnn_loss0 = model.loss(logits, y, model._output_grad_buffer(batch))
    return SimpleNamespace(
        arch=arch,
        batch=batch,
        rounds=ROUNDS[name, batch],
        x=x,
        y=y,
        n_params=model.n_params,
        w0=w0,
        loss0=loss0,
        grads0=grads0,
        fastnn_loss0=fastnn_loss0,
    )


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------


def _check_first_step(case, impl: str, loss: float, grads: dict) -> None:
    """A step from the initial weights: loss and every gradient block against float64."""
    np.testing.assert_allclose(loss, case.loss0, rtol=LOSS_RTOL, err_msg=f"{impl}: first loss")
    assert grads.keys() == case.grads0.keys(), f"{impl}: gradient blocks {sorted(grads)}"
    for name, ref in case.grads0.items():
        scale = float(np.max(np.abs(ref)))
        np.testing.assert_allclose(
            grads[name],
            ref,
            rtol=0.0,
            atol=GRAD_RTOL * scale,
            err_msg=f"{impl}: first-step gradient {name} (atol = {GRAD_RTOL:g} x block max)",
        )


def _check_late_loss(impl: str, loss: float, ref: float) -> None:
    assert math.isfinite(loss), f"{impl}: loss after timing is {loss}"
    np.testing.assert_allclose(
        loss, ref, rtol=LATE_LOSS_RTOL, atol=LATE_LOSS_ATOL, err_msg=f"{impl}: loss after timing"
    )


def _check_first_adam(impl: str, p0: np.ndarray, g: np.ndarray, p1: np.ndarray) -> None:
    """Adam's first step from zero moments is p - lr * g / (|g| + eps) (bias-corrected m / sqrt
    v = g / |g|). float32: half an ulp of |p| from the store, plus ~1e-6 of the step."""
    g64 = g.astype(F64)
    ref = p0.astype(F64) - LR * g64 / (np.abs(g64) + ADAM_EPS)
    np.testing.assert_allclose(
        p1, ref, rtol=2.0**-23, atol=1e-5 * LR, err_msg=f"{impl}: first Adam update"
    )


def _record(benchmark, case, impl: str, threads: int) -> None:
    arch = case.arch
    benchmark.group = f"train_step-{arch.name}-{case.batch}-t{threads}"
    benchmark.extra_info.update(
        bench="train_step",
        case=arch.name,
        layers=list(arch.widths),
        batch=case.batch,
        threads=threads,
        impl=impl,
        n_params=case.n_params,
        flops=_flops(arch, case.batch),
        blas_state="warmed (one 512^3 sgemm and dgemm first, at 1 and 2 threads)",
    )


def _time(benchmark, fn, max_rounds: int, threads: int, torch=None):
    """Time fn (one step a round) with the pools at `threads` threads, for max_rounds rounds
    or fewer if WARMUP_ROUNDS calls say that would take over ENTRY_SECONDS."""
    with _threads(threads, torch):
        benchmark.extra_info["pools"] = _pools()
        if torch is not None:
            benchmark.extra_info["torch_threads"] = torch.get_num_threads()
        if benchmark.disabled:  # one call, as a test
            return benchmark.pedantic(fn, rounds=1, iterations=1)
        start = time.perf_counter()
        for _ in range(WARMUP_ROUNDS):
            fn()
        per_call = (time.perf_counter() - start) / WARMUP_ROUNDS
        rounds = int(min(max_rounds, max(MIN_ROUNDS, ENTRY_SECONDS / per_call)))
        benchmark.extra_info["rounds"] = rounds
        with _others_cpu(benchmark):
            return benchmark.pedantic(fn, rounds=rounds, iterations=1)


def _cpu_seconds_all() -> float | None:
    """CPU seconds every process has used since boot (Linux /proc/stat: user, nice, system,
    irq, softirq, steal), or None where that cannot be read."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            ticks = [int(v) for v in fh.readline().split()[1:9]]
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # - idle, iowait
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def _others_cpu(benchmark):
    """Record how busy other processes kept the machine during the timing: ``others_cpu_s``
    (their CPU seconds: all processes' minus this one's), ``timed_wall_s`` and ``cpus``. The
    report flags rows where others took a sizeable share: the host is shared, and a 2-thread
    entry needs both cores (10 ms clock ticks: read it over a row, not one short entry)."""
    all0, own0, wall0 = _cpu_seconds_all(), os.times(), time.perf_counter()
    yield
    wall, all1, own1 = time.perf_counter() - wall0, _cpu_seconds_all(), os.times()
    if all0 is None or all1 is None:
        return
    own = (own1.user - own0.user) + (own1.system - own0.system)
    benchmark.extra_info.update(
        others_cpu_s=max(0.0, all1 - all0 - own), timed_wall_s=wall, cpus=os.cpu_count()
    )


# --------------------------------------------------------------------------
# fastnn: the planned step, the per-layer step
# --------------------------------------------------------------------------


def _planned_pass(model, case):
    """TrainPlan.step over the whole batch, as fastnn.trainer._run calls it (cython)."""
    assert plan_unsupported(model, None) is None, plan_unsupported(model, None)
    plan = TrainPlan(model, case.x, case.y)
    plan.set_order(np.arange(case.batch, dtype=np.int64))
    batch = case.batch

    def forward_backward():
        return plan.step(0, batch)

    return forward_backward


def _layer_pass(model, case):
    """model._forward, loss, model._backward: the trainer's per-layer path."""
    model.plan_steps = False
    assert plan_unsupported(model, None) is not None  # the trainer would take this path
    xb, yb, batch = case.x, case.y, case.batch
    row_loss = np.empty(batch)  # the trainer's per-row loss buffer (float64)
    rng = np.random.default_rng([SEED, 1])  # the trainer's dropout generator (unused here)

    def forward_backward():
        logits = model._forward(xb, rng)
        grad = model._output_grad_buffer(batch)
        loss = model.loss(logits, yb, grad, row_loss=row_loss)
        model._backward(grad)
        return loss

    return forward_backward


def _bench_fastnn(benchmark, case, impl: str, threads: int) -> None:
    arch = case.arch
    model = _build_model(arch)
    opt = model.optimizer
    forward_backward = (_planned_pass if impl == "fastnn" else _layer_pass)(model, case)
    steps = 0

    def step():
        nonlocal steps
        steps += 1
        loss = forward_backward()
        opt.step(model._params, model._grads)
        return loss

    # First step from the initial weights, checked (loss, gradients, the Adam update).
    p0 = model._params.copy()
    loss = forward_backward()
    steps += 1
    _check_first_step(case, impl, loss, _fastnn_arrays(model, arch, "g"))
    opt.step(model._params, model._grads)
    _check_first_adam(impl, p0, model._grads, model._params)
    for _ in range(WARMUP_STEPS):
        step()

    _time(benchmark, step, case.rounds, threads)

    # One more step, from weights w: its loss against the float64 reference at w.
    w = _fastnn_arrays(model, arch, "p")
    loss = step()
    ref, _ = _reference_step(w, case.x, case.y)
    _check_late_loss(impl, loss, ref)
    assert np.isfinite(model._params).all(), f"{impl}: non-finite parameters"
    assert opt.iterations == steps, f"{impl}: {opt.iterations} Adam steps in {steps} calls"
    build = ops.backend_info("cython") if ops.cython_status() is None else {}
    benchmark.extra_info.update(
        loss=loss,
        backend=fastnn.get_backend(),
        planned=impl == "fastnn",
        fastnn_openmp=bool(build.get("openmp")),
    )


# --------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------


@functools.cache
def _torch_adam_options(torch) -> tuple[dict, str]:
    """fused=True where this torch supports it on CPU (probed on a tiny tensor), else the
    default implementation."""
    probe = torch.zeros(4)
    probe.grad = torch.ones(4)
    try:
        torch.optim.Adam([probe], fused=True).step()
    except (RuntimeError, ValueError):
        return {}, "default"
    return {"fused": True}, "fused"


def _torch_net(torch, arch: Arch, w0: dict):
    nn = torch.nn
    modules = []
    for j, (n_in, n_out) in enumerate(zip(arch.widths[:-2], arch.hidden, strict=True), 1):
        lin, bn = nn.Linear(n_in, n_out, bias=False), nn.BatchNorm1d(n_out)
        assert bn.eps == BN_EPS
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w0[f"W{j}"].T.astype(F32)))  # weight = kernel.T
            bn.weight.copy_(torch.from_numpy(w0[f"g{j}"].astype(F32)))
            bn.bias.copy_(torch.from_numpy(w0[f"b{j}"].astype(F32)))
        modules += [lin, bn, nn.ReLU()]
    last = nn.Linear(arch.widths[-2], arch.n_out)
    with torch.no_grad():
        last.weight.copy_(torch.from_numpy(w0[f"W{arch.depth}"].T.astype(F32)))
        last.bias.copy_(torch.from_numpy(w0[f"b{arch.depth}"].astype(F32)))
    return nn.Sequential(*modules, last).train()


def _torch_arrays(net, which: str) -> dict[str, np.ndarray]:
    """Weights (which="p") or their gradients ("g") as float64, in the reference's layout."""

    def get(t):
        t = t if which == "p" else t.grad
        return t.detach().numpy().astype(F64)

    *blocks, last = net
    out = {}
    for j in range(1, len(blocks) // 3 + 1):
        lin, bn, _ = blocks[3 * (j - 1) : 3 * j]
        out.update({f"W{j}": get(lin.weight).T, f"g{j}": get(bn.weight), f"b{j}": get(bn.bias)})
    j = len(blocks) // 3 + 1
    out.update({f"W{j}": get(last.weight).T, f"b{j}": get(last.bias)})
    return out


def _bench_torch(benchmark, case, threads: int) -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    net = _torch_net(torch, case.arch, case.w0)
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params == case.n_params
    options, mode = _torch_adam_options(torch)
    opt = torch.optim.Adam(net.parameters(), lr=LR, betas=(BETA1, BETA2), eps=ADAM_EPS, **options)
    xt, yt = torch.from_numpy(case.x.copy()), torch.from_numpy(case.y.copy())

    def forward_backward():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(xt), yt)
        loss.backward()
        return loss

    def step():
        loss = forward_backward()
        opt.step()
        return loss

    # First step from fastnn's initial weights: the same loss as fastnn's, the same gradients.
    loss = forward_backward().item()
    np.testing.assert_allclose(
        loss, case.fastnn_loss0, rtol=LOSS_RTOL, err_msg="torch: first loss vs fastnn's first loss"
    )
    _check_first_step(case, "torch", loss, _torch_arrays(net, "g"))
    opt.step()
    for _ in range(WARMUP_STEPS):
        step()

    _time(benchmark, step, case.rounds, threads, torch=torch)
    assert torch.get_num_threads() == 1, "torch: not back to one thread"

    w = _torch_arrays(net, "p")
    loss = step().item()
    ref, _ = _reference_step(w, case.x, case.y)
    _check_late_loss("torch", loss, ref)
    benchmark.extra_info.update(torch_adam=mode, torch=torch.__version__, loss=loss)


# --------------------------------------------------------------------------
# The limit: the step's products, and one pass over Adam's bytes at copy bandwidth
# --------------------------------------------------------------------------


def _bench_gemm_floor(benchmark, case, threads: int) -> None:
    arch, batch = case.arch, case.batch
    rng = np.random.default_rng([SEED, batch, 2])
    # The operands by name (see _gemms): x, the kernels, random activations and gradients.
    arrays = {"x": case.x}
    arrays.update({f"W{j}": case.w0[f"W{j}"].astype(F32) for j in range(1, arch.depth + 1)})
    for j in range(1, arch.depth + 1):
        if j < arch.depth:
            arrays[f"h{j}"] = rng.standard_normal((batch, arch.widths[j]), dtype=F32)
        arrays[f"d{j}"] = rng.standard_normal((batch, arch.widths[j]), dtype=F32)

    def operand(name: str) -> np.ndarray:
        a = arrays[name.removesuffix(".T")]
        return a.T if name.endswith(".T") else a

    gemms = _gemms(arch, batch)
    operands = [tuple(operand(part) for part in name.split("@")) for name, *_ in gemms]
    outs = [np.full((a.shape[0], b.shape[1]), np.nan, F32) for a, b in operands]
    for (name, m, k, n), (a, b), out in zip(gemms, operands, outs, strict=True):
        assert a.shape == (m, k) and b.shape == (k, n) and out.shape == (m, n), name
    matmul = np.matmul

    def products():
        for (a, b), out in zip(operands, outs, strict=True):
            matmul(a, b, out=out)

    for _ in range(WARMUP_STEPS):
        products()
    _time(benchmark, products, case.rounds, threads)

    # Each product against float64: the summation bound |err| <= k u (|a| @ |b|), u = 2**-24.
    for (name, _, k, _), (a, b), out in zip(gemms, operands, outs, strict=True):
        a64, b64 = a.astype(F64), b.astype(F64)
        err = np.abs(out - a64 @ b64)
        bound = k * 2.0**-24 * (np.abs(a64) @ np.abs(b64))
        assert (err <= bound).all(), f"gemm-floor: {name} off by {err.max():.3g}"
    benchmark.extra_info["products"] = [name for name, *_ in gemms]


def _bench_adam_pass(benchmark, case, threads: int) -> None:
    n = case.n_params
    elements = math.ceil(3.5 * n)  # 14 B read + 14 B written per parameter
    rng = np.random.default_rng([SEED, n])
    src = rng.standard_normal(elements, dtype=F32)
    dst = np.full_like(src, np.nan)  # touched now: no page faults in the timing
    with _threads(threads):  # np.copyto is single-threaded: for the record
        benchmark.extra_info["pools"] = _pools()
        with _others_cpu(benchmark):
            benchmark.pedantic(
                np.copyto, args=(dst, src), rounds=COPY_ROUNDS, iterations=1, warmup_rounds=5
            )
    assert np.array_equal(dst, src), "adam-pass: copy differs"

    # For information: fastnn's Adam kernel on as many parameters (default backend), with a
    # constant gradient from zero moments, so that every step is lr * g / (|g| + eps).
    param = rng.standard_normal(n, dtype=F32)
    p0 = param.copy()
    grad = rng.standard_normal(n, dtype=F32) * F32(0.1)
    m, v = np.zeros(n, F32), np.zeros(n, F32)
    times = []
    for t in range(1, ADAM_KERNEL_CALLS + 1):
        start = time.perf_counter()
        ops.adam_update(param, grad, m, v, t, lr=LR, beta1=BETA1, beta2=BETA2, eps=ADAM_EPS)
        times.append(time.perf_counter() - start)
    g = grad.astype(F64)
    np.testing.assert_allclose(
        m, (1 - BETA1**ADAM_KERNEL_CALLS) * g, rtol=1e-4, atol=1e-8, err_msg="adam kernel: m"
    )
    # Mean displacement per step, of order one; each in-place step rounds |param| < 8 by at
    # most 2**-22, so the mean is within 2**-20 / lr (as in bench/test_kernels.py).
    moved = (p0.astype(F64) - param) / (ADAM_KERNEL_CALLS * LR)
    np.testing.assert_allclose(
        moved,
        g / (np.abs(g) + ADAM_EPS),
        rtol=0.0,
        atol=2.0**-20 / LR,
        err_msg="adam kernel: mean displacement / lr",
    )
    benchmark.extra_info.update(
        copy_elements=elements,
        copy_bytes=2 * src.nbytes,
        bytes_per_param=28,
        adam_kernel=statistics.median(times),
        adam_kernel_min=min(times),
        adam_kernel_backend=fastnn.get_backend(),
        adam_kernel_calls=ADAM_KERNEL_CALLS,
    )


# --------------------------------------------------------------------------
# scikit-learn
# --------------------------------------------------------------------------


def _sklearn_weights(clf) -> dict[str, np.ndarray]:
    out = {}
    for j, (c, b) in enumerate(zip(clf.coefs_, clf.intercepts_, strict=True), 1):
        out[f"W{j}"], out[f"b{j}"] = c.astype(F64), b.astype(F64)
    return out


def _bench_mlpclassifier(benchmark, case, threads: int) -> None:
    neural_network = pytest.importorskip("sklearn.neural_network")
    import sklearn

    arch, batch = case.arch, case.batch
    # alpha=0: no L2 term (fastnn and torch have none); shuffle=False: no per-call copy of the
    # batch (fastnn's timed step does not shuffle either).
    clf = neural_network.MLPClassifier(
        hidden_layer_sizes=arch.hidden,
        batch_size=batch,
        solver="adam",
        max_iter=1,
        learning_rate_init=LR,
        alpha=0.0,
        shuffle=False,
        random_state=SEED,
    )
    x, y = case.x, case.y
    classes = np.arange(arch.n_out)
    clf.partial_fit(x, y, classes=classes)
    for _ in range(WARMUP_STEPS):
        clf.partial_fit(x, y)

    _time(benchmark, functools.partial(clf.partial_fit, x, y), case.rounds, threads)

    # One more call: its reported loss (of the weights it started from) against float64.
    w = _sklearn_weights(clf)
    clf.partial_fit(x, y)
    ref, _ = _reference_step(w, x, y, bn=False)
    _check_late_loss("mlpclassifier", float(clf.loss_), ref)
    n_params = sum(a.size for a in (*clf.coefs_, *clf.intercepts_))
    if not benchmark.disabled:
        benchmark.extra_info["fit_per_batch"] = _sklearn_fit_per_batch(clf, case, threads)
    benchmark.extra_info.update(
        n_params=n_params,
        loss=float(clf.loss_),
        sklearn=sklearn.__version__,
        dtype=str(clf.coefs_[0].dtype),
        note="no BatchNorm (sklearn has none): Dense with bias, ReLU; alpha=0, shuffle=False; "
        "partial_fit includes sklearn's input validation",
    )


def _sklearn_fit_per_batch(clf, case, threads: int) -> float:
    """For information: the median time per batch of FIT_REPEATS ``fit`` calls (max_iter 1,
    fresh weights each), each one epoch over copies of the batch (input validated once)."""
    from sklearn.base import clone
    from sklearn.exceptions import ConvergenceWarning

    batches = max(20, case.rounds // 10)
    xs, ys = np.tile(case.x, (batches, 1)), np.tile(case.y, batches)
    times = []
    for _ in range(FIT_REPEATS):
        fit_clf = clone(clf)
        with warnings.catch_warnings(), _threads(threads):
            warnings.simplefilter("ignore", ConvergenceWarning)  # one epoch, by design
            start = time.perf_counter()
            fit_clf.fit(xs, ys)
            times.append((time.perf_counter() - start) / batches)
        # It took every batch (t_ counts samples) and its loss is finite.
        assert fit_clf.n_iter_ == 1 and fit_clf.t_ == batches * case.batch, "sklearn fit"
        assert math.isfinite(fit_clf.loss_), f"sklearn fit: loss {fit_clf.loss_}"
    return statistics.median(times)


# --------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------


def _params():
    return [
        pytest.param(
            name,
            batch,
            threads,
            impl,
            id=f"{name}-{batch}-t{threads}-{impl}",
            marks=pytest.mark.torch if impl == "torch" else (),
        )
        for name, arch in ARCHS.items()
        for batch in arch.batches
        for threads in THREADS
        for impl in IMPLS
    ]


@pytest.mark.parametrize(("case_name", "batch", "threads", "impl"), _params())
def test_train_step(benchmark, case_name, batch, threads, impl):
    if threads > 1 and threadpool_limits is None:
        pytest.skip("threadpoolctl (the bench extra) is needed to run at 2 threads")
    case = _case(case_name, batch)
    # Before timing: pytest-benchmark takes the group when it times.
    _record(benchmark, case, impl, threads)
    if impl.startswith("fastnn"):
        backend = "numpy" if impl == "fastnn-numpy" else "cython"
        if backend not in fastnn.available_backends():
            pytest.skip(f"the {backend} backend is unavailable: {ops.cython_status()}")
        with fastnn.backend(backend):
            _bench_fastnn(benchmark, case, impl, threads)
    elif impl == "torch":
        _bench_torch(benchmark, case, threads)
    elif impl == "gemm-floor":
        _bench_gemm_floor(benchmark, case, threads)
    elif impl == "adam-pass":
        _bench_adam_pass(benchmark, case, threads)
    else:
        _bench_mlpclassifier(benchmark, case, threads)
