"""The package as installed: compiled backend, fallbacks, `fastnn info`, doctests."""

from __future__ import annotations

import doctest
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fastnn
import fastnn.trainer
from fastnn import cli, ops

# Subprocesses start outside the checkout: `python -c` and `python -m` put the working
# directory first on sys.path, where the source tree's fastnn/ (not built) would shadow the
# installed package.
NEUTRAL_DIR = tempfile.gettempdir()


def _python(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or NEUTRAL_DIR, timeout=120)


def _run(code: str, env=None, cwd=None) -> subprocess.CompletedProcess:
    return _python("-c", textwrap.dedent(code), env=env, cwd=cwd)


def test_cython_backend_is_loaded():
    # Every backend-parametrized test relies on this: a failed build must fail loudly here.
    assert ops.cython_status() is None, ops.cython_status()
    assert ops.available_backends() == ["cython", "numpy"]
    assert ops.backend_info("cython")["source_sha256"]


def test_default_backend_is_cython_and_env_override():
    done = _run("import fastnn; print(fastnn.get_backend())", env={"FASTNN_BACKEND": ""})
    assert done.stdout.strip() == "cython", done.stderr
    done = _run("import fastnn; print(fastnn.get_backend())", env={"FASTNN_BACKEND": "numpy"})
    assert done.stdout.strip() == "numpy", done.stderr


def test_backend_context_manager_restores_on_error():
    fastnn.set_backend("cython")
    with pytest.raises(RuntimeError, match="boom"), fastnn.backend("numpy"):
        assert fastnn.get_backend() == "numpy"
        raise RuntimeError("boom")
    assert fastnn.get_backend() == "cython"


_CHECK_FALLBACK = """
    import warnings
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        import fastnn
    from fastnn import ops
    import numpy as np
    print(fastnn.get_backend())
    print([str(w.message) for w in caught if w.category is ops.FastnnBuildWarning])
    loss, _ = ops.softmax_cross_entropy(np.zeros((2, 4)), np.array([0, 1]))
    print(round(loss, 6))
    try:
        fastnn.set_backend("cython")
    except RuntimeError as exc:
        print("refused:", exc)
"""


def test_missing_compiled_module_warns_and_falls_back_to_numpy():
    block = """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "fastnn._kernels":
                    raise ImportError("simulated: no compiled module")
        sys.meta_path.insert(0, Block())
    """
    done = _run(textwrap.dedent(block) + textwrap.dedent(_CHECK_FALLBACK))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "numpy"
    assert "could not be imported" in lines[1] and "falling back to the NumPy backend" in lines[1]
    assert lines[2] == str(round(float(np.log(4)), 6))
    assert lines[3].startswith("refused: the cython backend is unavailable")


def test_kernel_source_ships_beside_the_compiled_module():
    # The template and the header it includes: what the staleness check hashes.
    package = Path(fastnn.__file__).parent
    for name in ("_kernels.pyx.tp", "_kernels.h"):
        assert (package / name).is_file(), name
    assert ops.backends._stale_reason(fastnn._kernels) is None


@pytest.mark.parametrize("edited", ["_kernels.pyx.tp", "_kernels.h"])
def test_stale_compiled_module_warns_and_falls_back_to_numpy(tmp_path, edited):
    # A copy of the installed package whose template or header no longer matches the
    # compiled module, as in an editable install edited but not rebuilt.
    package = Path(fastnn.__file__).parent
    copy = tmp_path / "fastnn"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    source = copy / edited
    comment = "edited after the build"
    comment = f"/* {comment} */" if edited.endswith(".h") else f"# {comment}"
    source.write_text(source.read_text() + f"\n{comment}\n")
    done = _run(_CHECK_FALLBACK, env={"PYTHONPATH": str(tmp_path)}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "numpy"
    assert "older kernel source (_kernels.pyx.tp, _kernels.h) than the one beside it" in lines[1]


def test_missing_kernel_source_is_not_stale(tmp_path):
    # Without the source beside it (a wheel stripped of package data) there is nothing to
    # compare with: the compiled module loads.
    package = Path(fastnn.__file__).parent
    copy = tmp_path / "fastnn"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "_kernels.h").unlink()
    done = _run(_CHECK_FALLBACK, env={"PYTHONPATH": str(tmp_path)}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "cython"


def test_info_lines_report_build_and_blas():
    text = "\n".join(cli.info_lines())
    assert f"fastnn {fastnn.__version__}" in text
    assert "cython backend: loaded" in text
    assert "openmp: " in text
    assert f"numpy {np.__version__}, BLAS:" in text


def test_python_m_fastnn_info():
    done = _python("-m", "fastnn", "info")
    assert done.returncode == 0, done.stderr
    assert "active backend: cython" in done.stdout


def test_info_says_who_computes_large_products_and_the_switch_works():
    code = """
        import numpy as np
        from fastnn import cli, ops
        line = next(x for x in cli.info_lines() if "large float32 matrix products" in x)
        a = np.ones((64, 300), np.float32)
        op = ops.plan_matmul(a, np.ones((300, 64), np.float32), np.empty((64, 64), np.float32))
        print(line.split(": ", 1)[1], "|", type(op).__name__)
    """
    on, off = _run(code), _run(code, env={"FASTNN_PACKED_GEMM": "0"})
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    assert off.stdout.startswith("BLAS (FASTNN_PACKED_GEMM=0) | MatmulOp32")
    if ops.uses_packed_gemm(np.float32, 64):
        assert on.stdout.startswith("fastnn's packed AVX-512 product")
        assert "PackedGemmOp" in on.stdout
    else:
        assert on.stdout.startswith("BLAS (fastnn's packed product needs AVX-512F")


def test_cli_bad_command_exits_2_with_one_line():
    done = _python("-m", "fastnn", "frobnicate")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "invalid choice" in done.stderr
    assert "Traceback" not in done.stderr


def test_console_script_installed():
    installed = any(Path(fastnn.__file__).is_relative_to(sysconfig.get_paths()[key])
                    for key in ("purelib", "platlib"))
    if not installed:
        pytest.skip("fastnn runs from a source tree here; the console script needs pip install")
    script = shutil.which("fastnn", path=str(Path(sys.executable).parent))
    assert script is not None
    done = subprocess.run([script, "info"], capture_output=True, text=True, timeout=120,
                          cwd=NEUTRAL_DIR)
    assert done.returncode == 0 and "fastnn" in done.stdout


@pytest.mark.parametrize("module", [fastnn, ops.backends, ops.calls, fastnn.schedules,
                                    fastnn.trainer, fastnn.layers, fastnn.model, fastnn._checks])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_results_do_not_depend_on_thread_count():
    code = """
        import hashlib, numpy as np
        from fastnn import ops
        rng = np.random.default_rng(0)
        x = rng.standard_normal((512, 1500)).astype(np.float32)
        out, cache = ops.batchnorm_forward(x, np.ones(1500, np.float32), np.zeros(1500, np.float32))
        dx = ops.batchnorm_backward(x, cache)[0]
        loss, grad = ops.softmax_cross_entropy(x, rng.integers(0, 1500, 512))
        p = x.ravel().copy(); m = np.zeros_like(p); v = np.zeros_like(p)
        ops.adam_update(p, x.ravel(), m, v, 1)
        h = hashlib.sha256()
        for a in (out, dx, grad, p, np.array(loss)):
            h.update(a.tobytes())
        print(h.hexdigest())
    """
    digests = {_run(code, env={"OMP_NUM_THREADS": str(t)}).stdout for t in (1, 2)}
    assert len(digests) == 1 and "" not in digests
