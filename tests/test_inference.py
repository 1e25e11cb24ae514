"""Planned inference (fastnn._infer) and the thread policy (fastnn._threads).

The planned pass must give the layers' own eval forward (within float tolerance), see
every change of the weights at once (it binds the live views: nothing folded can go
stale), keep per-thread buffers, check its inputs and outputs, and fall back wherever a
layer or the backend cannot plan.
"""

from __future__ import annotations

import copy
import os
import pickle
import threading

import numpy as np
import pytest
from threadpoolctl import ThreadpoolController

import fastnn
from fastnn import Sequential, _threads, ops
from fastnn import layers as L
from fastnn.callbacks import Callback

TOL = {np.float32: {"rtol": 2e-5, "atol": 2e-6}, np.float64: {"rtol": 1e-12, "atol": 1e-12}}

ARCHITECTURES = {
    "bn-relu": lambda: L.mlp([24, 16], 5),
    "relu-no-bn": lambda: L.mlp([24], 5, batch_norm=False),
    "bn-tanh-dropout": lambda: L.mlp([20, 12], 4, activation="tanh", dropout=0.3),
    "sigmoid": lambda: L.mlp([16], 3, activation="sigmoid"),
    "leaky": lambda: [L.Dense(16), L.BatchNorm(), L.LeakyReLU(0.2), L.Dense(4), L.Softmax()],
    "identity": lambda: L.mlp([16], 3, activation="identity"),
    "bn-after-activation": lambda: [L.Dense(16), L.ReLU(), L.BatchNorm(), L.Dense(3),
                                    L.Softmax()],
    "regressor": lambda: [L.Dense(16), L.BatchNorm(), L.ReLU(), L.Dense(2)],
    "standardize": lambda: [L.Standardize(np.linspace(-1, 1, 10), np.linspace(0.5, 3, 10)),
                            *L.mlp([16], 3)],
}


def _trained(name, dtype, n_features=10, seed=0):
    rng = np.random.default_rng(seed)
    model = Sequential(ARCHITECTURES[name](), dtype=dtype, seed=seed)
    X = rng.standard_normal((96, n_features))
    if model.loss.classification:
        y = rng.integers(0, model.static_output_dim(), 96)
    else:
        y = rng.standard_normal((96, model.static_output_dim()))
    model.fit(X, y, epochs=2, batch_size=16, verbose=0)
    return model, rng


def _unfolded(model, X):
    """The layers' own eval forward, one by one (the reference)."""
    return model._infer(np.ascontiguousarray(X, dtype=model.dtype), fold=False)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_planned_pass_equals_the_layers_forward(name, dtype):
    model, rng = _trained(name, dtype)
    assert model._plans.get(model, 3, False) is not None, "this model should plan"
    for n in (1, 2, 3, 4, 5, 7, 33):
        X = rng.standard_normal((n, 10))
        np.testing.assert_allclose(model._infer(X), _unfolded(model, X), **TOL[dtype])


def test_planned_pass_equals_the_numpy_backend(dtype):
    model, rng = _trained("bn-relu", dtype)
    X = rng.standard_normal((50, 10))
    planned = model.predict_proba(X)
    with fastnn.backend("numpy"):
        assert model._plans.get(model, 50, False) is None  # the numpy backend never plans
        reference = model.predict_proba(X)
    np.testing.assert_allclose(planned, reference, **TOL[dtype])


def test_more_rows_than_a_chunk_are_predicted_chunk_by_chunk(monkeypatch):
    from fastnn import model as model_mod

    model, rng = _trained("bn-relu", np.float32)
    X = rng.standard_normal((23, 10))
    whole = model.predict_proba(X)
    monkeypatch.setattr(model_mod, "_PREDICT_CHUNK", 5)  # chunks of 5, 5, 5, 5 and 3 rows
    np.testing.assert_allclose(model.predict_proba(X), whole, **TOL[np.float32])
    np.testing.assert_array_equal(model.predict(X), np.argmax(whole, axis=1))


