"""Declares fastnn's one compiled extension; all metadata lives in pyproject.toml.

The extension's source is a Tempita template, ``fastnn/_kernels.pyx.tp`` (each planned-step
op class written once per dtype), rendered here at build time to ``fastnn/_kernels.pyx``
(generated, not committed), plus the C header ``fastnn/_kernels.h`` it includes. Both ship in
the sdist and, as package data, in the wheel.

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

TEMPLATE = os.path.join("fastnn", "_kernels.pyx.tp")
HEADER = os.path.join("fastnn", "_kernels.h")
SOURCE = os.path.join("fastnn", "_kernels.pyx")  # rendered from TEMPLATE by BuildExt


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

    def get_source_files(self):
        # What the sdist ships for the extension: the template and the header, never the
        # rendered .pyx (a local build leaves one in the tree).
        return [path for path in super().get_source_files() if path != SOURCE]

    def build_extensions(self):
        _render_template()
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


def _render_template():
    """Write SOURCE from TEMPLATE (Tempita ships with Cython), if its text changed."""
    from Cython import Tempita

    with open(TEMPLATE, encoding="utf-8") as fh:
        template = Tempita.Template(fh.read(), name=TEMPLATE)
    text = (f"# Generated from {os.path.basename(TEMPLATE)} by setup.py: edit the template, "
            "not this file.\n" + template.substitute())
    if os.path.isfile(SOURCE):
        with open(SOURCE, encoding="utf-8") as fh:
            if fh.read() == text:
                return
    with open(SOURCE, "w", encoding="utf-8") as fh:
        fh.write(text)


def _source_digest():
    # Baked into the module so that `import fastnn` can tell a stale build (an editable
    # install whose template or header changed since it was compiled). The same digest as
    # fastnn.ops.backends._stale_reason computes over the files beside the module: sha256
    # of "<name> <sha256 of its bytes>\n" for each file, in this order.
    outer = hashlib.sha256()
    for path in (TEMPLATE, HEADER):
        with open(path, "rb") as fh:
            inner = hashlib.sha256(fh.read()).hexdigest()
        outer.update(f"{os.path.basename(path)} {inner}\n".encode("ascii"))
    return outer.hexdigest()


def _c_string(text):
    # MSVC and gcc both accept a quoted string literal passed this way.
    return '"%s"' % text if sys.platform != "win32" else '\\"%s\\"' % text


extension = Extension(
    "fastnn._kernels",
    [SOURCE],  # rendered from TEMPLATE just before Cython runs
    depends=[TEMPLATE, HEADER],
    include_dirs=[os.path.dirname(HEADER)],  # for `cdef extern from "_kernels.h"`
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
