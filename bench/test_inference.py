"""Inference benchmark, float32, 1 thread: fastnn's predict_proba against onnxruntime, PyTorch
eager and a bare NumPy forward.

The network is the issue's: MLP 784-256-256-10 with BatchNorm (``Dense(256, no bias)
BatchNorm ReLU`` twice, ``Dense(10) Softmax``), float32, with BatchNorm's gamma, beta and
running statistics away from their initial values (set once from a seeded generator, so the
fold is not the identity). One benchmark group per batch size, ``inference-b1``,
``inference-b32`` and ``inference-b1024``, each with the entries

* ``fastnn``: ``model.predict_proba(X)``, whatever the predict path on this branch is;
* ``onnxruntime``: ``InferenceSession.run`` on the file ``model.to_onnx`` wrote (BatchNorm
  folded into the Gemms), CPU provider, ``intra_op_num_threads = inter_op_num_threads = 1``,
  sequential execution, all graph optimisations;
* ``torch``: the same network in PyTorch eager (``Linear(bias=False)`` before each
  ``BatchNorm1d``, ``Softmax(dim=1)``), same weights, ``eval()``, timed inside
  ``torch.inference_mode()``; the input goes through ``torch.from_numpy`` and the output
  back through ``.numpy()`` (both without copies) in every call;
* ``numpy``: a bare NumPy forward with BatchNorm folded (computed here, in float64, from the
  weights: not fastnn's fold): ``h = x @ W' + b'``, ``np.maximum`` in place, and a softmax
  with the row maximum subtracted.

torch and onnxruntime are optional comparisons: their entries skip when they are not
installed. Threads: the session pins BLAS and OpenMP to one thread (``bench/conftest.py``:
environment variables, ``threadpoolctl.threadpool_limits(1)``, ``torch.set_num_threads(1)``);
each entry records the pools it ran under in ``extra_info["pools"]`` and fails if BLAS had
more than one thread. The host may be shared: each entry records the CPU time other
processes used while it was timed (``others_cpu_s``, Linux ``/proc/stat``), which
``bench/inference_report.py`` turns into a "disturbed" flag.

Every entry checks its output: fastnn's against a float64 NumPy forward of the unfolded
network (BatchNorm as its formula, running statistics), every other entry's against
fastnn's, all within 1e-5 (probabilities, float32).

``extra_info``: ``bench`` ("inference"), ``batch``, ``impl``, ``layers`` (the widths),
``threads`` (1), ``rounds``, ``pools``, and the disturbance figures.
"""

from __future__ import annotations

import contextlib
import os
import time

import numpy as np
import pytest

import fastnn
from fastnn.layers import BatchNorm, Dense, ReLU, Softmax

try:
    from threadpoolctl import threadpool_info
except ImportError:  # part of the `bench` extra; the session's environment variables still pin
    threadpool_info = None

F32, F64 = np.float32, np.float64
SEED = 20241204
WIDTHS = (784, 256, 256, 10)
BATCHES = (1, 32, 1024)
IMPLS = ("fastnn", "onnxruntime", "torch", "numpy")
BN_EPS = 1e-5  # fastnn's and torch's default
# Timed calls per batch size (fastnn's batch-1 call takes ~0.1-1 ms, batch 1024 ~10 ms).
ROUNDS = {1: 2000, 32: 500, 1024: 60}
WARMUP_ROUNDS = 10
TOL = {"rtol": 1e-5, "atol": 1e-5}


# --------------------------------------------------------------------------
# The network, its weights, the references
# --------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _openblas_steady_state():
    """One large sgemm and dgemm first: OpenBLAS runs small products at full speed only once
    a large one has run in the process (see bench/test_train_step.py), for every entry."""
    for dtype in (F32, F64):
        a = np.ones((512, 512), dtype)
        assert float((a @ a)[0, 0]) == 512.0


def _layers() -> list:
    layers = []
    for width in WIDTHS[1:-1]:
        layers += [Dense(width), BatchNorm(), ReLU()]
    return layers + [Dense(WIDTHS[-1]), Softmax()]


