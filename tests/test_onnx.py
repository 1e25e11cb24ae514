"""ONNX export (fastnn.onnx): the exported file, run by onnxruntime, gives what fastnn predicts.

onnxruntime is the oracle: an independent runtime executing the written graph. Each
architecture is trained briefly (so BatchNorm's running statistics, gamma and beta are not
their initial values), exported, and run; its output must match ``predict_proba`` (a
classifier) or ``predict`` (a regressor) within the tolerance of the dtype.
"""

from __future__ import annotations

import doctest
import os
import subprocess
import sys

import numpy as np
import pytest

import fastnn
import fastnn.onnx
from fastnn import datasets
from fastnn.layers import BatchNorm, Dense, Dropout, Layer, LeakyReLU, ReLU, Softmax, Tanh, mlp

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

# The runtime's float32 Gemm sums in another order than NumPy's BLAS: within 1e-5.
TOL = {np.float32: {"rtol": 1e-5, "atol": 1e-5}, np.float64: {"rtol": 1e-10, "atol": 1e-12}}


def _session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def _run(path, X) -> np.ndarray:
    return _session(path).run(None, {"input": X})[0]


def _digits(dtype):
    X, y = datasets.load_digits(dtype=dtype)
    return (X / 16.0).astype(dtype), y


CLASSIFIERS = {
    "bn-relu": lambda: mlp([24, 16], 10),
    "no-bn-tanh": lambda: mlp([24], 10, activation="tanh", batch_norm=False),
    "sigmoid-dropout": lambda: mlp([24], 10, activation="sigmoid", dropout=0.3),
    "leaky-alpha-0.2": lambda: [Dense(24), BatchNorm(), LeakyReLU(0.2), Dense(10), Softmax()],
    "identity": lambda: mlp([24], 10, activation="identity"),
    # BatchNorm with no Dense before it: Mul + Add steps
    "bn-unfoldable": lambda: [BatchNorm(), Dense(24), Tanh(), BatchNorm(), Dropout(0.1),
                              Dense(10), Softmax()],
    # no Softmax layer, a cross-entropy loss: the export adds the Softmax predict_proba applies
    "fused-loss-no-softmax": lambda: [Dense(24), ReLU(), Dense(10)],
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("arch", sorted(CLASSIFIERS))
def test_classifier_matches_predict_proba(arch, dtype, tmp_path):
    X, y = _digits(dtype)
    model = fastnn.Sequential(CLASSIFIERS[arch](), dtype=dtype, seed=0, loss="cross_entropy")
    model.fit(X, y, epochs=2, batch_size=64, verbose=0)
    path = model.to_onnx(tmp_path / "model.onnx")
    got = _run(path, X)
    assert got.dtype == dtype and got.shape == (X.shape[0], 10)
    np.testing.assert_allclose(got, model.predict_proba(X), **TOL[dtype])
    np.testing.assert_array_equal(np.argmax(got, axis=1), model.predict(X))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("outputs", [1, 3])
def test_regressor_matches_predict(outputs, dtype, tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 5)).astype(dtype)
    y = np.column_stack([np.sin(X[:, 0]) + X[:, 1] * k for k in range(outputs)]).astype(dtype)
    model = fastnn.Sequential(mlp([16, 8], outputs, activation="tanh", softmax=False),
                              dtype=dtype, seed=0)
    model.fit(X, y[:, 0] if outputs == 1 else y, epochs=3, batch_size=32, verbose=0)
    got = _run(model.to_onnx(tmp_path / "reg.onnx"), X)
    assert got.shape == (X.shape[0], outputs)  # 2-D, also where predict is 1-D
    np.testing.assert_allclose(got, model.predict(X).reshape(X.shape[0], outputs), **TOL[dtype])


def _trained(layers=None, dtype=np.float32):
    X, y = _digits(dtype)
    model = fastnn.Sequential(layers or mlp([16, 16], 10), dtype=dtype, seed=3)
    model.fit(X, y, epochs=1, batch_size=128, verbose=0)
    return model, X


def test_graph_has_batchnorm_folded_and_a_dynamic_batch(tmp_path):
    model, X = _trained()
    path = model.to_onnx(tmp_path / "m.onnx")
    proto = onnx.load(path)
    ops = [node.op_type for node in proto.graph.node]
    n_dense = sum(layer.units is not None for layer in model.layers)
    assert ops == ["Gemm", "Relu", "Gemm", "Relu", "Gemm", "Softmax"] and n_dense == 3
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == "input" and out.name == "output"
    batch, width = inp.type.tensor_type.shape.dim
    assert batch.dim_param and not batch.HasField("dim_value") and width.dim_value == 64
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.opset_import[0].version == fastnn.onnx.DEFAULT_OPSET
    session = _session(path)
    for rows in (1, 7, 300):  # any batch size, each row on its own
        np.testing.assert_allclose(session.run(None, {"input": X[:rows]})[0],
                                   model.predict_proba(X[:rows]), **TOL[np.float32])


