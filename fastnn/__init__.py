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

from . import callbacks, datasets, layers, losses, ops, optimizers, schedules
from ._version import __version__
from .callbacks import History
from .model import Sequential
from .ops import available_backends, backend, get_backend, set_backend
from .serialization import load

__all__ = [
    "History",
    "Sequential",
    "__version__",
    "available_backends",
    "backend",
    "callbacks",
    "datasets",
    "get_backend",
    "layers",
    "load",
    "losses",
    "ops",
    "optimizers",
    "schedules",
    "set_backend",
]
