"""Overload: 4× the sustainable concurrency for 20 s against a model with a concurrency limit.

The server sheds the excess at once with RESOURCE_EXHAUSTED, accepted requests
keep a bounded p99 (against the model time and the p99 at the sustainable
concurrency measured just before, on the same busy machine), the server's
memory stays flat, and the first request after the load stops is served
normally.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from sidecar.proto import grpc_service_pb2 as pb
from sidecar.proto import grpc_service_pb2_grpc as pb_grpc
from tests.helpers import free_port, spawn, wait_for_line

DELAY = 0.05  # seconds a model call holds one of the model's LIMIT threads
LIMIT = 8  # concurrent requests admitted = threads: capacity LIMIT / DELAY = 160 req/s
CLIENTS = 4 * LIMIT
DURATION = 20.0
BASELINE = 5.0  # seconds at the sustainable concurrency first, to measure the machine's noise
BACKOFF = 0.05  # a refused client waits this long before retrying, as real clients do


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)  # accepted requests, seconds
    codes: dict[str, int] = field(default_factory=dict)
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, kB)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def request() -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="slow")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    return req


async def load(
    stub: pb_grpc.GRPCInferenceServiceStub, clients: int, duration: float, tally: Tally, pid: int
) -> None:
    """``clients`` closed-loop clients for ``duration`` seconds; RSS sampled every second."""
    start = time.monotonic()
    stop = start + duration
    message = request()

    async def client() -> None:
        while time.monotonic() < stop:
            sent = time.monotonic()
            try:
                await stub.ModelInfer(message, timeout=5)
            except grpc.aio.AioRpcError as exc:
                name = exc.code().name
                tally.codes[name] = tally.codes.get(name, 0) + 1
                await asyncio.sleep(BACKOFF)  # client backoff: shapes the load
                continue
            tally.latencies.append(time.monotonic() - sent)
            tally.codes["OK"] = tally.codes.get("OK", 0) + 1

    async def sample_memory() -> None:
        while time.monotonic() < stop:
            tally.rss.append((time.monotonic() - start, rss_kb(pid)))
            await asyncio.sleep(1.0)  # sampling interval

    await asyncio.gather(sample_memory(), *(client() for _ in range(clients)))


async def hammer(address: str, pid: int, baseline: Tally, tally: Tally) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        await stub.ServerLive(pb.ServerLiveRequest(), timeout=10)
        # The same machine at the sustainable concurrency: what latency noise it has now.
        await load(stub, LIMIT, BASELINE, baseline, pid)
        await load(stub, CLIENTS, DURATION, tally, pid)
        # Load is gone: the very next requests are served at the model's own speed.
        recovery = []
        message = request()
        for _ in range(5):
            sent = time.monotonic()
            await stub.ModelInfer(message, timeout=5)
            recovery.append(time.monotonic() - sent)
        tally.codes["recovery_max_ms"] = round(max(recovery) * 1000)


@pytest.mark.slow
def test_overload_sheds_keeps_latency_and_memory_bounded_and_recovers() -> None:
    port = free_port()
    args = ["-m", "tests.overload_server", str(port), str(DELAY), str(LIMIT)]  # LIMIT threads
    with spawn(args) as proc:
        wait_for_line(proc.stderr, "serving gRPC")
        baseline, tally = Tally(), Tally()
        asyncio.run(hammer(f"127.0.0.1:{port}", proc.pid, baseline, tally))
    ok = tally.codes.get("OK", 0)
    shed = tally.codes.get("RESOURCE_EXHAUSTED", 0)
    latencies = np.array(tally.latencies)
    p50, p99 = np.percentile(latencies, [50, 99])
    base_p99 = float(np.percentile(baseline.latencies, 99))
    steady = [kb for t, kb in tally.rss if t >= 5.0]
    growth_mb = (max(steady) - steady[0]) / 1024
    print(
        f"\noverload: {ok / DURATION:.0f} accepted/s, {shed / DURATION:.0f} shed/s, "
        f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"RSS {steady[0] / 1024:.1f} MB (+{growth_mb:.2f} MB over {len(steady)} s), "
        f"recovery max {tally.codes['recovery_max_ms']} ms, codes {tally.codes}; "
        f"at sustainable load p99 {base_p99 * 1000:.1f} ms"
    )
    assert set(tally.codes) <= {"OK", "RESOURCE_EXHAUSTED", "recovery_max_ms"}, tally.codes
    assert shed > 0.3 * ok, "4x the sustainable concurrency must be shed, not queued"
    assert ok / DURATION > 0.5 * LIMIT / DELAY, "the model's capacity stays in use"
    # Without the limit, 32 clients queue for 8 threads: p50 ≈ 4 x DELAY, and the first
    # request after the load waits behind the queue. With it, accepted requests never
    # wait for a thread; what remains is CPU contention on a small shared machine.
    assert p50 < 2.5 * DELAY, f"p50 of accepted requests {p50 * 1000:.0f} ms"
    # p99 is mostly the shared machine's scheduling noise: bounded by a multiple of the
    # model time, or of the p99 the same machine showed at the sustainable load just before.
    bound = max(8 * DELAY, 4 * base_p99)
    assert p99 < bound, f"p99 {p99 * 1000:.0f} ms, bound {bound * 1000:.0f} ms"
    assert growth_mb < 16, f"server RSS grew {growth_mb:.1f} MB under steady overload"
    # Recovers at once: the requests right after the load are as fast as the model (or as
    # the sustainable-load p99 on this machine right now).
    assert tally.codes["recovery_max_ms"] < max(3 * DELAY, 2 * base_p99) * 1000
