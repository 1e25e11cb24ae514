"""ONNX export: a trained model as a standard ONNX graph, BatchNorm folded.

:func:`export` writes the model's eval-mode network (what ``predict_proba`` of a classifier,
``predict`` of a regressor computes) as an ONNX file that any ONNX runtime serves. The graph
is built from the model's folded inference plan, so it is exactly the arithmetic fastnn
runs at prediction time:

* a Dense layer, with the BatchNorm after it folded in (``W' = W * scale``, ``b' = b * scale
  + shift``, computed in float64), is one ``Gemm``;
* a BatchNorm that follows no Dense is its eval-mode affine map, ``Mul`` then ``Add``;
* an activation is its ONNX operator (``Relu``, ``LeakyRelu``, ``Tanh``, ``Sigmoid``), a final
  Softmax is ``Softmax`` over the class axis; Dropout and Identity are left out (the identity
  in eval mode).

The graph has one input, ``"input"``, of shape ``(batch, input_dim)`` with a dynamic batch
dimension, and one output, ``"output"``, of shape ``(batch, output_dim)``: class
probabilities for a classifier (a Softmax is added when the model fuses it into its
cross-entropy loss without a Softmax layer), the predicted values for a regressor (2-D even
where ``predict`` returns a 1-D array). Labels (``predict`` of a classifier) are the argmax
of the probabilities, mapped through ``model.classes_``.

Precision: the graph computes in the model's dtype, float32 or float64 (``dtype=`` casts
the folded weights to the other one; the fold itself is always float64). The input must
then be given in that dtype.

``onnx`` is imported only here, when :func:`export` runs; ``pip install "fastnn-cpu[onnx]"``
installs it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from . import _checks
from ._version import __version__

__all__ = ["DEFAULT_OPSET", "INPUT_NAME", "MIN_OPSET", "OUTPUT_NAME", "export"]

#: The opset written by default (onnxruntime 1.13 and newer serve it).
DEFAULT_OPSET = 17
#: The oldest opset written: Softmax over one axis is opset 13's definition.
MIN_OPSET = 13
INPUT_NAME = "input"
OUTPUT_NAME = "output"

# A planned activation's kernel name -> its ONNX operator.
_ACTIVATION_OPS = {"relu": "Relu", "leaky_relu": "LeakyRelu", "tanh": "Tanh",
                   "sigmoid": "Sigmoid"}


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError('ONNX export needs the onnx package: pip install '
                          '"fastnn-cpu[onnx]"') from None
    return onnx


class _Graph:
    """The nodes and initializers of a chain of operators, each fed by the one before."""

    def __init__(self, onnx, dtype: np.dtype) -> None:
        self.onnx = onnx
        self.dtype = dtype
        self.nodes: list = []
        self.initializers: list = []
        self.last = INPUT_NAME

    def constant(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array, dtype=self.dtype)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, *inputs: str, name: str, **attributes) -> str:
        """Append ``op_type`` applied to the last output and ``inputs``; return its output."""
        output = f"{name}.out"
        self.nodes.append(self.onnx.helper.make_node(op_type, [self.last, *inputs],
                                                     [output], name=name, **attributes))
        self.last = output
        return output

    def leaky_relu(self, alpha: float, name: str) -> None:
        """``max(x, alpha * x)``, as fastnn computes it. ONNX's LeakyRelu takes alpha as a
        float32 attribute: a float64 graph whose alpha float32 cannot hold exactly gets
        ``Max(x, Mul(x, alpha))`` with alpha as a float64 constant instead."""
        if float(np.float32(alpha)) == alpha or self.dtype == np.float32:
            self.op("LeakyRelu", name=name, alpha=alpha)
            return
        x = self.last
        scaled = self.op("Mul", self.constant(f"{name}.alpha", np.array(alpha)),
                         name=f"{name}.Mul")
        self.last = x
        self.op("Max", scaled, name=f"{name}.Max")


def _layer_index(model, layer) -> int:
    return next(i for i, candidate in enumerate(model.layers) if candidate is layer)


def _add_layer(graph: _Graph, model, layer) -> None:
    """A layer that the plan runs as its own eval forward: its ONNX operator, if it has one."""
    index = _layer_index(model, layer)
    name = f"layers.{index}.{type(layer).__name__}"
    if layer.softmax:
        graph.op("Softmax", name=name, axis=1)
        return
    activation = layer.planned_activation()
    op_type = None if activation is None else _ACTIVATION_OPS.get(activation[0])
    if op_type is None:
        raise ValueError(
            f"layers[{index}] ({type(layer).__name__}) cannot be exported to ONNX: it runs "
            f"its own forward, which has no ONNX operator (exportable: Dense, BatchNorm, "
            f"Dropout, Identity, Softmax and the activations {sorted(_ACTIVATION_OPS)})")
    if op_type == "LeakyRelu":
        graph.leaky_relu(float(activation[1]), name)
    else:
        graph.op(op_type, name=name)


def _build_graph(onnx, model, dtype: np.dtype) -> _Graph:
    graph = _Graph(onnx, dtype)
    plan = model._inference_plan(logits=False, dtype=dtype)
    for position, (kind, *args) in enumerate(plan):
        name = f"step{position}"
        if kind == "affine":
            graph.op("Gemm", graph.constant(f"{name}.weight", args[0]),
                     graph.constant(f"{name}.bias", args[1]), name=f"{name}.Gemm")
        elif kind == "scale":
            graph.op("Mul", graph.constant(f"{name}.scale", args[0]), name=f"{name}.Mul")
            graph.op("Add", graph.constant(f"{name}.shift", args[1]), name=f"{name}.Add")
        else:
            _add_layer(graph, model, args[0])
    if model.loss.classification and not model.layers[-1].softmax:
        graph.op("Softmax", name="softmax", axis=1)  # as predict_proba applies it
    graph.nodes[-1].output[0] = OUTPUT_NAME
    return graph


def _to_proto(onnx, model, graph: _Graph, opset: int):
    helper = onnx.helper
    elem = helper.np_dtype_to_tensor_dtype(graph.dtype)
    inputs = [helper.make_tensor_value_info(INPUT_NAME, elem, ["batch", model.input_dim])]
    outputs = [helper.make_tensor_value_info(OUTPUT_NAME, elem, ["batch", model.output_dim])]
    kind = "class probabilities" if model.loss.classification else "predicted values"
    body = helper.make_graph(graph.nodes, "fastnn", inputs, outputs, graph.initializers,
                             doc_string=f"fastnn Sequential, eval mode: {kind}")
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(body, opset_imports=opsets, producer_name="fastnn",
                              producer_version=__version__)
    proto.ir_version = helper.find_min_ir_version_for(opsets)  # what older runtimes read
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _output_path(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike; got {type(path).__name__}")
    resolved = Path(path)
    if resolved.is_dir():
        raise ValueError(f"path {os.fspath(path)!r} is a directory; expected a file name "
                         f"such as model.onnx")
    directory = resolved.parent
    if not directory.is_dir():
        raise FileNotFoundError(f"{os.fspath(path)}: the directory {os.fspath(directory)!r} "
                                f"does not exist")
    return resolved


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def export(model, path, *, opset: int | None = None, dtype=None) -> Path:
    """Write ``model``'s eval-mode network to ``path`` as an ONNX file (atomically).

    Parameters
    ----------
    model : fastnn.Sequential
        A built (usually trained) model.
    path : str or os.PathLike
        The file to write; its directory must exist. An existing file is replaced.
    opset : int, optional
        The ONNX opset to write, from :data:`MIN_OPSET` (13) to the newest the installed
        ``onnx`` knows; default :data:`DEFAULT_OPSET` (17).
    dtype : "float32" or "float64", optional
        The graph's precision; default the model's.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ImportError
        If ``onnx`` is not installed (``pip install "fastnn-cpu[onnx]"``).
    TypeError
        If ``model`` is not a fastnn model, or ``opset``, ``dtype`` or ``path`` is of the
        wrong type.
    RuntimeError
        If the model is not built yet.
    ValueError
        If a layer has no ONNX form (a user's layer with its own forward; the message names
        it), ``opset`` is out of range, or ``path`` is a directory.
    FileNotFoundError
        If the directory of ``path`` does not exist.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np, onnxruntime, fastnn
    >>> from fastnn.layers import mlp
    >>> model = fastnn.Sequential(mlp([16], 3), input_dim=4, seed=0)
    >>> path = model.to_onnx(os.path.join(tempfile.mkdtemp(), "model.onnx"))
    >>> session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    >>> X = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    >>> probabilities = session.run(None, {"input": X})[0]
    >>> np.allclose(probabilities, model.predict_proba(X), rtol=1e-5, atol=1e-6)
    True
    """
    if not callable(getattr(model, "_inference_plan", None)):
        raise TypeError(f"model must be a fastnn.Sequential; got {type(model).__name__}")
    if not model.built:
        raise RuntimeError("the model is not built yet: call fit (or pass input_dim) before "
                           "exporting it")
    dtype = model.dtype if dtype is None else _checks.float_dtype("dtype", dtype)
    target = _output_path(path)
    onnx = _import_onnx()
    newest = onnx.defs.onnx_opset_version()
    opset = DEFAULT_OPSET if opset is None else _checks.integer("opset", opset,
                                                                minimum=MIN_OPSET,
                                                                maximum=newest)
    proto = _to_proto(onnx, model, _build_graph(onnx, model, dtype), opset)
    _write_atomically(target, proto.SerializeToString())
    return target
