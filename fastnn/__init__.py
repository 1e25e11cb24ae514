"""fastnn: a small, fast, CPU-only neural-net library.

The numerical kernels (batch normalisation, fused softmax cross-entropy,
optimizer updates) are compiled Cython under a validated entry point,
:mod:`fastnn.ops`; a pure-NumPy twin of every kernel is the reference and a
selectable backend. On top: layers, :class:`Sequential` with a Keras-like
``fit``, optimizers, learning-rate schedules, callbacks and save/load.

>>> import fastnn
>>> fastnn.get_backend() in fastnn.available_backends()
True
"""

from __future__ import annotations

import importlib

from . import callbacks, layers, losses, ops, optimizers, schedules
from ._threads import get_num_threads, set_num_threads, threads
from ._version import __version__
from .callbacks import History
from .model import Sequential
from .ops import available_backends, backend, get_backend, set_backend

# Imported on first use, to keep `import fastnn` fast: the data loaders, the tuner,
# save/load (with the zip and temporary-file machinery they bring) and the ONNX export.
_LAZY_MODULES = ("datasets", "tune", "serialization", "onnx")


def __getattr__(name: str):
    if name in _LAZY_MODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'fastnn' has no attribute {name!r}")


def load(path) -> Sequential:
    """Load a model saved by :meth:`Sequential.save` (see :meth:`Sequential.load`)."""
    return Sequential.load(path)

__all__ = [
    "History",
    "Sequential",
    "__version__",
    "available_backends",
    "backend",
    "callbacks",
    "datasets",
    "get_backend",
    "get_num_threads",
    "layers",
    "load",
    "losses",
    "ops",
    "optimizers",
    "schedules",
    "set_backend",
    "set_num_threads",
    "threads",
]
