"""fastnn: a small, fast, CPU-only neural-net library.

The numerical kernels (batch normalisation, fused softmax cross-entropy,
optimizer updates) are compiled Cython under a validated entry point,
:mod:`fastnn.ops`; a pure-NumPy twin of every kernel is the reference and a
selectable backend.

>>> import fastnn
>>> fastnn.get_backend() in fastnn.available_backends()
True
"""

from __future__ import annotations

from . import ops
from ._version import __version__
from .ops import available_backends, backend, get_backend, set_backend

__all__ = [
    "__version__",
    "available_backends",
    "backend",
    "get_backend",
    "ops",
    "set_backend",
]
