"""The ``fastnn`` command line: ``fastnn info``, ``fastnn bench`` (also ``python -m fastnn``).

Errors in arguments exit with status 2 and a one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import numpy as np

from . import __version__, ops


def _blas_summary() -> str:
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # older NumPy: no dict mode; the rest of `info` still works
        return "unknown (NumPy < 1.25 cannot report it)"


def _threadpools() -> list[str]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return ["(install threadpoolctl, e.g. pip install \"fastnn-cpu[bench]\", for details)"]
    return [
        f"{p.get('internal_api')} {p.get('version') or ''}: {p.get('num_threads')} threads "
        f"({os.path.basename(p.get('filepath', ''))})"
        for p in threadpool_info()
    ]


def info_lines() -> list[str]:
    """What ``fastnn info`` prints: version, build, backend, NumPy and its BLAS."""
    problem = ops.cython_status()
    lines = [
        f"fastnn {__version__} (distribution fastnn-cpu)",
        f"python {platform.python_version()} on {platform.system()} {platform.machine()}",
        f"active backend: {ops.get_backend()}",
        f"cython backend: {'loaded' if problem is None else 'unavailable: ' + problem}",
    ]
    if problem is None:
        build = ops._backend_info("cython")
        lines += [
            f"  openmp: {'on' if build['openmp'] else 'off'}",
            f"  -march=native: {'on' if build['native'] else 'off'}",
            f"  debug build (bounds checks): {'on' if build['debug_build'] else 'off'}",
            f"  source sha256: {build['source_sha256'][:16] or 'unknown'}",
        ]
    lines.append(f"numpy {np.__version__}, BLAS: {_blas_summary()}")
    lines += ["  " + p for p in _threadpools()]
    cores = os.cpu_count()
    lines.append(f"cpu cores: {cores}")
    return lines


def _cmd_info(args: argparse.Namespace) -> int:
    print("\n".join(info_lines()))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from . import _quickbench

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        limits = None
    else:
        limits = threadpool_limits(args.threads)
    print(f"fastnn {__version__}: cython vs numpy backend, float32, best of 5"
          + (f", {args.threads} thread(s)" if limits is not None else ""))
    try:
        _quickbench.run(quick=args.quick)
    except RuntimeError as exc:
        print(f"fastnn: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit status 2, no usage dump
        self.exit(2, f"fastnn: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastnn", description="fastnn: a small, fast CPU neural-net library.")
    parser.add_argument("--version", action="version", version=f"fastnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    info = sub.add_parser("info", help="version, build flags, backend, NumPy and BLAS")
    info.set_defaults(func=_cmd_info)
    bench = sub.add_parser("bench", help="time the kernels on the cython and numpy backends")
    bench.add_argument("--quick", action="store_true", help="smaller sizes, shorter timing")
    bench.add_argument("--threads", type=_positive_int, default=1,
                       help="BLAS/OpenMP threads (needs threadpoolctl; default 1)")
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
