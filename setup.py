"""Declares fastnn's one compiled extension; all metadata lives in pyproject.toml.

Build options (environment variables, off unless set to a non-empty value other than 0):

* ``FASTNN_NATIVE=1``: ``-march=native`` (faster, but the build runs only on CPUs like this one).
* ``FASTNN_OPENMP=1``: compile and link with OpenMP; kernels then share work between threads.
* ``FASTNN_DEBUG_BUILD=1``: bounds, wraparound and initialisation checks on, ``-O0 -g``, so the
  whole test suite can run against a checked build.

Never ``-ffast-math``: it would let the compiler assume no NaN or inf, and the library must
propagate them. ``-fno-math-errno`` is used instead: it only stops ``sqrt`` from setting
``errno`` (which nothing reads), so that loops calling ``sqrt`` vectorise.
"""

import hashlib
import os
import sys

from Cython.Distutils import build_ext
from setuptools import Extension, setup

SOURCE = os.path.join("fastnn", "_kernels.pyx")


def _flag(name):
    return os.environ.get(name, "").strip() not in ("", "0")


DEBUG = _flag("FASTNN_DEBUG_BUILD")
NATIVE = _flag("FASTNN_NATIVE")
OPENMP = _flag("FASTNN_OPENMP")


class BuildExt(build_ext):
    """Cythonizes (directives differ per build mode, so always afresh) and picks the
    optimisation flags for the compiler actually used (gcc/clang or MSVC)."""

    def finalize_options(self):
        super().finalize_options()
        self.force = True

    def build_extensions(self):
        msvc = self.compiler.compiler_type == "msvc"
        for ext in self.extensions:
            if msvc:
                ext.extra_compile_args += ["/Od", "/Zi"] if DEBUG else ["/O2"]
                if OPENMP:
                    ext.extra_compile_args.append("/openmp")
                continue
            if DEBUG:
                ext.extra_compile_args += ["-O0", "-g"]
            else:
                # -fno-trapping-math: nothing enables FP traps; lets branch-free selects
                # (as in the float32 exp) vectorise. Neither flag changes NaN/inf results.
                ext.extra_compile_args += ["-O3", "-g0", "-fno-math-errno", "-fno-trapping-math"]
            if NATIVE:
                ext.extra_compile_args.append("-march=native")
            if OPENMP:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
        super().build_extensions()


def _source_digest():
    # Baked into the module so that `import fastnn` can tell a stale build
    # (an editable install whose .pyx changed since it was compiled).
    with open(SOURCE, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _c_string(text):
    # MSVC and gcc both accept a quoted string literal passed this way.
    return '"%s"' % text if sys.platform != "win32" else '\\"%s\\"' % text


extension = Extension(
    "fastnn._kernels",
    [SOURCE],  # the .pyx itself, so the sdist ships it and builds from it
    define_macros=[
        ("FASTNN_SOURCE_SHA256", _c_string(_source_digest())),
        ("FASTNN_DEBUG_BUILD", "1" if DEBUG else "0"),
        ("FASTNN_NATIVE", "1" if NATIVE else "0"),
    ],
)
extension.cython_directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}
extension.cython_c_in_temp = True  # generated C goes to the build directory, not the tree

setup(ext_modules=[extension], cmdclass={"build_ext": BuildExt})
