"""Training-step benchmark, float32, one thread: fastnn against its limit, PyTorch and sklearn.

One step of an MLP 784-256-256-10 with BatchNorm (``Dense(256) BatchNorm ReLU Dense(256)
BatchNorm ReLU Dense(10) Softmax``; a Dense before a BatchNorm has no bias) on one batch of 64 or
256 rows: forward, softmax cross-entropy, backward, one Adam update (lr 1e-3) of all parameters.
One benchmark group per batch size, ``train_step-64`` and ``train_step-256``, with the entries

* ``fastnn-cython``, ``fastnn-numpy``: the step exactly as ``fastnn.trainer._run`` takes it
  (``model._forward``, ``model._output_grad_buffer``, ``model.loss``, ``model._backward``,
  ``model.optimizer.step``) on each backend;
* ``torch``: the same network in PyTorch CPU (``Linear(bias=False)`` before each
  ``BatchNorm1d``), ``F.cross_entropy``, ``torch.optim.Adam`` (fused where supported);
* ``gemm-floor``: the step's eight matrix products alone, ``np.matmul`` into preallocated
  outputs (forward x@W1, h1@W2, h2@W3; backward h2.T@d3, d3@W3.T, h1.T@d2, d2@W2.T, x.T@d1);
* ``adam-pass``: ``np.copyto`` of ceil(3.5 * n_params) float32 (14 B read and 14 B written per
  parameter: the 28 B per parameter an Adam step must move, at copy bandwidth); its
  ``extra_info["adam_kernel"]`` is the median time of ``fastnn.ops.adam_update`` on n_params;
* ``mlpclassifier``: ``sklearn.neural_network.MLPClassifier.partial_fit`` on one batch (the
  same MLP without BatchNorm, which sklearn does not have), when scikit-learn is installed.

The step's limit in ``bench/report.py`` is gemm-floor + adam-pass from the same run.

Every entry checks its results: fastnn and torch take one step from the initial weights whose
loss and gradients are compared with a float64 NumPy reference (torch also with fastnn's first
loss: both start from the same weights), and, after timing, one more step whose loss is compared
with the reference at the weights it started from; gemm-floor compares its products with float64
products; adam-pass checks the copy and the Adam kernel's closed form; mlpclassifier compares
its reported loss with a float64 forward of its own weights.

OpenBLAS state: on this project's reference machine (OpenBLAS 0.3.31, Haswell kernels on AMD
EPYC) single-threaded sgemm of these sizes runs about 3x slower in a process until a larger
GEMM (f32 ~350^3 or more, or f64 256^3) has run once, and at full speed from then on. Test order
(the float64 references, sklearn) would otherwise decide which entries see which speed, so the
module first runs one 512^3 sgemm and dgemm: every entry is timed in that steady state.

``extra_info``: ``bench`` ("train_step"), ``batch``, ``impl``, ``n_params``, ``flops`` (2 m n k
summed over the eight products), ``loss`` (the checked step's) and per entry what it used.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from types import SimpleNamespace

import numpy as np
import pytest

import fastnn
from fastnn import ops
from fastnn.layers import BatchNorm, Dense, ReLU, Softmax
from fastnn.optimizers import Adam

F32, F64 = np.float32, np.float64
SEED = 20240611
N_IN, N_HIDDEN, N_OUT = 784, 256, 10
BATCHES = (64, 256)
LR, BETA1, BETA2, ADAM_EPS = 1e-3, 0.9, 0.999, 1e-8
BN_EPS = 1e-5  # fastnn's and torch's default (both momentum 0.1)

IMPLS = ("fastnn-cython", "fastnn-numpy", "torch", "gemm-floor", "adam-pass", "mlpclassifier")

# Timed rounds (one step each) per batch size: a few seconds per entry, the file in ~20 s.
ROUNDS = {64: 300, 256: 100}
WARMUP_STEPS = 5  # untimed steps before timing (buffers, caches, lazy optimizer state)
COPY_ROUNDS = 1000
ADAM_KERNEL_CALLS = 300


def _gemms(batch: int) -> list[tuple[str, int, int, int]]:
    """The eight products of a step, (name, m, k, n) for an (m, k) @ (k, n) product."""
    b, i, h, o = batch, N_IN, N_HIDDEN, N_OUT
    return [
        ("x@W1", b, i, h),
        ("h1@W2", b, h, h),
        ("h2@W3", b, h, o),
        ("h2.T@d3", h, b, o),
        ("d3@W3.T", b, o, h),
        ("h1.T@d2", h, b, h),
        ("d2@W2.T", b, h, h),
        ("x.T@d1", i, b, h),
    ]


def _flops(batch: int) -> int:
    return sum(2 * m * k * n for _, m, k, n in _gemms(batch))


# float32 step against the float64 reference. At the initial weights (loss ~2.9, gradients of
# order their block's maximum) the step is well conditioned: observed loss errors <= 6e-8
# relative and gradient errors <= 1.2e-6 of the block's maximum, for fastnn (both backends) and
# torch. Once the batch is learnt (loss ~1e-4 after the timed steps) the gradients are sums of
# softmax - onehot terms p - 1 with p ~ 1, whose float32 cancellation leaves them only ~10%
# accurate: only the loss is checked then. Its terms exp(z_c - z_y) carry the logits' relative
# error, and a float32 loss the rounding of 1 + (a tiny sum): observed <= 3e-5 relative (torch)
# and 1.5e-8 absolute (sklearn, which sums in float32 and clips p to 1 - eps).
LOSS_RTOL, GRAD_RTOL = 1e-6, 2e-5
LATE_LOSS_RTOL, LATE_LOSS_ATOL = 1e-4, 1e-7


# --------------------------------------------------------------------------
# Session state, data and references
# --------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _openblas_steady_state():
    """One large sgemm and dgemm first: OpenBLAS then runs these sizes at full speed (see the
    module docstring), for every entry whatever the test order."""
    for dtype in (F32, F64):
        a = np.ones((512, 512), dtype)
        assert float((a @ a)[0, 0]) == 512.0


def _build_model() -> fastnn.Sequential:
    model = fastnn.Sequential(
        [
            Dense(N_HIDDEN),
            BatchNorm(),
            ReLU(),
            Dense(N_HIDDEN),
            BatchNorm(),
            ReLU(),
            Dense(N_OUT),
            Softmax(),
        ],
        input_dim=N_IN,
        dtype="float32",
        seed=SEED,
    )
    model.optimizer = Adam(LR)
    model.optimizer.build(model.n_params, model.dtype)
    return model


def _fastnn_layers(model) -> dict[str, object]:
    """The model's weighted layers by the reference's names."""
    dense1, bn1, _, dense2, bn2, _, dense3, _ = model.layers
    assert not dense1.has_bias and not dense2.has_bias and dense3.has_bias
    return {"1": (dense1, bn1), "2": (dense2, bn2), "3": (dense3, None)}


def _fastnn_arrays(model, which: str) -> dict[str, np.ndarray]:
    """Parameters (which="p") or gradients ("g") as float64 copies, kernels (in, out)."""
    out = {}
    for i, (dense, bn) in _fastnn_layers(model).items():
        out[f"W{i}"] = getattr(dense, which)["kernel"].astype(F64)
        if bn is not None:
            out[f"g{i}"] = getattr(bn, which)["gamma"].astype(F64)
            out[f"b{i}"] = getattr(bn, which)["beta"].astype(F64)
        else:
            out[f"b{i}"] = getattr(dense, which)["bias"].astype(F64)
    return out


def _reference_step(w: dict, x: np.ndarray, y: np.ndarray, bn: bool = True):
    """float64 loss and gradients of the (BN) MLP at weights w on batch (x, y).

    Training-mode BatchNorm (batch mean, biased variance, eps 1e-5), ReLU, softmax
    cross-entropy (mean over the batch). ``bn=False``: Dense with bias, ReLU (sklearn's MLP; the
    biases are then ``b1``, ``b2`` and there are no ``g``)."""
    n = x.shape[0]
    rows = np.arange(n)
    h = x.astype(F64)
    saved = []
    for i in ("1", "2"):
        z = h @ w[f"W{i}"]
        if bn:
            mean = z.mean(axis=0)
            inv_std = 1.0 / np.sqrt(z.var(axis=0) + BN_EPS)
            z_hat = (z - mean) * inv_std
            a = w[f"g{i}"] * z_hat + w[f"b{i}"]
        else:
            z_hat = inv_std = None
            a = z + w[f"b{i}"]
        saved.append((h, a, z_hat, inv_std))
        h = np.maximum(a, 0.0)
    logits = h @ w["W3"] + w["b3"]
    z = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    loss = float(np.mean(lse - z[rows, y]))

    d = np.exp(z - lse[:, None])
    d[rows, y] -= 1.0
    d /= n
    grads = {"W3": h.T @ d, "b3": d.sum(axis=0)}
    dh = d @ w["W3"].T
    for i in ("2", "1"):
        h_in, a, z_hat, inv_std = saved[int(i) - 1]
        da = dh * (a > 0)
        if bn:
            dbeta, dgamma = da.sum(axis=0), (da * z_hat).sum(axis=0)
            dz = w[f"g{i}"] * inv_std / n * (n * da - dbeta - z_hat * dgamma)
            grads[f"g{i}"], grads[f"b{i}"] = dgamma, dbeta
        else:
            dz = da
            grads[f"b{i}"] = da.sum(axis=0)
        grads[f"W{i}"] = h_in.T @ dz
        if i == "2":
            dh = dz @ w["W2"].T
    return loss, grads


@functools.lru_cache(maxsize=1)
def _case(batch: int) -> SimpleNamespace:
    """The batch, the initial weights (fastnn's seeded init), and the first step's reference."""
    rng = np.random.default_rng([SEED, batch])
    x = rng.standard_normal((batch, N_IN), dtype=F32)
    y = rng.integers(0, N_OUT, batch)  # int64, as torch wants
    x.flags.writeable = y.flags.writeable = False

    model = _build_model()
    w0 = _fastnn_arrays(model, "p")
    loss0, grads0 = _reference_step(w0, x, y)
    # fastnn's own first-step loss (active backend), which torch must reproduce from w0.
    logits = model._forward(x, np.random.default_rng(SEED))
    fastnn_loss0 = model.loss(logits, y, model._output_grad_buffer(batch))
    return SimpleNamespace(
        batch=batch,
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


def _record(benchmark, batch: int, impl: str, n_params: int) -> None:
    benchmark.group = f"train_step-{batch}"
    benchmark.extra_info.update(
        bench="train_step",
        batch=batch,
        impl=impl,
        n_params=n_params,
        flops=_flops(batch),
        blas_state="warmed (one 512^3 sgemm and dgemm first)",
    )


def _time(benchmark, fn, rounds: int):
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=2)


# --------------------------------------------------------------------------
# fastnn
# --------------------------------------------------------------------------


def _bench_fastnn(benchmark, case, impl: str) -> None:
    batch = case.batch
    model = _build_model()
    opt = model.optimizer
    xb, yb = case.x, case.y
    row_loss = np.empty(batch)  # the trainer's per-row loss buffer (float64)
    rng = np.random.default_rng([SEED, 1])  # the trainer's dropout generator (unused here)

    steps = 0

    def step():
        nonlocal steps
        steps += 1
        logits = model._forward(xb, rng)
        grad = model._output_grad_buffer(batch)
        loss = model.loss(logits, yb, grad, row_loss=row_loss)
        model._backward(grad)
        opt.step(model._params, model._grads)
        return loss

    # First step from the initial weights, checked (loss, gradients, the Adam update).
    p0 = model._params.copy()
    loss = step()
    _check_first_step(case, impl, loss, _fastnn_arrays(model, "g"))
    _check_first_adam(impl, p0, model._grads, model._params)
    for _ in range(WARMUP_STEPS):
        step()

    _time(benchmark, step, ROUNDS[batch])

    # One more step, from weights w: its loss against the float64 reference at w.
    w = _fastnn_arrays(model, "p")
    loss = step()
    ref, _ = _reference_step(w, xb, yb)
    _check_late_loss(impl, loss, ref)
    assert np.isfinite(model._params).all(), f"{impl}: non-finite parameters"
    assert opt.iterations == steps, f"{impl}: {opt.iterations} Adam steps in {steps} calls"
    benchmark.extra_info.update(loss=loss, backend=fastnn.get_backend())


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


def _torch_net(torch, w0: dict):
    nn = torch.nn
    net = nn.Sequential(
        nn.Linear(N_IN, N_HIDDEN, bias=False),
        nn.BatchNorm1d(N_HIDDEN),
        nn.ReLU(),
        nn.Linear(N_HIDDEN, N_HIDDEN, bias=False),
        nn.BatchNorm1d(N_HIDDEN),
        nn.ReLU(),
        nn.Linear(N_HIDDEN, N_OUT),
    )
    lin1, bn1, _, lin2, bn2, _, lin3 = net
    assert bn1.eps == bn2.eps == BN_EPS
    with torch.no_grad():
        for i, lin, bn in (("1", lin1, bn1), ("2", lin2, bn2)):
            lin.weight.copy_(torch.from_numpy(w0[f"W{i}"].T.astype(F32)))  # weight = kernel.T
            bn.weight.copy_(torch.from_numpy(w0[f"g{i}"].astype(F32)))
            bn.bias.copy_(torch.from_numpy(w0[f"b{i}"].astype(F32)))
        lin3.weight.copy_(torch.from_numpy(w0["W3"].T.astype(F32)))
        lin3.bias.copy_(torch.from_numpy(w0["b3"].astype(F32)))
    return net.train()


def _torch_arrays(net, which: str) -> dict[str, np.ndarray]:
    """Weights (which="p") or their gradients ("g") as float64, in the reference's layout."""
    lin1, bn1, _, lin2, bn2, _, lin3 = net

    def get(t):
        t = t if which == "p" else t.grad
        return t.detach().numpy().astype(F64)

    return {
        "W1": get(lin1.weight).T,
        "g1": get(bn1.weight),
        "b1": get(bn1.bias),
        "W2": get(lin2.weight).T,
        "g2": get(bn2.weight),
        "b2": get(bn2.bias),
        "W3": get(lin3.weight).T,
        "b3": get(lin3.bias),
    }


def _bench_torch(benchmark, case) -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    batch = case.batch
    net = _torch_net(torch, case.w0)
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

    _time(benchmark, step, ROUNDS[batch])

    w = _torch_arrays(net, "p")
    loss = step().item()
    ref, _ = _reference_step(w, case.x, case.y)
    _check_late_loss("torch", loss, ref)
    benchmark.extra_info.update(torch_adam=mode, torch=torch.__version__, loss=loss)


# --------------------------------------------------------------------------
# The limit: the eight products, and one pass over Adam's bytes at copy bandwidth
# --------------------------------------------------------------------------


def _bench_gemm_floor(benchmark, case) -> None:
    batch = case.batch
    rng = np.random.default_rng([SEED, batch, 2])
    w = {k: v.astype(F32) for k, v in case.w0.items()}
    x = case.x
    h1, h2, d1, d2 = (rng.standard_normal((batch, N_HIDDEN), dtype=F32) for _ in range(4))
    d3 = rng.standard_normal((batch, N_OUT), dtype=F32)
    W1, W2, W3 = w["W1"], w["W2"], w["W3"]
    operands = [
        (x, W1),
        (h1, W2),
        (h2, W3),
        (h2.T, d3),
        (d3, W3.T),
        (h1.T, d2),
        (d2, W2.T),
        (x.T, d1),
    ]
    outs = [np.full((a.shape[0], b.shape[1]), np.nan, F32) for a, b in operands]
    for (name, m, k, n), (a, b), out in zip(_gemms(batch), operands, outs, strict=True):
        assert a.shape == (m, k) and b.shape == (k, n) and out.shape == (m, n), name
    matmul = np.matmul

    def products():
        for (a, b), out in zip(operands, outs, strict=True):
            matmul(a, b, out=out)

    for _ in range(WARMUP_STEPS):
        products()
    _time(benchmark, products, ROUNDS[batch])

    # Each product against float64: the summation bound |err| <= k u (|a| @ |b|), u = 2**-24.
    for (name, _, k, _), (a, b), out in zip(_gemms(batch), operands, outs, strict=True):
        a64, b64 = a.astype(F64), b.astype(F64)
        err = np.abs(out - a64 @ b64)
        bound = k * 2.0**-24 * (np.abs(a64) @ np.abs(b64))
        assert (err <= bound).all(), f"gemm-floor: {name} off by {err.max():.3g}"
    benchmark.extra_info["products"] = [name for name, *_ in _gemms(batch)]


def _bench_adam_pass(benchmark, case) -> None:
    n = case.n_params
    elements = math.ceil(3.5 * n)  # 14 B read + 14 B written per parameter
    rng = np.random.default_rng([SEED, n])
    src = rng.standard_normal(elements, dtype=F32)
    dst = np.full_like(src, np.nan)  # touched now: no page faults in the timing
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
    c, b = clf.coefs_, clf.intercepts_
    return {
        "W1": c[0].astype(F64),
        "b1": b[0].astype(F64),
        "W2": c[1].astype(F64),
        "b2": b[1].astype(F64),
        "W3": c[2].astype(F64),
        "b3": b[2].astype(F64),
    }


def _bench_mlpclassifier(benchmark, case) -> None:
    neural_network = pytest.importorskip("sklearn.neural_network")
    import sklearn

    batch = case.batch
    # alpha=0: no L2 term (fastnn and torch have none); shuffle=False: no per-call copy of the
    # batch (fastnn's timed step does not shuffle either).
    clf = neural_network.MLPClassifier(
        hidden_layer_sizes=(N_HIDDEN, N_HIDDEN),
        batch_size=batch,
        solver="adam",
        max_iter=1,
        learning_rate_init=LR,
        alpha=0.0,
        shuffle=False,
        random_state=SEED,
    )
    x, y = case.x, case.y
    classes = np.arange(N_OUT)
    clf.partial_fit(x, y, classes=classes)
    for _ in range(WARMUP_STEPS):
        clf.partial_fit(x, y)

    _time(benchmark, functools.partial(clf.partial_fit, x, y), ROUNDS[batch])

    # One more call: its reported loss (of the weights it started from) against float64.
    w = _sklearn_weights(clf)
    clf.partial_fit(x, y)
    ref, _ = _reference_step(w, x, y, bn=False)
    _check_late_loss("mlpclassifier", float(clf.loss_), ref)
    n_params = sum(a.size for a in (*clf.coefs_, *clf.intercepts_))
    benchmark.extra_info.update(
        n_params=n_params,
        loss=float(clf.loss_),
        sklearn=sklearn.__version__,
        dtype=str(clf.coefs_[0].dtype),
        note="no BatchNorm (sklearn has none): Dense with bias, ReLU; alpha=0, shuffle=False; "
        "partial_fit includes sklearn's input validation",
    )


# --------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------


def _cases():
    return [
        pytest.param(
            batch, impl, id=f"{batch}-{impl}", marks=pytest.mark.torch if impl == "torch" else ()
        )
        for batch in BATCHES
        for impl in IMPLS
    ]


@pytest.mark.parametrize(("batch", "impl"), _cases())
def test_train_step(benchmark, batch, impl):
    case = _case(batch)
    # Before timing: pytest-benchmark takes the group when it times.
    _record(benchmark, batch, impl, case.n_params)
    if impl.startswith("fastnn-"):
        backend = impl.removeprefix("fastnn-")
        if backend not in fastnn.available_backends():
            pytest.skip(f"the {backend} backend is unavailable: {ops.cython_status()}")
        with fastnn.backend(backend):
            _bench_fastnn(benchmark, case, impl)
    elif impl == "torch":
        _bench_torch(benchmark, case)
    elif impl == "gemm-floor":
        _bench_gemm_floor(benchmark, case)
    elif impl == "adam-pass":
        _bench_adam_pass(benchmark, case)
    else:
        _bench_mlpclassifier(benchmark, case)
