"""The per-thread CPU measurement of benchmarks/monitoring_overhead.py --threads.

``benchmarks.named_threads`` must make ``/proc`` name Python threads as
``threading`` does, and ``benchmarks.common.thread_cpu`` must charge a real
server's threads over exactly the requests it sent.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.common import ROOT, echo_command, free_port, server_process, thread_cpu
from benchmarks.monitoring_overhead import grouped, thread_group

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/task").exists(), reason="reads thread names and CPU from Linux /proc"
)

CHILD = """
import os, threading
seen = {}
def work():
    seen["comm"] = open(f"/proc/self/task/{threading.get_native_id()}/comm").read().strip()
t = threading.Thread(target=work, name="drift-worker")
t.start(); t.join()
print(open(f"/proc/self/task/{os.getpid()}/comm").read().strip(), seen["comm"])
"""


def test_named_threads_gives_each_python_thread_its_name_in_proc(tmp_path: Path) -> None:
    (tmp_path / "child_main.py").write_text(CHILD)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.named_threads", "child_main"],
        cwd=ROOT,
        env={"PYTHONPATH": f"{tmp_path}:{ROOT}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.split() == ["MainThread", "drift-worker"]


def test_thread_cpu_charges_the_server_threads_for_the_requests_sent() -> None:
    port = free_port()
    command = echo_command(port, run_model=True)
    command[1:3] = ["-m", "benchmarks.named_threads", "benchmarks.echo_server"]
    with server_process("echo", command, port) as server:
        cell = thread_cpu(server, concurrency=4, requests=300, warmup=0.2)
        paced = thread_cpu(server, concurrency=1, requests=100, warmup=0.0, rate=200.0)
    assert cell.requests == 300 and paced.requests == 100
    for measured in (cell, paced):
        groups = grouped(measured)
        loop = groups["event loop (gRPC handlers, decode, model, encode, listeners)"]
        assert loop > 0  # the main thread (the event loop) answered the requests
        assert groups["total (process)"] >= loop * 0.5  # 10 ms ticks against nanoseconds
    assert paced.requests_per_second == pytest.approx(200.0, rel=0.5)
    assert thread_group(f"MainThread/{server.pid}").startswith("event loop")
    assert thread_group("drift-worker/123") == "drift worker"
    assert thread_group("Thread-3 (_poll/77") == "gRPC poller and C threads"
