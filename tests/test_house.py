"""The layout of the house (see README's Architecture): who may import whom, and what a
module may know of another. Read from the installed package's source with ``ast``, so
imports inside functions count too."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import pytest

import fastnn
from fastnn import _names, layers

PACKAGE = Path(fastnn.__file__).parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()
EXTENSIONS = {"fastnn._kernels"}  # compiled: no source to read, but a module to name


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> set[str]:
    """The fastnn modules ``module`` imports anywhere in its source (functions included)."""
    tree = ast.parse(MODULES[module].read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            # `from . import x` names a submodule when x is one
            names = [f"{target}.{alias.name}"
                     if f"{target}.{alias.name}" in MODULES.keys() | EXTENSIONS else target
                     for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES and name not in EXTENSIONS:
                name = name.rpartition(".")[0]
            if name.startswith("fastnn") and name != module:
                out.add(name)
    return out


GRAPH = {module: _imports(module) for module in MODULES}
GRAPH.update({module: set() for module in EXTENSIONS})


def _cycle_from(start: str) -> list[str] | None:
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in GRAPH[node]:
            if nxt == start:
                return path + [start]
            if nxt not in seen and not (nxt == "fastnn" or start == "fastnn"):
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "fastnn"))
def test_no_import_circle(module):
    # The package's __init__ re-exports from below; a module importing the package itself
    # (`from . import __version__`) is the only arrow up, and none is allowed to close a
    # circle through it either.
    assert "fastnn" not in GRAPH[module] or module in ("fastnn.cli", "fastnn.tune.models"), (
        f"{module} imports the fastnn package itself")
    assert _cycle_from(module) is None, " -> ".join(_cycle_from(module))


def test_only_ops_imports_a_backend():
    for module, imported in GRAPH.items():
        if not module.startswith("fastnn.ops"):
            assert not imported & {"fastnn._kernels", "fastnn._numpy_kernels"}, module


def test_file_format_imports_no_model_code():
    assert GRAPH["fastnn.serialization"] <= {"fastnn._version"}


def test_checks_targets_and_names_import_nothing_of_fastnn():
    for module in ("fastnn._checks", "fastnn._targets", "fastnn._names"):
        assert GRAPH[module] == set(), module


def _attribute_uses(module: str):
    tree = ast.parse(MODULES[module].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            yield node.value.id, node.attr


def test_nothing_outside_ops_uses_its_private_names():
    for module in MODULES:
        if module.startswith("fastnn.ops"):
            continue
        for base, attr in _attribute_uses(module):
            assert not (base == "ops" and attr.startswith("_")), f"{module}: ops.{attr}"


LAYER_CLASSES = {name for name in layers.__all__ if isinstance(getattr(layers, name), type)}


def test_nothing_outside_the_layer_file_asks_a_layers_class():
    for module in MODULES:
        if module == "fastnn.layers":
            continue
        tree = ast.parse(MODULES[module].read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in (
                    "isinstance", "issubclass", "type"):
                named = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
                named |= {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
                assert not named & (LAYER_CLASSES - {"Layer"}), (
                    f"{module}:{node.lineno} asks for {named & LAYER_CLASSES}")


# ---- every activation by name saves and loads ----------------------------------------

def _data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 5)).astype(np.float32)
    return X, (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)


@pytest.mark.parametrize("name", sorted(_names.ACTIVATIONS))
def test_every_activation_saves_and_loads(name, tmp_path):
    X, y = _data()
    model = fastnn.Sequential(layers.mlp([8], 3, activation=name), seed=0)
    model.fit(X, y, epochs=2, batch_size=16, verbose=0)
    path = tmp_path / f"{name}.npz"
    model.save(path)
    loaded = fastnn.load(path)
    assert [type(a) for a in loaded.layers] == [type(a) for a in model.layers]
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))


@pytest.mark.parametrize("name", ["identity", "logistic", "tanh", "relu"])
def test_every_estimator_activation_saves_and_loads(name, tmp_path):
    sklearn_mod = pytest.importorskip("fastnn.sklearn", exc_type=ImportError)
    X, y = _data()
    clf = sklearn_mod.FastNNClassifier(hidden_layer_sizes=(8,), activation=name, max_iter=3,
                                       random_state=0, n_iter_no_change=100)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning after 3 epochs
        clf.fit(X, y)
    path = tmp_path / f"{name}.npz"
    clf.model_.save(path)
    loaded = fastnn.load(os.fspath(path))
    np.testing.assert_allclose(loaded.predict_proba(X), clf.model_.predict_proba(X), rtol=0,
                               atol=0)


# ---- the layer protocol: a user's layer is trained and served by its own code ----------

class _Swish(layers.Layer):
    """A user's layer with forward and backward only (no planned form, no infer)."""

    def forward(self, x, training, rng=None):
        self._x = x
        return x / (1.0 + np.exp(-x))

    def backward(self, dout, need_dx=True):
        s = 1.0 / (1.0 + np.exp(-self._x))
        return dout * (s + self._x * s * (1.0 - s))


class _ClippedReLU(layers.ReLU):
    """A subclass of a kernel-backed activation that changes forward and backward."""

    def forward(self, x, training, rng=None):
        self._x = x
        return np.clip(x, 0.0, 1.0)

    def backward(self, dout, need_dx=True):
        return dout * ((self._x > 0) & (self._x < 1))


@pytest.mark.parametrize("act", [_Swish, _ClippedReLU])
def test_a_users_layer_predicts_with_its_own_forward(act):
    from fastnn._plan import plan_unsupported

    X, y = _data()
    model = fastnn.Sequential([layers.Dense(8), act(), layers.Dense(3), layers.Softmax()],
                              seed=0, input_dim=5)
    assert plan_unsupported(model, None) is not None  # its own forward: the per-layer path
    model.fit(X, y, epochs=2, batch_size=16, verbose=0)
    h = act().forward(X @ model.layers[0].p["kernel"] + model.layers[0].p["bias"], False)
    logits = h @ model.layers[2].p["kernel"] + model.layers[2].p["bias"]
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(model.predict_proba(X), expected, rtol=1e-5, atol=1e-6)


def test_a_loss_without_a_planned_form_trains_per_layer():
    from fastnn._plan import plan_unsupported
    from fastnn.losses import SoftmaxCrossEntropy

    class MyLoss(fastnn.losses.Loss):
        classification = True
        fuses_softmax = True

        def __call__(self, outputs, targets, grad, **kw):
            return SoftmaxCrossEntropy()(outputs, targets, grad, **kw)

    X, y = _data()
    model = fastnn.Sequential(layers.mlp([8], 3), seed=0, input_dim=5, loss=MyLoss())
    assert plan_unsupported(model, None) == "only a fused softmax cross-entropy is planned"
    history = model.fit(X, y, epochs=2, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
