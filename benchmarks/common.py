"""What every benchmark script shares: server processes, CPU accounting, alternating runs.

The machine these run on is small and shared, so absolute numbers drift by
15–20 % between runs. Each script therefore runs the things it compares in
one go, alternating them cell by cell (the order rotates every repeat), and
reports medians and ratios. Server CPU time per request (CPU seconds of the
server's whole process tree ÷ requests answered) is recorded too: it moves
far less with noise than requests per second.

The client is ``sidecar.bench`` running in this process.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from sidecar.bench import BenchOptions, LevelResult, run_bench
from sidecar.proto import grpc_service_pb2 as pb
from sidecar.proto import grpc_service_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "sidecar" / "examples" / "models"
DIGITS_ONNX = EXAMPLES / "digits" / "1" / "model.onnx"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        child = int(entry)
        children.setdefault(int(fields[1]), []).append(child)
        times[child] = (int(fields[11]) + int(fields[12])) / TICKS
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo.extend(children.get(current, []))
    return total


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of each live thread of ``pid``, keyed ``comm/tid`` (Linux /proc).

    Read from ``/proc/PID/task/TID/schedstat`` (nanoseconds on the CPU), not
    ``stat``'s 10 ms ticks. Names are what ``/proc`` says: start the server
    through ``benchmarks.named_threads`` to see Python thread names there.
    """
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as handle:
                name = handle.read().strip()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as handle:
                nanoseconds = int(handle.read().split()[0])
        except (OSError, ValueError, IndexError):  # the thread ended meanwhile
            continue
        if name == "MainThread" and int(tid) != pid:  # a native thread started by the main one
            name = "native"
        out[f"{name}/{tid}"] = nanoseconds / 1e9
    return out


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid``, ended threads included (10 ms ticks)."""
    with open(f"/proc/{pid}/stat") as handle:
        stat = handle.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def self_cpu_seconds() -> float:
    """CPU seconds of this process (the client) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Server:
    """A server process under test."""

    name: str
    target: str
    process: subprocess.Popen[bytes]
    model: str = "digits"

    @property
    def pid(self) -> int:
        return self.process.pid


def wait_ready(target: str, model: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll ModelReady until the server answers true; fail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server for {target} exited with {process.returncode}")
            try:
                if stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=1).ready:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{target} not ready within {timeout} s")
            time.sleep(0.2)


