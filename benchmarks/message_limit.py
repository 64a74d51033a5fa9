"""grpc.max_message_bytes on requests: server memory, and the per-request cost (docs/benchmarks.md).

Two parts.

``memory``: for each case a fresh ``inference-sidecar serve`` process (the
bundled digits classifier, ``grpc.max_message_bytes`` = each ``--limit-mib``, gRPC
core's own limit ``grpc.transport_max_message_bytes`` at its default, twice
that) gets one small request, then one ModelInfer request of the case's size:

- ``just under the limit (parsed)``: a digits request (answered OK at 4 MiB; at
  64 MiB it has more rows than ``limits.max_batch_rows`` and is refused after parsing);
- ``refused by the server``: 1.5 times the limit, and just under the
  transport limit (``at most``);
- ``refused by gRPC core``: ``--huge-mib`` (512 MiB by default).

It reports the status, the time the call took, and the server's RSS from
/proc before the call and its peak (VmHWM) after it.

``cpu``: in this process, no server: what reading a request costs per
call on the path gRPC used to take (the generated deserializer,
``ModelInferRequest.FromString``, called by the ``CallGuard`` interceptor)
and on the raw-bytes path ModelInfer now takes (the guard passes the bytes
through, the servicer checks their size and parses them with
a ``guard.message_reader``), for a batch-1 digits request and a 1 MiB one;
alternated, medians of the repeats. Both chains end in a handler that returns
the parsed message.

    python -m benchmarks.message_limit --out benchmarks/results/message_limit.json
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from benchmarks.common import copy_model, free_port, machine, save, server_process, sidecar_command
from sidecar.guard import CallGuard, message_reader
from sidecar.proto import grpc_service_pb2 as pb

MIB = 1024 * 1024
METHOD = "/inference.GRPCInferenceService/ModelInfer"
ROW_BYTES = 64 * 4  # one digits row: 64 FP32


def status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


def digits_request(size: int) -> pb.ModelInferRequest:
    """A digits request of about ``size`` bytes (whole rows; a few bytes of framing more)."""
    rows = max(1, size // ROW_BYTES)
    req = pb.ModelInferRequest(model_name="digits")
    req.inputs.add(name="input", datatype="FP32", shape=[rows, 64])
    req.raw_input_contents.append(bytes(rows * ROW_BYTES))
    return req


def memory_case(repository: Path, config: Path, name: str, size: int) -> dict[str, Any]:
    """One fresh server, one small request, then one of ``size`` bytes."""
    port = free_port()
    with server_process(name, sidecar_command(repository, port, config), port) as server:
        payload = digits_request(size).SerializeToString()
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        with grpc.insecure_channel(server.target, options=options) as channel:
            infer = channel.unary_unary(METHOD, request_serializer=None)
            infer(digits_request(ROW_BYTES).SerializeToString(), timeout=30)
            before = status_kib(server.pid)
            started = time.perf_counter()
            try:
                infer(payload, timeout=120)
                code, details = "OK", ""
            except grpc.RpcError as exc:
                code, details = exc.code().name, exc.details() or ""
            seconds = time.perf_counter() - started
            after = status_kib(server.pid)
            infer(digits_request(ROW_BYTES).SerializeToString(), timeout=30)  # still serving
    return {
        "case": name,
        "request_bytes": len(payload),
        "code": code,
        "details": details,
        "call_seconds": round(seconds, 3),
        "rss_before_mib": round(before["VmRSS"] / 1024, 1),
        "peak_rss_after_mib": round(after["VmHWM"] / 1024, 1),
        "peak_minus_rss_before_mib": round((after["VmHWM"] - before["VmRSS"]) / 1024, 1),
    }


def memory(limit_mib: int, huge_mib: int) -> list[dict[str, Any]]:
    limit = limit_mib * MIB
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "models"
        copy_model("digits", repository, "digits")
        config = Path(tmp) / "sidecar.yaml"
        config.write_text(f"grpc:\n  max_message_bytes: {limit}\n")
        cases = [
            ("just under the limit (parsed)", limit - 64),
            ("refused by the server", limit * 3 // 2),
            ("refused by the server, at most", 2 * limit - 64),
            ("refused by gRPC core", huge_mib * MIB),
        ]
        rows = [memory_case(repository, config, name, size) for name, size in cases]
    return [{"max_message_bytes": limit, **row} for row in rows]


@dataclass(frozen=True)
class _Details:
    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never waits on anything (one ``send``)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the coroutine waited")


def chains(limit: int) -> dict[str, Callable[[bytes], Any]]:
    """The request-reading paths, each a function of the request bytes."""

    async def parsed(request: pb.ModelInferRequest, context: object) -> pb.ModelInferRequest:
        return request

    read = message_reader(pb.ModelInferRequest, METHOD, limit)

    async def raw(request: bytes, context: object) -> pb.ModelInferRequest:
        return read(request)

    guard = CallGuard(None, limit)
    serialize = pb.ModelInferResponse.SerializeToString

    def through_guard(handler: grpc.RpcMethodHandler) -> Callable[[bytes], Any]:
        async def found(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            return handler

        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]
        continuation = found
        wrapped = _run(guard.intercept_service(continuation, _Details(METHOD)))
        behaviour = wrapped.unary_unary
        return lambda data: _run(behaviour(data, None))

    from_string = pb.ModelInferRequest.FromString
    return {
        "FromString alone": from_string,
        "message_reader alone (size check + FromString)": read,
        "guard + generated deserializer (before)": through_guard(
            grpc.unary_unary_rpc_method_handler(parsed, from_string, serialize)
        ),
        "guard + raw bytes + message_reader (now)": through_guard(
            grpc.unary_unary_rpc_method_handler(raw, None, serialize)
        ),
    }


def cpu(repeats: int, calls: int) -> dict[str, dict[str, float]]:
    """Nanoseconds per call of each chain, per request size: medians and fastest of the repeats."""
    sizes = {"batch-1 digits request": ROW_BYTES, "1 MiB request": MIB}
    results: dict[str, dict[str, float]] = {}
    for label, size in sizes.items():
        data = digits_request(size).SerializeToString()
        paths = chains(64 * MIB)
        for path in paths.values():
            assert path(data).model_name == "digits"
        n = calls if size < MIB else max(calls // 100, 100)
        timings: dict[str, list[float]] = {name: [] for name in paths}
        for repeat in range(repeats):
            names = list(paths)
            names = names[repeat % len(names) :] + names[: repeat % len(names)]
            for name in names:
                path = paths[name]
                started = time.perf_counter_ns()
                for _ in range(n):
                    path(data)
                timings[name].append((time.perf_counter_ns() - started) / n)
        for name, values in timings.items():
            results[f"{label} ({len(data)} bytes): {name}"] = {
                "median_ns": round(statistics.median(values), 1),
                "fastest_ns": round(min(values), 1),
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--limit-mib", type=int, nargs="+", default=[4, 64], help="grpc.max_message_bytes, MiB"
    )
    parser.add_argument("--huge-mib", type=int, default=512, help="the request over both limits")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--calls", type=int, default=20000, help="calls per repeat (small)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    payload: dict[str, Any] = {"machine": machine(), "limit_mib": args.limit_mib}
    asyncio.set_event_loop(asyncio.new_event_loop())  # CallGuard is a grpc.aio interceptor
    payload["cpu"] = cpu(args.repeats, args.calls)
    for name, figures in payload["cpu"].items():
        median, fastest = figures["median_ns"], figures["fastest_ns"]
        print(f"{name:<90} {median:>10,.0f} ns (fastest {fastest:,.0f})")
    if not args.skip_memory:
        payload["memory"] = [row for mib in args.limit_mib for row in memory(mib, args.huge_mib)]
        for row in payload["memory"]:
            print(
                f"{row['max_message_bytes'] // MIB:>3} MiB limit  {row['case']:<30} "
                f"{row['request_bytes']:>11,} B  {row['code']:<20} "
                f"{row['call_seconds']:>6.2f} s  RSS {row['rss_before_mib']:>7.1f} MiB → "
                f"peak {row['peak_rss_after_mib']:>7.1f} MiB  ({row['details'][:70]})"
            )
    save(args.out, payload)


if __name__ == "__main__":
    main()
