"""Kernel benchmarks, float32: fastnn's two backends against PyTorch CPU and a memory copy.

One benchmark group is one kernel at one size, holding the implementations that do the same
work: ``cython`` and ``numpy`` (the same ``fastnn.ops`` call on each backend), ``torch`` (the
PyTorch CPU equivalent) and, at the largest size, ``copy`` (``np.copyto`` of at least 32 MiB:
the memory-bandwidth bound that ``bench/report.py`` compares the kernel with).

Every benchmark checks, after timing, what the timed calls computed against a float64 NumPy
reference computed once per size (so an implementation cannot be fast and wrong). State that
the calls update in place (running statistics, Adam's moments and parameters) is checked
against its closed form after the number of calls actually made.

``extra_info`` of each benchmark: ``kernel``, ``size``, ``impl``, ``elements`` and ``bytes`` /
``bytes_min``, the memory traffic of one call (see bench/README.md); ``copy`` entries also
``copy_bytes``.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import pytest

import fastnn
from fastnn import ops

F32 = np.float32
SEED = 20240611

BN_MOMENTUM, BN_EPS = 0.1, 1e-5
LR, BETA1, BETA2, ADAM_EPS = 1e-3, 0.9, 0.999, 1e-8

BN_SIZES = ((64, 128), (256, 256), (1024, 512), (8192, 1024))
CE_SIZES = ((64, 10), (256, 10), (1024, 1000), (8192, 1000))
ADAM_SIZES = (10**4, 10**5, 10**6, 10**7)
IMPLS = ("cython", "numpy", "torch")

# Calls on this many elements or more take milliseconds to a tenth of a second: they get a
# fixed number of rounds instead of pytest-benchmark's calibrated loop (default max_time).
LARGE_ELEMENTS = 4 * 2**20
LARGE_ROUNDS = 15
COPY_ROUNDS = 30
COPY_MIN_BYTES = 32 * 2**20  # larger than the 8 MiB L3: the copy streams from memory

# Adam always runs a fixed number of steps, so that the parameters' drift after the timed
# steps stays small and its float32 rounding bounded (see _check_adam_steps).
ADAM_ROUNDS = {10**4: 1000, 10**5: 500, 10**6: 100, 10**7: LARGE_ROUNDS}

# float32 results against a float64 reference. Quantities of order one (BN out and dx, the
# softmax-minus-onehot, running statistics, Adam moments) use these; sums over the batch and
# tiny or accumulated quantities get their own, derived where they are checked.
RTOL, ATOL = 1e-4, 1e-5


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _size_id(size) -> str:
    """'8192x1024' for a shape, '1e7' for a parameter count."""
    if isinstance(size, tuple):
        return "x".join(str(s) for s in size)
    return f"1e{len(str(size)) - 1}" if str(size).strip("0") == "1" else str(size)


def _cases(sizes):
    """(size, impl) parameters, size-major so that one size's data is built once."""
    return [
        pytest.param(
            size,
            impl,
            id=f"{_size_id(size)}-{impl}",
            marks=pytest.mark.torch if impl == "torch" else (),
        )
        for size in sizes
        for impl in IMPLS
    ]


def _record(benchmark, kernel: str, size, impl: str, elements: int, nbytes: int, nbytes_min: int):
    benchmark.group = f"{kernel} {_size_id(size)}"
    benchmark.extra_info.update(
        kernel=kernel,
        size=_size_id(size),
        impl=impl,
        elements=elements,
        bytes=nbytes,
        bytes_min=nbytes_min,
    )


def _time(benchmark, fn, elements: int, rounds: int | None = None):
    """Time fn: calibrated rounds for small calls, fixed rounds (pedantic) for large ones."""
    if rounds is None and elements >= LARGE_ELEMENTS:
        rounds = LARGE_ROUNDS
    if rounds is None:
        # One untimed call first: a slow first call (lazy initialisation, page faults) would
        # otherwise set pytest-benchmark's calibration and leave only a handful of rounds.
        fn()
        return benchmark(fn)
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