def test_a_prediction_sees_new_weights_at_once():
    model, rng = _trained("bn-relu", np.float32)
    X = rng.standard_normal((4, 10))
    before = model.predict_proba(X)  # builds and keeps the plan
    # set_weights, an in-place edit of a kernel view and of a running statistic
    weights = model.get_weights()
    weights[0] = weights[0] * 0.5
    model.set_weights(weights)
    after = model.predict_proba(X)
    assert not np.allclose(after, before)
    np.testing.assert_allclose(after, _unfolded(model, X), **TOL[np.float32])
    model.layers[0].p["kernel"][:] *= 2.0
    model.layers[1].s["running_var"][:] *= 3.0
    np.testing.assert_allclose(model.predict_proba(X), _unfolded(model, X), **TOL[np.float32])
    # more training changes every weight and statistic: still seen
    y = rng.integers(0, 5, 96)
    model.fit(rng.standard_normal((96, 10)), y, epochs=1, verbose=0)
    np.testing.assert_allclose(model.predict_proba(X), _unfolded(model, X), **TOL[np.float32])


def test_a_rebuilt_model_gets_new_plans():
    model, rng = _trained("bn-relu", np.float32)
    X = rng.standard_normal((3, 10))
    model.predict_proba(X)
    old = model._plans.get(model, 3, False)
    model.build(10)  # fresh buffers, fresh initialisation
    new = model._plans.get(model, 3, False)
    assert new is not old and new.params is model._params
    np.testing.assert_allclose(model.predict_proba(X), _unfolded(model, X), **TOL[np.float32])


def test_copies_and_pickles_of_a_model_that_predicted():
    model, rng = _trained("bn-relu", np.float32)
    X = rng.standard_normal((6, 10))
    expected = model.predict_proba(X)
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        np.testing.assert_array_equal(clone.predict_proba(X), expected)
        clone.layers[0].p["kernel"][:] = 0.0  # the clone's buffers are its own
    np.testing.assert_array_equal(model.predict_proba(X), expected)


def test_each_thread_predicts_into_its_own_buffers():
    model, rng = _trained("bn-relu", np.float32)
    X = rng.standard_normal((8, 10))
    mine = model._plans.get(model, 8, False)
    theirs = []
    thread = threading.Thread(target=lambda: theirs.append(model._plans.get(model, 8, False)))
    thread.start()
    thread.join()
    assert theirs[0] is not mine
    assert not np.shares_memory(theirs[0].x, mine.x)
    assert not np.shares_memory(theirs[0].out, mine.out)
    # the returned array is the caller's: the next prediction does not overwrite it
    first = model.predict_proba(X)
    kept = first.copy()
    model.predict_proba(rng.standard_normal((8, 10)))
    np.testing.assert_array_equal(first, kept)


def test_plans_per_thread_are_bounded():
    from fastnn import _infer

    model, rng = _trained("relu-no-bn", np.float32)
    for n in range(1, 3 * _infer._PLANS_PER_THREAD):
        model.predict(rng.standard_normal((n, 10)))
    assert len(model._plans.by_key) <= _infer._PLANS_PER_THREAD


