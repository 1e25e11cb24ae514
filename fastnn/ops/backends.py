"""The backend door: which kernels run, the compiled or the NumPy ones.

This is the only module of fastnn that imports a backend (``fastnn._kernels``, compiled,
or ``fastnn._numpy_kernels``, the readable reference). The choice is process-wide:
:func:`set_backend`, or the :func:`backend` context manager for a block of code.
A missing or stale compiled module warns :class:`FastnnBuildWarning` and falls back to
NumPy.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from collections.abc import Iterator

import numpy as np

from .. import _numpy_kernels
from .arrays import _FLOAT32, _FLOAT64, _INT32, _INT64

__all__ = ["FastnnBuildWarning", "available_backends", "backend", "backend_info",
           "cython_status", "get_backend", "set_backend"]



_KERNEL_NAMES = (
    "batchnorm_forward_train",
    "batchnorm_forward_eval",
    "batchnorm_backward_train",
    "batchnorm_backward_eval",
    "softmax_cross_entropy",
    "softmax",
    "adam_update",
    "sgd_update",
    "rmsprop_update",
)


class FastnnBuildWarning(UserWarning):
    """The compiled kernels are missing or stale; fastnn runs on NumPy instead."""




class _Backend:
    """A backend's kernels, looked up per dtype without Cython's fused dispatch."""

    def __init__(self, name: str, module) -> None:
        self.name = name
        self.module = module
        self.info = module.build_info()
        self._table: dict[tuple, object] = {}
        for kernel in _KERNEL_NAMES:
            fn = getattr(module, kernel)
            signatures = getattr(fn, "__signatures__", None)
            for dtype in (_FLOAT32, _FLOAT64):
                ctype = "float" if dtype is _FLOAT32 else "double"
                if kernel != "softmax_cross_entropy":
                    spec = fn if signatures is None else fn[ctype]
                    self._table[(kernel, dtype.num, 0)] = spec
                    continue
                for label, label_ctype in ((_INT32, "int32_t"), (_INT64, "int64_t")):
                    spec = fn if signatures is None else fn[ctype, label_ctype]
                    self._table[(kernel, dtype.num, label.num)] = spec

    def kernel(self, name: str, dtype: np.dtype, label_dtype: np.dtype | None = None):
        """The kernel ``name`` specialised for ``dtype`` (and the labels' dtype)."""
        return self._table[(name, dtype.num, 0 if label_dtype is None else label_dtype.num)]


def _stale_reason(module) -> str | None:
    """Why a compiled module does not match the kernel source beside it, or None."""
    built = module.build_info().get("source_sha256", "")
    directory = os.path.dirname(module.__file__)
    names = ("_kernels.pyx.tp", "_kernels.h")  # the template and its header, in this order
    paths = [os.path.join(directory, name) for name in names]
    if not built or not all(os.path.isfile(path) for path in paths):
        return None  # no source beside the module to compare with
    # The digest setup.py bakes in: sha256 of "<name> <sha256 of its bytes>\n" per file.
    outer = hashlib.sha256()
    for name, path in zip(names, paths, strict=True):
        with open(path, "rb") as fh:
            outer.update(f"{name} {hashlib.sha256(fh.read()).hexdigest()}\n".encode("ascii"))
    if outer.hexdigest() != built:
        return (
            f"the compiled module {os.path.basename(module.__file__)} was built from an older "
            "kernel source (_kernels.pyx.tp, _kernels.h) than the one beside it (an editable "
            "install not rebuilt?); rebuild with `pip install .` (editable: `pip install -e .`)"
        )
    return None


def _source_tree() -> str | None:
    """The checkout's folder if fastnn is imported from its source tree without a compiled
    module (a folder with setup.py beside the package and no ``_kernels`` extension)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    root = os.path.dirname(package)
    built = any(name.startswith("_kernels.") and name.endswith((".so", ".pyd"))
                for name in os.listdir(package))
    if not built and os.path.isfile(os.path.join(root, "setup.py")):
        return root
    return None


def _load_cython() -> tuple[_Backend | None, str | None]:
    try:
        from .. import _kernels
    except ImportError as exc:
        root = _source_tree()
        if root is not None:
            return None, (
                f"you are importing fastnn from its source tree ({root}), where the compiled "
                "module was never built; run from another folder (to use the installed "
                "fastnn), or build in place with `pip install -e .` or `python setup.py "
                "build_ext --inplace`")
        return None, (f"the compiled module fastnn._kernels could not be imported ({exc}); "
                      "rebuild with `pip install .` (or `python setup.py build_ext --inplace`)")
    reason = _stale_reason(_kernels)
    if reason is not None:
        return None, reason
    return _Backend("cython", _kernels), None


_NUMPY = _Backend("numpy", _numpy_kernels)
_CYTHON, _CYTHON_PROBLEM = _load_cython()
_BACKENDS = {"numpy": _NUMPY}
if _CYTHON is not None:
    _BACKENDS["cython"] = _CYTHON
else:
    warnings.warn(
        f"fastnn: {_CYTHON_PROBLEM}; falling back to the NumPy backend, which is slower.",
        FastnnBuildWarning,
        stacklevel=2,
    )


def _initial_backend() -> _Backend:
    requested = os.environ.get("FASTNN_BACKEND", "").strip().lower()
    if requested in _BACKENDS:
        return _BACKENDS[requested]
    if requested and requested not in ("cython", "numpy"):
        warnings.warn(
            f"FASTNN_BACKEND must be 'cython' or 'numpy'; got {requested!r}; ignoring it",
            stacklevel=2,
        )
    return _CYTHON if _CYTHON is not None else _NUMPY


_active: _Backend = _initial_backend()


def available_backends() -> list[str]:
    """Names of the backends that can be selected here (``"numpy"`` always)."""
    return sorted(_BACKENDS)


def cython_status() -> str | None:
    """None if the compiled backend loaded, else the reason it did not."""
    return _CYTHON_PROBLEM


def get_backend() -> str:
    """The name of the active backend: ``"cython"`` or ``"numpy"``."""
    return _active.name


def set_backend(name: str) -> None:
    """Select the kernels used by the whole library: ``"cython"`` or ``"numpy"``.

    Raises
    ------
    ValueError
        If ``name`` is not a backend name.
    RuntimeError
        If ``name`` is ``"cython"`` but the compiled module could not be used.
    """
    global _active
    if name not in ("cython", "numpy"):
        raise ValueError(f"backend must be 'cython' or 'numpy'; got {name!r}")
    if name not in _BACKENDS:
        raise RuntimeError(f"the cython backend is unavailable: {_CYTHON_PROBLEM}")
    _active = _BACKENDS[name]


@contextlib.contextmanager
def backend(name: str) -> Iterator[str]:
    """Context manager running a block of code on one backend, then restoring the previous.

    Examples
    --------
    >>> import fastnn
    >>> with fastnn.backend("numpy"):
    ...     fastnn.get_backend()
    'numpy'
    """
    previous = _active.name
    set_backend(name)
    try:
        yield name
    finally:
        set_backend(previous)


def backend_info(name: str) -> dict:
    """Compile-time facts of backend ``name`` (for ``fastnn info``): OpenMP, native,
    debug build, the source digest the compiled module was built from."""
    if name not in _BACKENDS:
        raise ValueError(f"backend must be one of {available_backends()}; got {name!r}")
    return dict(_BACKENDS[name].info)


def active():
    """The active backend (its ``name``, ``module`` and per-dtype ``kernel`` lookup)."""
    return _active