def _torch():
    torch = pytest.importorskip("torch")
    return torch, torch.nn.functional


def _frozen(*arrays):
    """Mark inputs read-only: no implementation may write to the shared data."""
    for a in arrays:
        a.flags.writeable = False
    return arrays


# --------------------------------------------------------------------------
# Batch normalisation: training forward (with running statistics) + backward
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _bn_case(n: int, d: int) -> SimpleNamespace:
    rng = np.random.default_rng([SEED, n, d])
    loc = rng.uniform(-1.0, 1.0, d).astype(F32)
    scale = rng.uniform(0.5, 2.0, d).astype(F32)
    x = rng.standard_normal((n, d), dtype=F32) * scale + loc
    dy = rng.standard_normal((n, d), dtype=F32)
    gamma = rng.uniform(0.5, 1.5, d).astype(F32)
    beta = rng.standard_normal(d, dtype=F32)
    rm0 = rng.standard_normal(d, dtype=F32)
    rv0 = rng.uniform(0.5, 2.0, d).astype(F32)
    _frozen(x, dy, gamma, beta, rm0, rv0)

    x64, dy64, g64 = x.astype(np.float64), dy.astype(np.float64), gamma.astype(np.float64)
    mean = x64.mean(axis=0)
    var = ((x64 - mean) ** 2).mean(axis=0)
    inv_std = 1.0 / np.sqrt(var + BN_EPS)
    x_hat = (x64 - mean) * inv_std
    dbeta = dy64.sum(axis=0)
    dgamma = (dy64 * x_hat).sum(axis=0)
    return SimpleNamespace(
        x=x,
        dy=dy,
        gamma=gamma,
        beta=beta,
        rm0=rm0,
        rv0=rv0,
        out=g64 * x_hat + beta,
        dx=g64 * inv_std / n * (n * dy64 - dbeta - x_hat * dgamma),
        dgamma=dgamma,
        dbeta=dbeta,
        mean=mean,
        var_unbiased=var * n / (n - 1),
        # Typical size of the batch sums dgamma and dbeta (n terms of order one).
        sum_scale=np.sqrt(n),
    )


def _check_bn(case, calls, out, dx, dgamma, dbeta, running_mean, running_var):
    np.testing.assert_allclose(out, case.out, RTOL, ATOL, err_msg="BN out")
    np.testing.assert_allclose(dx, case.dx, RTOL, ATOL, err_msg="BN dx")
    # Sums of n terms of order one: absolute error relative to their typical size, sqrt(n).
    sum_atol = ATOL * case.sum_scale
    np.testing.assert_allclose(dgamma, case.dgamma, RTOL, sum_atol, err_msg="BN dgamma")
    np.testing.assert_allclose(dbeta, case.dbeta, RTOL, sum_atol, err_msg="BN dbeta")
    # After k identical training calls: r_k = stat + (1 - momentum)**k * (r_0 - stat).
    keep = (1.0 - BN_MOMENTUM) ** calls
    rm_ref = case.mean + keep * (case.rm0 - case.mean)
    rv_ref = case.var_unbiased + keep * (case.rv0 - case.var_unbiased)
    np.testing.assert_allclose(running_mean, rm_ref, RTOL, ATOL, err_msg="BN running_mean")
    np.testing.assert_allclose(running_var, rv_ref, RTOL, ATOL, err_msg="BN running_var")


