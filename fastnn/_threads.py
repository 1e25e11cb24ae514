"""fastnn's thread policy: how many BLAS threads its matrix products may use.

OpenBLAS starts one thread per core and decides per call whether to use them; on a small
product, or on a 2-core machine whose other core is busy, its extra thread spins on a
core it does not get and the product runs several times slower. fastnn therefore
decides itself, per call of its own: a product of fewer than :data:`PARALLEL_MIN_MACS`
multiply-adds runs on one thread; a larger one on :func:`get_num_threads` threads less
the cores other processes are running on (:func:`spare_cores`), and never on more than
the program lets BLAS use (``threadpool_limits``,
``OPENBLAS_NUM_THREADS``). The
limit holds only while fastnn computes (``fit``, ``predict``, ``evaluate``): the BLAS
setting of the rest of the program is restored afterwards.

The number of threads is ``set_num_threads(n)``, else the ``FASTNN_NUM_THREADS``
environment variable, else the cores this process may run on. The limits are set
through threadpoolctl's controller (a dependency of fastnn); without a BLAS that it
can control, fastnn leaves the threads alone and ``fastnn info`` says so.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from contextlib import contextmanager

__all__ = ["PARALLEL_MIN_MACS", "get_num_threads", "limited", "macs_per_row", "on_limit",
           "set_num_threads", "spare_cores", "threads", "threads_for"]

#: Products below this many multiply-adds (about 0.2 ms on one core) run on one thread:
#: below it, waking a second thread costs more than it saves.
PARALLEL_MIN_MACS = 1 << 22

_ENV = "FASTNN_NUM_THREADS"
_setting: int | None = None  # set_num_threads; None: the environment, else every core
_lock = threading.Lock()
_depth = 0  # fastnn calls computing now (in any thread)
_saved: list = []  # (controller, its thread count) to restore when the last one ends
_controllers = None  # threadpoolctl's BLAS controllers, found once
_hooks: list = []  # told the threads fastnn's own kernels may use (see on_limit)


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _from_environment() -> int | None:
    text = os.environ.get(_ENV, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        warnings.warn(f"{_ENV} must be a whole number >= 1; got {text!r}: ignored",
                      RuntimeWarning, stacklevel=3)
        return None
    return value


def set_num_threads(n: int | None) -> None:
    """Use at most ``n`` threads for fastnn's large matrix products (None: the default,
    ``FASTNN_NUM_THREADS`` or else every core this process may use).

    Small products always run on one thread (see :data:`PARALLEL_MIN_MACS`).
    """
    global _setting
    if n is not None:
        from . import _checks

        n = _checks.integer("n", n, minimum=1)
    _setting = n


def get_num_threads() -> int:
    """The most threads fastnn's large matrix products use (see :func:`set_num_threads`)."""
    if _setting is not None:
        return _setting
    env = _from_environment()
    return env if env is not None else _cores()


@contextmanager
def threads(n: int | None):
    """``with fastnn.threads(n):`` fastnn uses at most ``n`` threads inside the block."""
    global _setting
    previous = _setting
    set_num_threads(n)
    try:
        yield
    finally:
        _setting = previous


def macs_per_row(layers) -> int:
    """Multiply-adds of the largest matrix product per row of a batch (built layers)."""
    return max((layer.input_dim * layer.units for layer in layers if layer.units is not None),
               default=0)


def threads_for(macs: int) -> int:
    """The BLAS threads for a product of ``macs`` multiply-adds: one below
    PARALLEL_MIN_MACS, else get_num_threads() less the cores other processes keep busy
    (at least one)."""
    if macs < PARALLEL_MIN_MACS:
        return 1
    n = get_num_threads()
    return n if n == 1 else max(1, min(n, spare_cores()))


#: Seconds a reading of the other processes' load is reused for.
_BUSY_TTL = 0.1
_busy = (-1.0, 0)  # (time.monotonic() of the reading, cores other processes kept busy)