def test_a_users_layer_predicts_through_its_own_forward():
    class Doubling(L.Layer):
        def forward(self, x, training, rng=None):
            return 2.0 * x

    model = Sequential([L.Dense(8), Doubling(), L.Dense(3), L.Softmax()], input_dim=5, seed=0)
    assert model._plans.get(model, 2, False) is None
    X = np.random.default_rng(1).standard_normal((2, 5)).astype(np.float32)
    W1, b1, W2, b2 = model.get_weights()
    z = (X @ W1 + b1) * 2.0 @ W2 + b2
    expected = np.exp(z - z.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(model.predict_proba(X), expected, rtol=1e-5, atol=1e-6)


# ---- inputs and outputs checked -------------------------------------------------------

@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_non_finite_inputs_are_refused_with_their_row(backend, monkeypatch):
    from fastnn import model as model_mod

    model, rng = _trained("bn-relu", np.float32)
    monkeypatch.setattr(model_mod, "_PREDICT_CHUNK", 4)
    with fastnn.backend(backend):
        for bad in (np.nan, np.inf, -np.inf):
            X = rng.standard_normal((10, 10))
            X[6, 3] = bad  # in the second chunk
            with pytest.raises(ValueError, match=r"X contains NaN or inf \(first at row 6, "
                                                 r"column 3\)"):
                model.predict_proba(X)


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_finite_inputs_that_overflow_the_network_are_refused(backend):
    # 3e38 is a finite float32, but the first product overflows: no silent NaN
    model, rng = _trained("bn-relu", np.float32)
    X = rng.standard_normal((3, 10))
    X[1] = 3e38
    with fastnn.backend(backend), pytest.raises(ValueError, match="overflow.*row 1"):
        model.predict_proba(X)
    with fastnn.backend(backend), pytest.raises(ValueError, match="overflow"):
        model.evaluate(X, [0, 1, 2])


def test_float64_data_is_cast_chunk_by_chunk_into_a_float32_model():
    model, rng = _trained("bn-relu", np.float32)
    X = rng.standard_normal((7, 10))  # float64
    np.testing.assert_array_equal(model.predict_proba(X),
                                  model.predict_proba(X.astype(np.float32)))
    ints = rng.integers(-3, 3, (7, 10))
    np.testing.assert_array_equal(model.predict_proba(ints),
                                  model.predict_proba(ints.astype(np.float32)))


def _large_first_product(dtype):
    """A model whose first Dense, at 600 rows, is a BLAS product (above SMALL_GEMM_MAX)."""
    rng = np.random.default_rng(3)
    model = Sequential(L.mlp([64, 32], 4), input_dim=40, dtype=dtype, seed=3)
    model.fit(rng.standard_normal((128, 40)), rng.integers(0, 4, 128), epochs=1,
              verbose=0)
    assert 600 * 40 * 64 > ops.SMALL_GEMM_MAX
    return model, rng


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_a_large_batch_of_the_models_dtype_is_read_in_place(dtype):
    import sys

    model, rng = _large_first_product(dtype)
    X = rng.standard_normal((600, 40)).astype(dtype)
    refs = sys.getrefcount(X)
    read = model.predict_proba(X)
    assert sys.getrefcount(X) == refs  # the plan kept no reference to the caller's rows
    # the same rows copied into the plan's buffer (a Fortran-ordered array cannot be read
    # in place; a float of another width is cast): the same bits
    np.testing.assert_array_equal(read, model.predict_proba(np.asfortranarray(X)))
    other = np.float64 if dtype == np.float32 else np.float32
    if dtype == np.float32:
        np.testing.assert_array_equal(read, model.predict_proba(X.astype(other)))
    np.testing.assert_allclose(read, _unfolded(model, X), **TOL[dtype])
    # the next call reads its own rows, not the last caller's
    Y = rng.standard_normal((600, 40)).astype(dtype)
    np.testing.assert_array_equal(model.predict_proba(Y),
                                  model.predict_proba(np.asfortranarray(Y)))
    assert not np.array_equal(model.predict_proba(Y), read)


@pytest.mark.filterwarnings("error")  # the error, not a RuntimeWarning from NumPy's matmul
def test_a_bad_row_read_in_place_is_named():
    model, rng = _large_first_product(np.float32)
    X = rng.standard_normal((600, 40)).astype(np.float32)
    X[417, 5] = np.nan
    with pytest.raises(ValueError, match=r"first at row 417, column 5"):
        model.predict_proba(X)
    X[417] = 3e38  # finite, but the first product overflows
    with pytest.raises(ValueError, match="overflow.*row 417"):
        model.predict_proba(X)
    X[417] = 0.0  # and the plan is whole again
    np.testing.assert_array_equal(model.predict_proba(X),
                                  model.predict_proba(np.asfortranarray(X)))


@pytest.mark.skipif(not ops.uses_packed_gemm(np.float32, 64),
                    reason="this CPU does not run the packed product (AVX-512F)")
@pytest.mark.parametrize("activation", ["relu", "leaky", "identity", "tanh"])
def test_packed_product_takes_over_the_batch_norm_and_check_bit_for_bit(monkeypatch,
                                                                         activation):
    rng = np.random.default_rng(11)
    act = {"relu": L.ReLU, "leaky": lambda: L.LeakyReLU(0.3), "identity": L.Identity,
           "tanh": L.Tanh}[activation]

    def model():
        m = Sequential([L.Dense(96), L.BatchNorm(), act(), L.Dense(64), L.BatchNorm(), act(),
                        L.Dense(5), L.Softmax()], input_dim=50, dtype="float32", seed=4)
        m.fit(rng.standard_normal((64, 50)), rng.integers(0, 5, 64), epochs=1, verbose=0)
        return m

    fused = model()
    plain = copy.deepcopy(fused)
    X = rng.standard_normal((300, 50)).astype(np.float32)
    X[7] *= 40  # some large values too
    expected_kinds = {"tanh": ["PackedGemmOp", "BatchNormEvalOp32"],  # tanh is not fused
                      }.get(activation, ["PackedGemmOp"])
    got = fused.predict_proba(X)
    program = fused._plans.get(fused, 300, False).program
    kinds = [type(op).__name__ for op in program.ops]
    assert kinds[:len(expected_kinds)] == expected_kinds, kinds
    assert "FiniteOp32" in kinds  # only the output's check remains
    assert kinds.count("FiniteOp32") == 1, kinds
    monkeypatch.setattr(ops, "fuse_epilogues", lambda op_list: op_list)
    reference = plain.predict_proba(X)
    program = plain._plans.get(plain, 300, False).program
    assert sum(type(op).__name__ == "BatchNormEvalOp32" for op in program.ops) == 2
    np.testing.assert_array_equal(got, reference)  # the same arithmetic, the same bits
    # the fused check still names a bad row, and a change of the statistics is seen
    X[123, 9] = np.inf
    with pytest.raises(ValueError, match=r"first at row 123, column 9"):
        fused.predict_proba(X)
    X[123, 9] = 0.0
    fused.layers[1].s["running_var"][:] *= 4.0
    plain.layers[1].s["running_var"][:] *= 4.0
    np.testing.assert_array_equal(fused.predict_proba(X), plain.predict_proba(X))


def test_fuse_epilogues_leaves_ops_it_cannot_take(monkeypatch):
    monkeypatch.setattr(ops.bound, "SMALL_GEMM_MAX", 0)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 30)).astype(np.float32)
    w = rng.standard_normal((30, 64)).astype(np.float32)
    out, other = np.empty((40, 64), np.float32), np.empty((40, 64), np.float32)
    ones, zeros = np.ones(64, np.float32), np.zeros(64, np.float32)
    gemm = ops.plan_matmul(x, w, out)
    if not ops.uses_packed_gemm(np.float32, 64):
        pytest.skip("this CPU does not run the packed product (AVX-512F)")
    # a batch norm that writes elsewhere, and a check of another array, stay as they are
    bn = ops.plan_batchnorm_eval(out, ones, zeros, zeros, ones, out=other)
    check = ops.plan_finite(other)
    assert ops.fuse_epilogues([gemm, check, bn]) == [gemm, check, bn]
    assert ops.fuse_epilogues([gemm, bn]) == [gemm, bn]