@pytest.mark.parametrize(("size", "impl"), _cases(BN_SIZES))
def test_batchnorm(benchmark, size, impl):
    n, d = size
    case = _bn_case(n, d)
    elements = n * d
    # Forward reads x twice (statistics, normalise), writes out and x_hat; backward reads dout
    # and x_hat twice (sums, dx) and writes dx: 9 passes, of which 6 are the minimum.
    _record(benchmark, "batchnorm", size, impl, elements, 9 * elements * 4, 6 * elements * 4)
    calls = 0

    if impl == "torch":
        torch, F = _torch()
        x = torch.tensor(case.x, requires_grad=True)
        weight = torch.tensor(case.gamma, requires_grad=True)
        bias = torch.tensor(case.beta, requires_grad=True)
        dy = torch.tensor(case.dy)
        running_mean, running_var = torch.tensor(case.rm0), torch.tensor(case.rv0)

        def run():
            nonlocal calls
            calls += 1
            x.grad = weight.grad = bias.grad = None
            out = F.batch_norm(
                x,
                running_mean,
                running_var,
                weight,
                bias,
                training=True,
                momentum=BN_MOMENTUM,
                eps=BN_EPS,
            )
            out.backward(dy)
            return out

        out = _time(benchmark, run, elements)
        results = (out.detach(), x.grad, weight.grad, bias.grad, running_mean, running_var)
        _check_bn(case, calls, *(t.numpy() for t in results))
        return

    # fastnn, steady state: caller-owned outputs and a reused cache (no allocation per call).
    running_mean, running_var = case.rm0.copy(), case.rv0.copy()
    out, dx = np.empty_like(case.x), np.empty_like(case.x)
    dgamma, dbeta = np.empty(d, F32), np.empty(d, F32)
    cache = None

    def run():
        nonlocal calls, cache
        calls += 1
        _, cache = ops.batchnorm_forward(
            case.x,
            case.gamma,
            case.beta,
            running_mean,
            running_var,
            training=True,
            momentum=BN_MOMENTUM,
            eps=BN_EPS,
            out=out,
            cache=cache,
        )
        ops.batchnorm_backward(case.dy, cache, dx=dx, dgamma=dgamma, dbeta=dbeta)

    with fastnn.backend(impl):
        _time(benchmark, run, elements)
    _check_bn(case, calls, out, dx, dgamma, dbeta, running_mean, running_var)


# --------------------------------------------------------------------------
# Softmax cross-entropy: mean loss + gradient of the logits
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _ce_case(n: int, c: int) -> SimpleNamespace:
    rng = np.random.default_rng([SEED, n, c])
    logits = rng.standard_normal((n, c), dtype=F32) * F32(3.0)
    labels = rng.integers(0, c, n)  # int64, as torch wants
    _frozen(logits, labels)

    rows = np.arange(n)
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    p_minus_y = np.exp(z - lse[:, None])
    p_minus_y[rows, labels] -= 1.0
    return SimpleNamespace(
        logits=logits,
        labels=labels,
        loss=float(np.mean(lse - z[rows, labels])),
        p_minus_y=p_minus_y,
    )


def _check_ce(case, loss, grad):
    n = case.logits.shape[0]
    # Loss of order log(C), summed in double by fastnn: a relative tolerance suffices.
    np.testing.assert_allclose(loss, case.loss, rtol=1e-5, err_msg="CE loss")
    # grad = (softmax - onehot) / n: compare n * grad (exact scaling by a power of two) with
    # the order-one softmax - onehot, so that the tolerance does not shrink with 1/n.
    np.testing.assert_allclose(
        grad.astype(np.float64) * n, case.p_minus_y, RTOL, 1e-6, err_msg="CE grad * n"
    )


@pytest.mark.parametrize(("size", "impl"), _cases(CE_SIZES))
def test_cross_entropy(benchmark, size, impl):
    n, c = size
    case = _ce_case(n, c)
    elements = n * c
    # Reads the logits once and writes the gradient once (labels ignored).
    _record(benchmark, "cross_entropy", size, impl, elements, 2 * elements * 4, 2 * elements * 4)

    if impl == "torch":
        torch, F = _torch()
        logits = torch.tensor(case.logits, requires_grad=True)
        labels = torch.tensor(case.labels)

        def run():
            logits.grad = None
            loss = F.cross_entropy(logits, labels)
            loss.backward()
            return loss

        loss = _time(benchmark, run, elements)
        _check_ce(case, loss.item(), logits.grad.numpy())
        return

    grad = np.empty_like(case.logits)

    def run():
        return ops.softmax_cross_entropy(case.logits, case.labels, grad=grad)

    with fastnn.backend(impl):
        loss, _ = _time(benchmark, run, elements)
    _check_ce(case, loss, grad)