def spare_cores() -> int:
    """The cores this process may use that no other process is running on now.

    A BLAS thread that shares a core with a busy process costs far more than it saves:
    OpenBLAS's threads wait for each other, and one that yields its core to the other
    process waits a whole time slice. Measured here with one core of two running a
    ``nice -n 19`` loop: a 256x784x256 product took 12x as long on two threads as on
    one, and fit at batch 256 15x. Read from the kernel's count of running tasks
    (``/proc/loadavg``) less this process's own running threads (``/proc/self/task``),
    at most every _BUSY_TTL seconds; where those files do not exist, every core is
    taken as free."""
    global _busy
    now = time.monotonic()
    when, others = _busy
    if now - when > _BUSY_TTL:
        others = _others_running()
        _busy = (now, others)
    return max(1, _cores() - others)


def _others_running() -> int:
    """Tasks running or runnable now that are not threads of this process."""
    try:
        with open("/proc/loadavg", "rb") as fh:
            running = int(fh.read().split()[3].split(b"/")[0])
        own = 0
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/stat", "rb") as fh:
                    stat = fh.read()
            except OSError:  # the thread ended meanwhile
                continue
            # the state follows the command, which is in parentheses and may hold spaces
            if stat[stat.rindex(b")") + 2:][:1] == b"R":
                own += 1
    except (OSError, ValueError, IndexError):
        return 0
    return max(0, running - own)


def _blas():
    global _controllers
    if _controllers is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _controllers = []
        else:
            _controllers = ThreadpoolController().select(user_api="blas").lib_controllers
    return _controllers


@contextmanager
def limited(n: int):
    """BLAS limited to ``n`` threads inside the block (for every thread of the process).

    Never raises BLAS above what the program set (``threadpool_limits(1)`` or
    ``OPENBLAS_NUM_THREADS=1`` outside fastnn hold inside it too). Nested and concurrent
    blocks share one limit: the first to enter sets it, the last to leave restores what
    the program had. (A concurrent block asking for a different
    count runs under the first one's: the limit is process-wide in BLAS itself.)
    """
    _enter(n)
    try:
        yield
    finally:
        _leave()


def on_limit(hook) -> None:
    """Have ``hook(n)`` told how many threads fastnn's own kernels (its packed matrix
    product) may use: when the first :func:`limited` block begins, the block's count,
    never more than the program allows BLAS; 1 when the last one ends."""
    _hooks.append(hook)


def _set(controller, n: int) -> None:
    """Set a BLAS controller's thread count from whichever thread runs this. threadpoolctl
    lets only the first thread that sets OpenBLAS's pool size change it (the others'
    calls silently do nothing), so a fit or predict in a worker thread would run under
    the program's BLAS setting, not fastnn's: control is handed back around each set."""
    clear = getattr(controller, "clear_controlling_thread", None)  # where threadpoolctl has it
    if clear is not None:
        clear(force=True)  # fastnn's own lock orders its sets; the program's restore later
    controller.set_num_threads(n)
    if clear is not None:
        clear(force=True)


def _enter(n: int) -> None:
    global _depth, _saved
    with _lock:
        if _depth == 0:
            controllers = _blas()
            _saved = [(c, c.num_threads) for c in controllers]
            for c, had in _saved:
                if n < had:  # never more threads than the program allows BLAS
                    _set(c, n)
            own = min([n, *(had for _, had in _saved)])
            for hook in _hooks:
                hook(own)
        _depth += 1


def _leave() -> None:
    global _depth, _saved
    with _lock:
        _depth -= 1
        if _depth == 0:
            for c, had in _saved:
                if c.num_threads != had:
                    _set(c, had)
            _saved = []
            for hook in _hooks:
                hook(1)


def info() -> dict:
    """The policy as ``fastnn info`` reports it."""
    controllers = _blas()
    source = ("set_num_threads" if _setting is not None
              else _ENV if _from_environment() is not None else "cores")
    return {
        "threads": get_num_threads(),
        "source": source,
        "cores": _cores(),
        "spare_cores": spare_cores(),
        "parallel_min_macs": PARALLEL_MIN_MACS,
        "blas": [f"{c.internal_api} {c.version} ({c.num_threads} threads outside fastnn)"
                 for c in controllers] or ["none that threadpoolctl can limit"],
    }