def test_rebind_matmul_input_refuses_what_it_cannot_read_in_place():
    a = np.ones((600, 40), np.float32)
    b, out = np.ones((40, 64), np.float32), np.empty((600, 64), np.float32)
    big = ops.plan_matmul(a, b, out)
    small = ops.plan_matmul(a[:2], b, out[:2])
    assert not ops.rebind_matmul_input(small, a[:2].copy(), a[:2])
    for bad in (a.astype(np.float64), a[:599], np.asfortranarray(a), a.tolist()):
        assert not ops.rebind_matmul_input(big, bad, a)
    other = np.full((600, 40), 2, np.float32)
    assert ops.rebind_matmul_input(big, other, a)
    ops.program([big]).run(0)
    np.testing.assert_array_equal(out, 80.0)


# ---- the kernels the planned pass adds ---------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("k", [1, 7, 300])
@pytest.mark.parametrize("n", [1, 10, 63, 64, 65, 130])
def test_small_gemm_rows_alone_and_in_blocks(dtype, k, n):
    """Rows 0..m of the small GEMM equal NumPy's product, and a row's result is the same
    bits whether it is a batch of one (the row kernel) or inside a block of four."""
    rng = np.random.default_rng(k * 1000 + n)
    b = rng.standard_normal((k, n)).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype)
    a = rng.standard_normal((9, k)).astype(dtype)
    results = {}
    for m in (1, 2, 3, 4, 5, 8, 9):
        if m * k * n > ops.SMALL_GEMM_MAX:
            continue
        out = np.empty((m, n), dtype)
        op = ops.plan_matmul(a[:m], b, out, bias=bias)
        op()
        np.testing.assert_allclose(out, a[:m] @ b + bias, rtol=1e-4 if dtype == np.float32
                                   else 1e-12, atol=1e-4 if dtype == np.float32 else 1e-12)
        results[m] = out
    for out in results.values():
        np.testing.assert_array_equal(out[0], results[1][0])  # row 0: alone or in a block


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_finite_op_finds_any_nan_or_inf(dtype):
    z = np.zeros((3, 70), dtype)
    op = ops.plan_finite(z)
    op()
    assert op.finite
    for value in (np.nan, np.inf, -np.inf):
        for where in ((0, 0), (2, 69), (1, 33)):
            z[...] = 1.0
            z[where] = value
            op()
            assert not op.finite, (value, where)
    z[...] = np.finfo(dtype).max
    op()
    assert op.finite