@contextmanager
def server_process(
    name: str,
    command: Sequence[str],
    port: int,
    model: str = "digits",
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    log: Path | None = None,
    ready_timeout: float = 180,
) -> Iterator[Server]:
    """Start a server, wait until its model is ready, stop it (SIGTERM, then SIGKILL) at exit."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        list(command),
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    target = f"127.0.0.1:{port}"
    try:
        wait_ready(target, model, process, ready_timeout)
        yield Server(name, target, process, model)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        if log:
            out.close()  # type: ignore[union-attr]


def sidecar_command(repository: Path, port: int, config: Path | None = None) -> list[str]:
    """``inference-sidecar serve`` on a loopback port (metrics on a free port)."""
    command = [
        sys.executable, "-m", "sidecar.cli", "serve", "--model-repository", str(repository),
        "--grpc-port", str(port), "--metrics-port", str(free_port()),
    ]  # fmt: skip
    if config is not None:
        command += ["--config", str(config)]
    return command


def echo_command(port: int, run_model: bool, model: Path = DIGITS_ONNX) -> list[str]:
    """The bare grpc.aio server in benchmarks/echo_server.py."""
    command = [sys.executable, "-m", "benchmarks.echo_server", "--port", str(port)]
    command += ["--model", str(model)]
    return command + (["--onnx"] if run_model else [])


def copy_model(source: str, repository: Path, name: str, config_yaml: str | None = None) -> None:
    """Copy an example model into ``repository/name``, optionally with another config.yaml."""
    shutil.copytree(EXAMPLES / source, repository / name)
    if config_yaml is not None:
        (repository / name / "config.yaml").write_text(config_yaml)


@dataclass
class Cell:
    """One measured point: a server at one load."""

    server: str
    concurrency: int
    batch_size: int
    repeat: int
    requests_per_second: float
    rows_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu_us_per_request: float
    client_cpu_us_per_request: float
    extra: dict[str, Any] = field(default_factory=dict)


def measure(
    server: Server,
    concurrency: int,
    duration: float,
    warmup: float,
    batch_size: int = 1,
    repeat: int = 0,
    streaming: bool = False,
    model: str | None = None,
    label: str | None = None,
) -> Cell:
    """One bench run against ``server`` with its CPU use (after an uncounted warm-up run)."""

    def options(seconds: float) -> BenchOptions:
        return BenchOptions(
            target=server.target,
            model=model or server.model,
            concurrency=(concurrency,),
            duration=seconds,
            warmup=0,
            batch_size=batch_size,
            streaming=streaming,
        )

    if warmup > 0:
        asyncio.run(run_bench(options(warmup)))
    cpu0, client0 = tree_cpu_seconds(server.pid), self_cpu_seconds()
    report = asyncio.run(run_bench(options(duration)))
    cpu1, client1 = tree_cpu_seconds(server.pid), self_cpu_seconds()
    level: LevelResult = report.levels[0]
    total = max(1, level.ok + sum(level.errors.values()))
    return Cell(
        server=label or server.name,
        concurrency=concurrency,
        batch_size=batch_size,
        repeat=repeat,
        requests_per_second=level.requests_per_second,
        rows_per_second=level.rows_per_second,
        p50_ms=level.latency_ms["p50"],
        p99_ms=level.latency_ms["p99"],
        errors=sum(level.errors.values()),
        server_cpu_us_per_request=(cpu1 - cpu0) / total * 1e6,
        client_cpu_us_per_request=(client1 - client0) / total * 1e6,
    )


def fixed_rate_cpu(server: Server, rate: float, seconds: float, model: str | None = None) -> float:
    """Server CPU µs per request while sending ``rate`` requests/s (open loop) for ``seconds``.

    At a fixed rate both servers of a comparison do the same work per second,
    so unlike closed-loop CPU per request this does not move with how fast
    each happened to run (gRPC gets cheaper per request when busier).
    Requests are sent on schedule whatever the answers (at most 256 in flight).
    """
    total = int(rate * seconds)
    cpu0: list[float] = []
    asyncio.run(
        send_at_rate(server, rate, total, model, lambda: cpu0.append(tree_cpu_seconds(server.pid)))
    )
    return (tree_cpu_seconds(server.pid) - cpu0[0]) / total * 1e6


async def send_at_rate(
    server: Server,
    rate: float,
    total: int,
    model: str | None = None,
    started: Callable[[], None] | None = None,
    data: Path | None = None,
) -> None:
    """Send ``total`` requests at ``rate`` requests/s (open loop); raise if any fails.

    The requests cycle through ``inference-sidecar bench``'s payloads (random
    rows, or ``data``'s). ``started`` is called once the channel is ready,
    right before the first request.
    """
    from sidecar.bench import INFER_METHOD, BenchOptions, build_workload, fetch_metadata

    options = BenchOptions(target=server.target, model=model or server.model, warmup=0, data=data)
    async with grpc.aio.insecure_channel(server.target) as channel:
        workload = build_workload(await fetch_metadata(channel, options), options)
        call = channel.unary_unary(INFER_METHOD)
        payloads = workload.payloads
        errors = 0

        async def one(payload: bytes) -> None:
            nonlocal errors
            try:
                await call(payload, timeout=30)
            except grpc.aio.AioRpcError:
                errors += 1

        inflight: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        if started is not None:
            started()
        start = loop.time()
        for index in range(total):
            delay = start + index / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(inflight) >= 256:  # the server fell behind: wait (the rate slips)
                await asyncio.wait(tuple(inflight), return_when=asyncio.FIRST_COMPLETED)
            task = loop.create_task(one(payloads[index % len(payloads)]))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        if inflight:
            await asyncio.wait(tuple(inflight))
        if errors:
            raise RuntimeError(f"{errors} of {total} requests to {server.name} failed")


@dataclass
class ThreadCell:
    """CPU per request of each thread of a server over a fixed number of requests."""

    server: str
    concurrency: int
    repeat: int
    requests: int  # answered (OK or not)
    requests_per_second: float
    threads_us: dict[str, float]  # ``comm/tid`` → CPU µs per request
    process_us: float  # the whole process, threads that ended meanwhile included


def thread_cpu(
    server: Server,
    concurrency: int,
    requests: int,
    warmup: float,
    repeat: int = 0,
    data: Path | None = None,
    rate: float | None = None,
) -> ThreadCell:
    """Send ``requests`` requests (after an uncounted warm-up) and charge each thread its CPU.

    Closed loop with ``concurrency`` in flight, or, with ``rate``, open loop at
    ``rate`` requests/s: then every server does the same work per second,
    which takes out the effect of speed on CPU per request (gRPC costs less
    per request when busier).

    Thread CPU comes from ``/proc/PID/task/*/schedstat`` (``thread_cpu_seconds``):
    a count of work, not of speed, so it moves far less with a busy machine
    than requests per second. A fixed request count makes background work that
    runs per N requests (drift windows) comparable between runs.
    """

    def options(**size: Any) -> BenchOptions:
        return BenchOptions(
            target=server.target,
            model=server.model,
            concurrency=(concurrency,),
            warmup=0,
            data=data,
            **size,
        )

    if warmup > 0 and rate is None:
        asyncio.run(run_bench(options(duration=warmup)))
    elif warmup > 0 and rate is not None:
        asyncio.run(send_at_rate(server, rate, max(1, int(rate * warmup)), data=data))
    before: list[tuple[dict[str, float], float, float]] = []

    def snapshot() -> None:
        before.append(
            (thread_cpu_seconds(server.pid), process_cpu_seconds(server.pid), time.perf_counter())
        )

    if rate is None:
        snapshot()
        report = asyncio.run(run_bench(options(duration=None, requests=requests)))
        level = report.levels[0]
        total = max(1, level.ok + sum(level.errors.values()))
        if level.errors:
            raise RuntimeError(f"{server.name}: {level.errors} of {total} requests failed")
        speed = level.requests_per_second
    else:
        asyncio.run(send_at_rate(server, rate, requests, started=snapshot, data=data))
        total = requests
        speed = total / (time.perf_counter() - before[0][2])
    threads1, process1 = thread_cpu_seconds(server.pid), process_cpu_seconds(server.pid)
    threads0, process0, _ = before[0]
    return ThreadCell(
        server=server.name,
        concurrency=0 if rate is not None else concurrency,
        repeat=repeat,
        requests=total,
        requests_per_second=speed,
        threads_us={
            key: (seconds - threads0.get(key, 0.0)) / total * 1e6
            for key, seconds in threads1.items()
        },
        process_us=(process1 - process0) / total * 1e6,
    )


def median_of(cells: Sequence[Cell], attribute: str) -> float:
    """Median of one attribute across repeats."""
    return statistics.median(getattr(c, attribute) for c in cells)


def group(cells: Sequence[Cell], *keys: str) -> dict[tuple[Any, ...], list[Cell]]:
    """Cells grouped by the given attributes (repeats together)."""
    out: dict[tuple[Any, ...], list[Cell]] = {}
    for cell in cells:
        out.setdefault(tuple(getattr(cell, k) for k in keys), []).append(cell)
    return out


def machine() -> dict[str, Any]:
    """What the numbers were measured on, and how busy it was."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions: dict[str, str] = {}
    for module in ("grpc", "onnxruntime", "numpy"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            continue
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "versions": versions,
        "load_average_at_start": os.getloadavg(),
        "gpu": shutil.which("nvidia-smi") is not None,
    }


def rotate(items: Sequence[Any], by: int) -> list[Any]:
    """``items`` rotated left by ``by`` (alternating the order between repeats)."""
    by %= max(1, len(items))
    return [*items[by:], *items[:by]]


def run_rounds(
    servers: Sequence[Server],
    levels: Sequence[int],
    repeats: int,
    duration: float,
    warmup: float,
    batch_size: int = 1,
) -> list[Cell]:
    """Every server at every concurrency level, ``repeats`` times, the order rotating
    each repeat so that a noisy machine's drift touches every server alike."""
    cells: list[Cell] = []
    width = max((len(s.name) for s in servers), default=8)
    for repeat in range(repeats):
        for concurrency in levels:
            for server in rotate(servers, repeat):
                cell = measure(server, concurrency, duration, warmup, batch_size, repeat)
                cells.append(cell)
                print(
                    f"  repeat {repeat} c={concurrency} {server.name:{width}} "
                    f"{cell.requests_per_second:8.1f} req/s  p99 {cell.p99_ms:6.2f} ms  "
                    f"server {cell.server_cpu_us_per_request:6.0f} µs/req  "
                    f"errors {cell.errors}",
                    flush=True,
                )
    return cells


def save(path: Path | None, payload: dict[str, Any]) -> None:
    """Write results as JSON (when a path was given)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def cells_json(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """Cells as dicts."""
    return [asdict(c) for c in cells]