# --------------------------------------------------------------------------
# Adam: one step over a flat float32 buffer
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _adam_case(n: int) -> SimpleNamespace:
    rng = np.random.default_rng([SEED, n])
    param = rng.standard_normal(n, dtype=F32)
    grad = rng.standard_normal(n, dtype=F32) * F32(0.1)
    # A known mid-training state for the one-step check.
    m0 = rng.standard_normal(n, dtype=F32) * F32(0.01)
    v0 = rng.uniform(1e-4, 1e-2, n).astype(F32)
    step = 7
    _frozen(param, grad, m0, v0)

    g = grad.astype(np.float64)
    m1 = BETA1 * m0 + (1.0 - BETA1) * g
    v1 = BETA2 * v0 + (1.0 - BETA2) * g * g
    bc1, bc2 = 1.0 - BETA1**step, 1.0 - BETA2**step
    p1 = param - LR / bc1 * m1 / (np.sqrt(v1) / np.sqrt(bc2) + ADAM_EPS)
    return SimpleNamespace(param=param, grad=grad, m0=m0, v0=v0, step=step, m1=m1, v1=v1, p1=p1)


def _check_adam_one_step(case, param, m, v):
    """One step from the known state (m0, v0, step) against the float64 closed form."""
    np.testing.assert_allclose(m, case.m1, RTOL, 1e-7, err_msg="Adam m (one step)")
    np.testing.assert_allclose(v, case.v1, RTOL, 1e-9, err_msg="Adam v (one step)")
    # param moves by about lr = 1e-3: a few float32 ulps of param (|param| < 8), far below the
    # step, are the tolerance.
    np.testing.assert_allclose(param, case.p1, 0.0, 4 * 2.0**-21, err_msg="Adam param (one step)")


def _check_adam_steps(case, calls, param, m, v):
    """After k steps from zero moments with a constant gradient g, in exact arithmetic:
    m_k = (1 - b1**k) g, v_k = (1 - b2**k) g**2, and every bias-corrected step is
    lr * g / (|g| + eps), so param_k = param_0 - k * lr * g / (|g| + eps)."""
    g = case.grad.astype(np.float64)
    np.testing.assert_allclose(m, (1.0 - BETA1**calls) * g, RTOL, 1e-8, err_msg="Adam m (k steps)")
    np.testing.assert_allclose(
        v, (1.0 - BETA2**calls) * g * g, RTOL, 1e-10, err_msg="Adam v (k steps)"
    )
    # Mean displacement per step, of order one. Each in-place step rounds param (|param| < 8)
    # by at most half a float32 ulp, 2**-22, so the mean may be off by up to 2**-22 / lr plus
    # the steps' own float32 error (about 1e-5 of a step): 2**-20 / lr bounds both.
    moved = (case.param.astype(np.float64) - param) / (calls * LR)
    np.testing.assert_allclose(
        moved,
        g / (np.abs(g) + ADAM_EPS),
        0.0,
        2.0**-20 / LR,
        err_msg="Adam param (k steps): mean displacement / lr",
    )


@functools.cache
def _torch_adam_options(torch) -> tuple[dict, str]:
    """fused=True where this torch supports it on CPU (checked lazily, at the first step, so
    probed on a tiny tensor), else the single-tensor loop."""
    probe = torch.zeros(4)
    probe.grad = torch.ones(4)
    try:
        torch.optim.Adam([probe], fused=True).step()
    except (RuntimeError, ValueError):
        return {"foreach": False}, "foreach=False"
    return {"fused": True}, "fused"