def test_float64_model_exported_as_float32(tmp_path):
    model, X = _trained(dtype=np.float64)
    path = fastnn.onnx.export(model, tmp_path / "m32.onnx", dtype="float32")
    got = _run(path, X.astype(np.float32))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, model.predict_proba(X), **TOL[np.float32])


@pytest.mark.parametrize("opset", [13, 20])
def test_opset(opset, tmp_path):
    model, X = _trained()
    path = model.to_onnx(tmp_path / f"o{opset}.onnx", opset=opset)
    assert onnx.load(path).opset_import[0].version == opset
    np.testing.assert_allclose(_run(path, X), model.predict_proba(X), **TOL[np.float32])


@pytest.mark.parametrize("opset, error", [(12, ValueError), (10_000, ValueError),
                                          ("17", TypeError), (17.0, TypeError)])
def test_bad_opset(opset, error, tmp_path):
    model, _ = _trained()
    with pytest.raises(error, match="opset must be an integer in"):
        model.to_onnx(tmp_path / "x.onnx", opset=opset)
    assert list(tmp_path.iterdir()) == []


def test_export_replaces_a_file_atomically_leaving_no_temporary(tmp_path):
    model, X = _trained()
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old contents")
    assert fastnn.onnx.export(model, os.fspath(target)) == target
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    np.testing.assert_allclose(_run(target, X), model.predict_proba(X), **TOL[np.float32])


def test_unbuilt_model(tmp_path):
    model = fastnn.Sequential(mlp([8], 3))
    with pytest.raises(RuntimeError, match="not built"):
        model.to_onnx(tmp_path / "m.onnx")


class _Swish(Layer):
    """A user's layer with its own forward: no ONNX operator is known for it."""

    def forward(self, x, training, rng=None):
        return x / (1.0 + np.exp(-x))


class _ClippedReLU(ReLU):
    """A ReLU subclass with its own forward: exporting it as Relu would be wrong."""

    def forward(self, x, training, rng=None):
        return np.clip(x, 0.0, 1.0)


@pytest.mark.parametrize("layer", [_Swish, _ClippedReLU])
def test_unsupported_layer_is_named(layer, tmp_path):
    model = fastnn.Sequential([Dense(8), BatchNorm(), layer(), Dense(3), Softmax()],
                              input_dim=4, seed=0)
    with pytest.raises(ValueError, match=rf"layers\[2\] \({layer.__name__}\) cannot be "
                                         "exported to ONNX"):
        model.to_onnx(tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_bad_paths(tmp_path):
    model, _ = _trained()
    with pytest.raises(ValueError, match="is a directory"):
        model.to_onnx(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model.to_onnx(tmp_path / "missing" / "m.onnx")
    with pytest.raises(TypeError, match="path must be a str or os.PathLike; got int"):
        model.to_onnx(3)
    assert list(tmp_path.iterdir()) == []


def test_not_a_model(tmp_path):
    with pytest.raises(TypeError, match="model must be a fastnn.Sequential; got list"):
        fastnn.onnx.export([Dense(3)], tmp_path / "m.onnx")


def test_bad_dtype(tmp_path):
    model, _ = _trained()
    with pytest.raises(TypeError, match="dtype must be float32 or float64; got <f2"):
        model.to_onnx(tmp_path / "m.onnx", dtype="float16")


def test_missing_onnx_names_the_extra(tmp_path, monkeypatch):
    model, _ = _trained()
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "fastnn-cpu\[onnx\]"'):
        model.to_onnx(tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_onnx_is_imported_lazily(tmp_path):
    code = "import sys, fastnn, fastnn.onnx; assert 'onnx' not in sys.modules, 'onnx imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_docstring_examples():
    result = doctest.testmod(fastnn.onnx, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ---- the command line -------------------------------------------------------------------

def _fastnn(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastnn", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


@pytest.mark.slow
def test_cli_export(tmp_path):
    trained = _fastnn("train", "--hidden", "32", "--epochs", "2", "--verbose", "0", "--save",
                      "model.npz", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    done = _fastnn("export", "model.npz", "model.onnx", "--opset", "15", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "exported model.npz to model.onnx" in done.stdout
    assert "class probabilities" in done.stdout
    model = fastnn.load(tmp_path / "model.npz")
    X = np.random.default_rng(0).standard_normal((50, 64)).astype(np.float32)
    assert onnx.load(tmp_path / "model.onnx").opset_import[0].version == 15
    np.testing.assert_allclose(_run(tmp_path / "model.onnx", X), model.predict_proba(X),
                               **TOL[np.float32])


@pytest.mark.slow
def test_cli_export_errors(tmp_path):
    missing = _fastnn("export", "nope.npz", "out.onnx", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.startswith("fastnn: error:") and "nope.npz" in missing.stderr
    model, _ = _trained()
    model.save(tmp_path / "m.npz")
    no_dir = _fastnn("export", "m.npz", "sub/out.onnx", cwd=tmp_path)
    assert no_dir.returncode == 2 and "does not exist" in no_dir.stderr, no_dir.stderr
    bad_opset = _fastnn("export", "m.npz", "out.onnx", "--opset", "5", cwd=tmp_path)
    assert bad_opset.returncode == 2 and "opset must be" in bad_opset.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]
