"""Run a module as ``__main__`` with each Python thread's name given to its OS thread (Linux).

    python -m benchmarks.named_threads sidecar.cli serve --model-repository ...

Python 3.11 leaves every thread of a process named after the executable in
``/proc/PID/task/TID/comm``; this sets each thread's OS name (``prctl``,
15 bytes at most) to its ``threading`` name as it starts, so that a
benchmark can read the CPU time of ``drift-worker``, ``output-metrics``,
``label-store`` ... from ``/proc`` (``benchmarks.common.thread_cpu``). The
main thread, which runs the server's event loop, is named ``MainThread``.
Threads started by C code (gRPC's) keep the names their library gives them.

The hook is ``threading.setprofile``: it runs at the first call in a new
thread, names the thread and removes itself, so nothing is left profiling.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import runpy
import sys
import threading
from types import FrameType
from typing import Any

PR_SET_NAME = 15
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def name_os_thread(name: str) -> None:
    """Give the calling OS thread ``name`` (truncated to 15 bytes)."""
    _libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def _hook(frame: FrameType, event: str, arg: Any) -> None:
    sys.setprofile(None)
    name_os_thread(threading.current_thread().name)


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m benchmarks.named_threads MODULE [ARGS...]")
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    name_os_thread("MainThread")
    threading.setprofile(_hook)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