def _perturbed(name: str, array: np.ndarray, rng) -> np.ndarray:
    """BatchNorm's parameters and statistics, and biases, away from their initial values."""
    n = array.shape
    values = {
        "gamma": lambda: rng.uniform(0.5, 1.5, n),
        "beta": lambda: rng.normal(0.0, 0.2, n),
        "running_mean": lambda: rng.normal(0.0, 0.5, n),
        "running_var": lambda: rng.uniform(0.5, 2.0, n),
        "bias": lambda: rng.normal(0.0, 0.1, n),
    }
    return values[name]().astype(array.dtype) if name in values else array


@pytest.fixture(scope="module")
def net():
    model = fastnn.Sequential(_layers(), input_dim=WIDTHS[0], dtype="float32", seed=SEED)
    rng = np.random.default_rng(SEED)
    weights = []
    for layer in model.layers:  # get_weights order: each layer's params, then its states
        for name in (*layer.params, *layer.states):
            array = layer.p[name] if name in layer.p else layer.s[name]
            weights.append(_perturbed(name, array, rng))
    model.set_weights(weights)
    X = rng.standard_normal((max(BATCHES), WIDTHS[0])).astype(F32)
    return model, X


def _blocks(model) -> list[dict]:
    """Per Dense layer, float64 copies: {"W", "b"} and, if a BatchNorm follows, its
    {"gamma", "beta", "mean", "var"}."""
    blocks = []
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Dense):
            block = {"W": layer.p["kernel"].astype(F64),
                     "b": layer.p["bias"].astype(F64) if layer.has_bias else 0.0}
            following = model.layers[i + 1]
            if isinstance(following, BatchNorm):
                block.update(gamma=following.p["gamma"].astype(F64),
                             beta=following.p["beta"].astype(F64),
                             mean=following.s["running_mean"].astype(F64),
                             var=following.s["running_var"].astype(F64))
            blocks.append(block)
    return blocks


def _softmax64(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _reference(model, X: np.ndarray) -> np.ndarray:
    """float64, BatchNorm unfolded: (z - mean) / sqrt(var + eps) * gamma + beta, then ReLU."""
    h = X.astype(F64)
    blocks = _blocks(model)
    for j, block in enumerate(blocks):
        h = h @ block["W"] + block["b"]
        if "gamma" in block:
            h = (h - block["mean"]) / np.sqrt(block["var"] + BN_EPS)
            h = h * block["gamma"] + block["beta"]
        if j + 1 < len(blocks):
            h = np.maximum(h, 0.0)
    return _softmax64(h)


# --------------------------------------------------------------------------
# The entries: each returns a function of the batch giving probabilities
# --------------------------------------------------------------------------


def _fastnn(model, tmp_path_factory):
    return model.predict_proba


def _onnxruntime(model, tmp_path_factory):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = model.to_onnx(tmp_path_factory.mktemp("onnx") / "mlp.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    run = session.run

    def predict(x):
        return run(None, {"input": x})[0]

    return predict


def _torch(model, tmp_path_factory):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    layers = []
    for block in _blocks(model):
        n_in, n_out = block["W"].shape
        linear = nn.Linear(n_in, n_out, bias="gamma" not in block)
        linear.weight.data = torch.tensor(block["W"].T, dtype=torch.float32)
        layers.append(linear)
        if "gamma" in block:
            bn = nn.BatchNorm1d(n_out, eps=BN_EPS)
            for name, key in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "mean"),
                              ("running_var", "var")):
                getattr(bn, name).data = torch.tensor(block[key], dtype=torch.float32)
            layers += [bn, nn.ReLU()]
        else:
            linear.bias.data = torch.tensor(block["b"], dtype=torch.float32)
    net = nn.Sequential(*layers, nn.Softmax(dim=1)).eval()
    from_numpy = torch.from_numpy

    def predict(x):
        return net(from_numpy(x)).numpy()

    return predict


def _numpy(model, tmp_path_factory):
    folded = []
    for block in _blocks(model):
        W, b = block["W"], block["b"] + np.zeros(block["W"].shape[1])
        if "gamma" in block:
            scale = block["gamma"] / np.sqrt(block["var"] + BN_EPS)
            W, b = W * scale, (b - block["mean"]) * scale + block["beta"]
        folded.append((W.astype(F32), b.astype(F32)))
    *hidden, (W_out, b_out) = folded

    def predict(x):
        for W, b in hidden:
            x = x @ W
            x += b
            np.maximum(x, 0, out=x)
        z = x @ W_out
        z += b_out
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z

    return predict