@pytest.mark.parametrize("activation", ["identity", "relu", "leaky_relu", "tanh", "sigmoid"])
def test_batchnorm_eval_op_is_the_eval_forward_then_the_activation(dtype, activation):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 2100)).astype(dtype)  # more than one block of features
    gamma, beta, mean = (rng.standard_normal(2100).astype(dtype) for _ in range(3))
    var = rng.uniform(0.5, 2.0, 2100).astype(dtype)
    expected, _ = ops.batchnorm_forward(x, gamma, beta, mean, var.copy(), training=False)
    act = {"identity": lambda v: v, "relu": lambda v: np.maximum(v, 0),
           "leaky_relu": lambda v: np.where(v < 0, 0.1 * v, v), "tanh": np.tanh,
           "sigmoid": lambda v: 0.5 + 0.5 * np.tanh(0.5 * v)}[activation]
    out = np.empty_like(x)
    ops.plan_batchnorm_eval(x, gamma, beta, mean, var, out=out, activation=activation,
                            alpha=0.1)()
    tol = TOL[dtype]
    np.testing.assert_allclose(out, act(expected), rtol=tol["rtol"] * 10, atol=tol["atol"] * 10)
    inplace = x.copy()
    ops.plan_batchnorm_eval(inplace, gamma, beta, mean, var, out=inplace,
                            activation=activation, alpha=0.1)()
    np.testing.assert_array_equal(inplace, out)


def test_new_bound_ops_refuse_bad_arguments():
    x = np.zeros((2, 3), np.float32)
    vec = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="gamma must have shape"):
        ops.plan_batchnorm_eval(x, np.ones(4, np.float32), vec, vec, vec, out=x)
    with pytest.raises(TypeError, match="dtype"):
        ops.plan_batchnorm_eval(x, vec.astype(np.float64), vec, vec, vec, out=x)
    with pytest.raises(ValueError, match="activation"):
        ops.plan_batchnorm_eval(x, vec, vec, vec, vec, out=x, activation="swish")
    with pytest.raises(ValueError, match="eps"):
        ops.plan_batchnorm_eval(x, vec, vec, vec, vec, out=x, eps=0.0)
    with pytest.raises(ValueError, match="writable"):
        ro = x.copy()
        ro.flags.writeable = False
        ops.plan_softmax(ro)
    with pytest.raises(ValueError, match="2-D"):
        ops.plan_finite(vec)


# ---- the thread policy ---------------------------------------------------------------

def _blas_threads() -> list[int]:
    """Threads of NumPy's own BLAS (other libraries' BLAS, e.g. torch's, are not fastnn's)."""
    return [c.num_threads for c in ThreadpoolController().select(user_api="blas")
            .lib_controllers if "numpy" in c.filepath]