def _torch_adam(torch, param):
    options, mode = _torch_adam_options(torch)
    return torch.optim.Adam([param], lr=LR, betas=(BETA1, BETA2), eps=ADAM_EPS, **options), mode


@pytest.mark.parametrize(("size", "impl"), _cases(ADAM_SIZES))
def test_adam(benchmark, size, impl):
    n = size
    case = _adam_case(n)
    # Reads param, grad, m, v and writes param, m, v: 7 floats per parameter.
    _record(benchmark, "adam", size, impl, n, 28 * n, 28 * n)
    calls = 0

    if impl == "torch":
        torch, _ = _torch()
        # One step from the known state, on copies (from_numpy: the tensors share the arrays).
        param, m, v = case.param.copy(), case.m0.copy(), case.v0.copy()
        tparam = torch.from_numpy(param)
        tparam.grad = torch.tensor(case.grad)
        opt, _ = _torch_adam(torch, tparam)
        opt.state[tparam] = {
            "step": torch.tensor(float(case.step - 1), dtype=torch.float32),
            "exp_avg": torch.from_numpy(m),
            "exp_avg_sq": torch.from_numpy(v),
        }
        opt.step()
        _check_adam_one_step(case, param, m, v)

        # Timed steps from zero moments (torch's own lazy state initialisation).
        param = case.param.copy()
        tparam = torch.from_numpy(param)
        tparam.grad = torch.tensor(case.grad)
        opt, mode = _torch_adam(torch, tparam)
        benchmark.extra_info["torch_adam"] = mode

        def run():
            nonlocal calls
            calls += 1
            opt.step()

        _time(benchmark, run, n, ADAM_ROUNDS[n])
        state = opt.state[tparam]
        assert int(state["step"].item()) == calls
        _check_adam_steps(case, calls, param, state["exp_avg"].numpy(), state["exp_avg_sq"].numpy())
        return

    with fastnn.backend(impl):
        param, m, v = case.param.copy(), case.m0.copy(), case.v0.copy()
        ops.adam_update(
            param, case.grad, m, v, case.step, lr=LR, beta1=BETA1, beta2=BETA2, eps=ADAM_EPS
        )
        _check_adam_one_step(case, param, m, v)

        param, m, v = case.param.copy(), np.zeros(n, F32), np.zeros(n, F32)

        def run():
            nonlocal calls
            calls += 1
            ops.adam_update(
                param, case.grad, m, v, calls, lr=LR, beta1=BETA1, beta2=BETA2, eps=ADAM_EPS
            )

        _time(benchmark, run, n, ADAM_ROUNDS[n])
    _check_adam_steps(case, calls, param, m, v)


# --------------------------------------------------------------------------
# The memory-bandwidth bound, in the group of each kernel's largest size
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kernel", "size"),
    [
        pytest.param("batchnorm", BN_SIZES[-1], id="batchnorm"),
        pytest.param("cross_entropy", CE_SIZES[-1], id="cross_entropy"),
        pytest.param("adam", ADAM_SIZES[-1], id="adam"),
    ],
)
def test_copy(benchmark, kernel, size):
    elements = int(np.prod(size))
    n = max(elements, COPY_MIN_BYTES // 4)
    src = np.random.default_rng(SEED).standard_normal(n, dtype=F32)
    dst = np.full_like(src, np.nan)  # written once now, so that no page faults are timed
    copy_bytes = 2 * src.nbytes  # read src, write dst
    _record(benchmark, kernel, size, "copy", n, copy_bytes, copy_bytes)
    benchmark.extra_info["copy_bytes"] = copy_bytes

    benchmark.pedantic(
        np.copyto, args=(dst, src), rounds=COPY_ROUNDS, iterations=1, warmup_rounds=1
    )
    assert np.array_equal(dst, src)