ENTRIES = {"fastnn": _fastnn, "onnxruntime": _onnxruntime, "torch": _torch, "numpy": _numpy}


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------


def _pools() -> dict[str, int]:
    """Thread count of each pool now, e.g. {"openblas": 1, "openmp": 1}."""
    pools: dict[str, int] = {}
    for pool in threadpool_info() if threadpool_info is not None else ():
        name = pool.get("internal_api", pool.get("prefix", "?"))
        pools[name] = max(pools.get(name, 0), pool["num_threads"])
    return pools


def _cpu_seconds_all() -> float | None:
    """CPU seconds all processes have used since boot (Linux /proc/stat, less idle and
    iowait), or None where that cannot be read."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            ticks = [int(v) for v in fh.readline().split()[1:9]]
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def _others_cpu(benchmark):
    """Record the CPU seconds other processes used while timing (``others_cpu_s``), with
    ``timed_wall_s`` and ``cpus``: the report flags a row whose timing they disturbed."""
    all0, own0, wall0 = _cpu_seconds_all(), os.times(), time.perf_counter()
    yield
    wall, all1, own1 = time.perf_counter() - wall0, _cpu_seconds_all(), os.times()
    if all0 is None or all1 is None:
        return
    own = (own1.user - own0.user) + (own1.system - own0.system)
    benchmark.extra_info.update(others_cpu_s=max(0.0, all1 - all0 - own), timed_wall_s=wall,
                                cpus=os.cpu_count())


def _inference_mode(impl: str):
    if impl != "torch":
        return contextlib.nullcontext()
    import torch

    return torch.inference_mode()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch", BATCHES)
def test_inference(benchmark, net, tmp_path_factory, batch, impl):
    model, X = net
    predict = ENTRIES[impl](model, tmp_path_factory)
    x = np.ascontiguousarray(X[:batch])
    expected = _reference(model, x)
    fastnn_probs = model.predict_proba(x)
    np.testing.assert_allclose(fastnn_probs, expected, **TOL)  # fastnn itself is right
    benchmark.group = f"inference-b{batch}"
    pools = _pools()
    assert all(n == 1 for n in pools.values()), f"thread pools not pinned to 1: {pools}"
    benchmark.extra_info.update(bench="inference", batch=batch, impl=impl,
                                layers=list(WIDTHS), threads=1, rounds=ROUNDS[batch],
                                pools=pools)
    with _inference_mode(impl):
        got = predict(x)
        with _others_cpu(benchmark):
            benchmark.pedantic(predict, args=(x,), rounds=ROUNDS[batch], iterations=1,
                               warmup_rounds=WARMUP_ROUNDS)
        again = predict(x)
    for out in (got, again):
        assert out.shape == (batch, WIDTHS[-1]) and out.dtype == F32
        np.testing.assert_allclose(out, fastnn_probs, **TOL)


def test_report_ratios(capsys):
    """bench/inference_report.py: ratios over onnxruntime's median, targets, disturbance."""
    from inference_report import print_inference  # beside this file

    def entry(batch, impl, median, others=0.0):
        return {"extra_info": {"bench": "inference", "batch": batch, "impl": impl,
                               "layers": list(WIDTHS), "others_cpu_s": others,
                               "timed_wall_s": 1.0, "cpus": 2},
                "stats": {"median": median, "min": median / 2}}

    data = {"benchmarks": [entry(1, "onnxruntime", 40e-6), entry(1, "fastnn", 42e-6),
                           entry(1, "numpy", 80e-6), entry(1024, "onnxruntime", 10e-3, 0.5),
                           entry(1024, "fastnn", 12e-3, 0.5)]}
    print_inference(data, markdown=False)
    out = capsys.readouterr().out
    assert "| " not in out and "784-256-256-10" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines()
             if line.strip().split(" ")[0] in ("1", "1024")}
    assert lines["1"][1:6] == ["40.0", "µs", "1.05", "1.05", "n/a"] and lines["1"][6] == "2.00"
    assert lines["1024"][3:5] == ["1.20", "1.20"] and lines["1024"][-1] == "disturbed"
    assert "batch 1: fastnn predict_proba <= 1.1x onnxruntime: hold (1.05x)" in out
    assert "batch 1024: fastnn predict_proba <= 1x onnxruntime: MISS (1.20x) - disturbed" in out