class _RecordThreads(Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append(_blas_threads())


def test_set_num_threads_checks_its_argument():
    for bad in (0, -1):
        with pytest.raises(ValueError, match="n must be"):
            fastnn.set_num_threads(bad)
    for bad in ("2", 1.5, True):
        with pytest.raises(TypeError, match="n must be"):
            fastnn.set_num_threads(bad)


@pytest.fixture
def quiet_machine(monkeypatch):
    """The thread policy sees no other process running (the tests of the setting must not
    depend on what else the machine runs)."""
    monkeypatch.setattr(_threads, "_others_running", lambda: 0)
    monkeypatch.setattr(_threads, "_busy", (-1.0, 0))


def test_a_busy_core_takes_the_second_thread_away(monkeypatch):
    import subprocess
    import sys
    import time

    if _threads._cores() != 2 or not os.path.exists("/proc/loadavg"):
        pytest.skip("needs Linux and exactly two usable cores")
    monkeypatch.setattr(_threads, "_busy", (-1.0, 0))
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        deadline = time.monotonic() + 10
        while _threads._others_running() < 1:  # until the kernel counts it running
            assert time.monotonic() < deadline, "the spinner never showed as running"
            time.sleep(0.01)
        monkeypatch.setattr(_threads, "_busy", (-1.0, 0))
        with fastnn.threads(2):
            assert _threads.spare_cores() == 1
            assert _threads.threads_for(_threads.PARALLEL_MIN_MACS) == 1
            assert _threads.threads_for(10) == 1
    finally:
        spinner.kill()
        spinner.wait()


def test_spare_cores_takes_the_cores_others_run_on_away_and_reuses_a_reading(monkeypatch):
    monkeypatch.setattr(_threads, "_busy", (-1.0, 0))
    monkeypatch.setattr(_threads, "_cores", lambda: 4)
    for others, spare in ((0, 4), (1, 3), (3, 1), (9, 1)):
        monkeypatch.setattr(_threads, "_others_running", lambda o=others: o)
        monkeypatch.setattr(_threads, "_busy", (-1.0, 0))
        assert _threads.spare_cores() == spare
        with fastnn.threads(8):
            assert _threads.threads_for(_threads.PARALLEL_MIN_MACS) == spare
    # a reading is reused for _BUSY_TTL seconds, then taken again
    monkeypatch.setattr(_threads, "_others_running", lambda: 2)
    assert _threads.spare_cores() == 1  # still the last reading's
    monkeypatch.setattr(_threads, "_busy", (-1.0, 0))
    assert _threads.spare_cores() == 2


def test_the_thread_count_comes_from_the_setting_then_the_environment(monkeypatch):
    monkeypatch.setattr(_threads, "_setting", None)
    monkeypatch.setenv("FASTNN_NUM_THREADS", "3")
    assert fastnn.get_num_threads() == 3
    with fastnn.threads(1):
        assert fastnn.get_num_threads() == 1
    assert fastnn.get_num_threads() == 3
    monkeypatch.setenv("FASTNN_NUM_THREADS", "many")
    with pytest.warns(RuntimeWarning, match="FASTNN_NUM_THREADS must be"):
        assert fastnn.get_num_threads() == _threads._cores()
    monkeypatch.delenv("FASTNN_NUM_THREADS")
    assert fastnn.get_num_threads() == _threads._cores()


def test_limited_restores_the_programs_blas_setting_nested_and_across_threads():
    controller = ThreadpoolController()
    with controller.limit(limits=2, user_api="blas"):
        with _threads.limited(1):
            assert set(_blas_threads()) == {1}
            inner = []
            worker = threading.Thread(target=lambda: inner.append(_enter_and_read()))
            worker.start()
            worker.join()
            assert inner == [[1]] and set(_blas_threads()) == {1}  # still limited
        assert set(_blas_threads()) == {2}


def test_fastnns_blas_limit_holds_in_every_thread_and_is_restored_by_any():
    # threadpoolctl lets one thread at a time set OpenBLAS's pool size; fastnn's limit
    # must hold in a worker thread too, and a block a worker leaves last must restore
    controller = ThreadpoolController()
    with controller.limit(limits=2, user_api="blas"):
        seen = []
        worker = threading.Thread(target=lambda: seen.append(_enter_and_read()))
        worker.start()
        worker.join()
        assert seen == [[1]] and set(_blas_threads()) == {2}
        entered, leave = threading.Event(), threading.Event()

        def hold():
            with _threads.limited(1):
                entered.set()
                leave.wait(10)

        worker = threading.Thread(target=hold)
        with _threads.limited(1):  # the main thread enters first, the worker leaves last
            worker.start()
            assert entered.wait(10)
        assert set(_blas_threads()) == {1}  # the worker's block still holds
        leave.set()
        worker.join()
        assert set(_blas_threads()) == {2}


def test_a_blas_product_in_a_worker_thread_predicts_as_in_the_main_thread():
    # 7 rows: under the packed product's 8, the first Dense goes to BLAS, whose sums
    # round differently on one thread and on two
    rng = np.random.default_rng(4)
    model = Sequential(L.mlp([256], 10), input_dim=784, dtype="float32", seed=4)
    X = rng.standard_normal((7, 784)).astype(np.float32)
    controller = ThreadpoolController()
    with controller.limit(limits=2, user_api="blas"):
        expected = model.predict_proba(X)
        got = {}
        worker = threading.Thread(target=lambda: got.update(p=model.predict_proba(X)))
        worker.start()
        worker.join()
    np.testing.assert_array_equal(got["p"], expected)


def _enter_and_read():
    with _threads.limited(1):
        return sorted(set(_blas_threads()))


def test_fit_runs_small_products_on_one_blas_thread_and_large_ones_on_the_setting(quiet_machine):
    rng = np.random.default_rng(0)
    controller = ThreadpoolController()
    with controller.limit(limits=2, user_api="blas"), fastnn.threads(2):
        small = Sequential(L.mlp([32], 10), seed=0)
        record = _RecordThreads()
        small.fit(rng.standard_normal((64, 64)), rng.integers(0, 10, 64), epochs=1,
                  batch_size=32, callbacks=[record], verbose=0)
        assert record.seen == [[1]]
        big = Sequential(L.mlp([256], 10), seed=0)
        record = _RecordThreads()
        big.fit(rng.standard_normal((512, 784)), rng.integers(0, 10, 512), epochs=1,
                batch_size=256, callbacks=[record], verbose=0)
        assert record.seen == [[2]]
        assert set(_blas_threads()) == {2}  # restored after fit


def test_standardize_op_reads_the_live_statistics(dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 9)).astype(dtype)
    mean = rng.standard_normal(9).astype(dtype)
    std = rng.uniform(0.5, 2.0, 9).astype(dtype)
    out = np.empty_like(x)
    op = ops.plan_standardize(x, mean, std, out)
    op()
    np.testing.assert_allclose(out, (x - mean) / std, **TOL[dtype])
    std *= 2.0  # a new adapt writes the state in place: the op sees it
    op()
    np.testing.assert_allclose(out, (x - mean) / std, **TOL[dtype])


def test_a_standardized_model_trains_planned_like_per_layer():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((64, 300)) * 5 + 2  # wider than any diagonal-product limit
    y = rng.integers(0, 3, 64)
    results = []
    for plan in (True, False):
        model = Sequential([L.Standardize().adapt(X), *L.mlp([16], 3)], seed=0)
        model.plan_steps = plan
        history = model.fit(X, y, epochs=2, batch_size=16, verbose=0)
        results.append((history.history["loss"], model.predict_proba(X[:5])))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-4)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-5)


def test_fastnn_never_raises_the_programs_own_blas_limit(quiet_machine):
    rng = np.random.default_rng(0)
    with ThreadpoolController().limit(limits=1, user_api="blas"), fastnn.threads(2):
        big = Sequential(L.mlp([256], 10), seed=0)
        record = _RecordThreads()
        big.fit(rng.standard_normal((512, 784)), rng.integers(0, 10, 512), epochs=1,
                batch_size=256, callbacks=[record], verbose=0)
        assert record.seen == [[1]]


def test_predict_follows_the_thread_setting_of_each_call(monkeypatch, quiet_machine):
    model, rng = _trained("relu-no-bn", np.float32, n_features=784)
    seen = []
    real = _threads.limited

    def spy(n):
        seen.append(n)
        return real(n)

    monkeypatch.setattr(_threads, "limited", spy)
    monkeypatch.setattr(_threads, "PARALLEL_MIN_MACS", 1)  # every BLAS product "large"
    X = rng.standard_normal((64, 784))
    with fastnn.threads(1):
        model.predict(X)
    with fastnn.threads(2):
        model.predict(X)  # the same plan, another setting
    assert seen == [1, 2]
