"""Monitoring overhead: the same server and model with monitoring on versus off.

Two ``inference-sidecar serve`` processes serve the digits model:

- on: the default server configuration (``metrics.enabled: true``) and the
  model's shipped ``config.yaml`` (classification monitoring, and whatever
  else the bundled example turns on in this build: drift, labels, ...);
- off: every server section with an ``enabled`` switch turned off (``metrics``,
  ``labels``, ... whatever this build has) and the model's ``config.yaml``
  without its ``monitoring`` section.

The script does not assume which monitoring parts exist: after the run it
scrapes the "on" server's ``/metrics`` and lists its gRPC services, and says
which parts were really active (metric families by group, FeedbackService for
delayed labels). Cells alternate on/off, the order rotating every repeat; the
headline is the median of the per-repeat ratios on ÷ off, next to server CPU
per request (the steadier figure on a shared machine).

Targets (issue 5): throughput on ≥ 0.95 × off, p99 on ≤ 1.10 × off.

    python -m benchmarks.monitoring_overhead --duration 5 --repeats 5 --out results.json

``--threads N`` measures where the extra CPU goes instead: each repeat sends
exactly N requests to each server (concurrency: ``--concurrency``) and
charges every server thread its CPU time (``/proc/PID/task/*/schedstat``;
the servers run under ``benchmarks.named_threads`` so that ``/proc`` shows
Python thread names), then prints the median µs per request of each group of
threads, on and off. CPU time counts work, not speed, so this is the figure
to compare builds by on a busy machine:

    python -m benchmarks.monitoring_overhead --threads 6000 --concurrency 16 --repeats 5
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import yaml

from benchmarks.common import (
    EXAMPLES,
    Cell,
    Server,
    ThreadCell,
    cells_json,
    copy_model,
    fixed_rate_cpu,
    free_port,
    group,
    machine,
    measure,
    median_of,
    rotate,
    save,
    server_process,
    sidecar_command,
    thread_cpu,
)
from sidecar.bench import parse_concurrency

#: Metric name prefixes (after ``sidecar_``) → the monitoring part they belong to.
GROUPS = {
    "serving": ("inference_", "request_", "queue_", "compute_", "batch_", "inflight", "rejected"),
    "models": ("model_",),
    "labels": (
        "labels_", "labeled_", "confusion_", "class_outcomes", "label_", "pending_",
        "predictions_expired", "prediction_store",
    ),
    "outputs": ("predictions_", "prediction_", "output_", "nonfinite_"),
    "drift": ("drift_",),
    "gpu": ("gpu_", "torch_cuda"),
}  # fmt: skip


def scrape(port: int) -> str | None:
    """The text of /metrics, or None when nothing answers there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, OSError):
        return None


def families(text: str) -> dict[str, list[str]]:
    """sidecar_* metric families in an exposition, by monitoring part."""
    names = sorted(
        {
            line.split()[2].removeprefix("sidecar_")
            for line in text.splitlines()
            if line.startswith("# TYPE sidecar_")
        }
    )
    out: dict[str, list[str]] = {}
    for name in names:
        part = next((g for g, prefixes in GROUPS.items() if name.startswith(prefixes)), "other")
        out.setdefault(part, []).append(name)
    return out


def services(target: str) -> list[str]:
    """gRPC services the server lists through reflection."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        for response in stub.ServerReflectionInfo(iter([request]), timeout=10):
            return sorted(s.name for s in response.list_services_response.service)
    return []


def switchable() -> list[str]:
    """Server config sections with an ``enabled`` switch (metrics, labels, ... in this build)."""
    from pydantic import BaseModel

    from sidecar.config import ServerConfig

    sections = {name: info.annotation for name, info in ServerConfig.model_fields.items()}
    return [
        name
        for name, kind in sections.items()
        if isinstance(kind, type) and issubclass(kind, BaseModel) and "enabled" in kind.model_fields
    ]


def configs(root: Path) -> tuple[Path, Path, Path, Path]:
    """Repositories and server configs for on (as shipped) and off (every switch off)."""
    shipped = yaml.safe_load((EXAMPLES / "digits" / "config.yaml").read_text()) or {}
    without = {k: v for k, v in shipped.items() if k != "monitoring"}
    copy_model("digits", root / "on", "digits")
    copy_model("digits", root / "off", "digits", yaml.safe_dump(without) if without else "{}\n")
    on_yaml, off_yaml = root / "on.yaml", root / "off.yaml"
    on_yaml.write_text("{}\n")
    off_yaml.write_text(yaml.safe_dump({name: {"enabled": False} for name in switchable()}))
    return root / "on", on_yaml, root / "off", off_yaml


def sidecar(root: Path, config: Path) -> tuple[list[str], int, int]:
    """``inference-sidecar serve`` with its threads named in /proc (nothing else changes)."""
    port, metrics_port = free_port(), free_port()
    command = sidecar_command(root, port, config)
    index = command.index("--metrics-port")
    command[index + 1] = str(metrics_port)
    module = command.index("-m")
    command[module : module + 2] = ["-m", "benchmarks.named_threads", "sidecar.cli"]
    assert command[0] == sys.executable
    return command, port, metrics_port


#: Thread name patterns (``/proc`` names, 15 bytes at most) → the group reported.
THREAD_GROUPS: tuple[tuple[str, str], ...] = (
    (r"MainThread", "event loop (gRPC handlers, decode, model, encode, listeners)"),
    (r"Thread-\d+ \(_poll.*|event_engine|grpc_global_tim|lifeguard", "gRPC poller and C threads"),
    (r"model-.*", "model executor threads"),
    (r"native", "onnxruntime threads"),
    (r"drift-worker", "drift worker"),
    (r"output-metrics", "output analysis"),
    (r"label-store", "label-store writer"),
    (r"metrics-http", "/metrics endpoint"),
    (r"asyncio_\d+", "asyncio.to_thread"),
)


def thread_group(key: str) -> str:
    """The group of a ``comm/tid`` key of ``thread_cpu``."""
    name = key.rsplit("/", 1)[0]
    return next((g for pattern, g in THREAD_GROUPS if re.fullmatch(pattern, name)), name)


def grouped(cell: ThreadCell) -> dict[str, float]:
    """µs per request by thread group, plus the process total and threads that ended."""
    out: dict[str, float] = {}
    for key, us in cell.threads_us.items():
        out[thread_group(key)] = out.get(thread_group(key), 0.0) + us
    out["threads that ended meanwhile"] = cell.process_us - sum(cell.threads_us.values())
    out["total (process)"] = cell.process_us
    return out


def per_thread(args: argparse.Namespace, on: Server, off: Server, levels: list[int]) -> None:
    """The ``--threads`` mode: per-thread CPU per request, on versus off."""
    cells: list[ThreadCell] = []
    rate = args.threads_rate
    if rate is not None:
        levels = [0]  # open loop
    for repeat in range(args.repeats):
        for concurrency in levels:
            for server in rotate([on, off], repeat):
                cell = thread_cpu(
                    server, concurrency, args.threads, args.warmup, repeat, args.data, rate
                )
                cells.append(cell)
                print(
                    f"  repeat {repeat} c={concurrency} {server.name:3} {cell.requests} requests "
                    f"{cell.requests_per_second:7.1f} req/s  server {cell.process_us:6.0f} µs/req",
                    flush=True,
                )
    info = machine()
    print()
    print(
        f"machine: {info['cpu']}, {info['cpus']} CPUs, load at the end "
        f"{info['load_average_at_start']}, {info['date']}; {args.repeats} repeats of "
        f"{args.threads} requests per cell"
    )
    summary = []
    for c in levels:
        tables = {
            name: [grouped(x) for x in cells if x.server == name and x.concurrency == c]
            for name in ("on", "off")
        }
        names = sorted(
            {g for rows in tables.values() for row in rows for g in row},
            key=lambda g: (g.startswith(("threads that", "total")), g.startswith("total"), g),
        )
        load = f"concurrency {c}" if c else f"open loop at {rate:g} requests/s"
        print()
        print(f"{load}: server CPU µs per request, median of {args.repeats} (range)")
        print()
        print("| thread | off µs/req | on µs/req | on − off |")
        print("|---|---:|---:|---:|")
        for g in names:
            medians = {}
            for name, rows in tables.items():
                values = [row.get(g, 0.0) for row in rows]
                medians[name] = (statistics.median(values), min(values), max(values))
            off_m, on_m = medians["off"][0], medians["on"][0]
            print(
                f"| {g} | {off_m:.1f} ({medians['off'][1]:.0f}–{medians['off'][2]:.0f}) "
                f"| {on_m:.1f} ({medians['on'][1]:.0f}–{medians['on'][2]:.0f}) "
                f"| {on_m - off_m:+.1f} |"
            )
            summary.append({"concurrency": c, "thread": g, "off_us": off_m, "on_us": on_m})
    save(
        args.out,
        {
            "machine": info,
            "args": {k: str(v) for k, v in vars(args).items()},
            "summary": summary,
            "cells": [vars(x) for x in cells],
        },
    )


def describe(server: Server, metrics_port: int) -> dict[str, Any]:
    text = scrape(metrics_port)
    return {
        "metrics_endpoint": text is not None,
        "families": families(text) if text else {},
        "services": services(server.target),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--rate", type=float, default=300, help="requests/s of the CPU cells")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--threads",
        type=int,
        metavar="REQUESTS",
        help="instead: CPU per request of each server thread over this many requests per cell",
    )
    parser.add_argument(
        "--threads-rate",
        type=float,
        metavar="RATE",
        help="--threads: send at this many requests/s (open loop) instead of --concurrency",
    )
    parser.add_argument(
        "--data", type=Path, help="--threads: input rows (.npy) to send instead of random ones"
    )
    args = parser.parse_args()
    levels = parse_concurrency(args.concurrency)
    info = machine()
    cells: list[Cell] = []
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        on_repo, on_yaml, off_repo, off_yaml = configs(root)
        on_cmd, on_port, on_metrics = sidecar(on_repo, on_yaml)
        off_cmd, off_port, off_metrics = sidecar(off_repo, off_yaml)
        on = stack.enter_context(server_process("on", on_cmd, on_port))
        off = stack.enter_context(server_process("off", off_cmd, off_port))
        if args.threads:
            per_thread(args, on, off, levels)
            return
        for repeat in range(args.repeats):
            for concurrency in levels:
                for server in rotate([on, off], repeat):
                    cell = measure(server, concurrency, args.duration, args.warmup, repeat=repeat)
                    cells.append(cell)
                    print(
                        f"  repeat {repeat} c={concurrency} {server.name:3} "
                        f"{cell.requests_per_second:8.1f} req/s  p99 {cell.p99_ms:6.2f} ms  "
                        f"server {cell.server_cpu_us_per_request:6.0f} µs/req",
                        flush=True,
                    )
        fixed: dict[str, list[float]] = {"on": [], "off": []}
        for repeat in range(args.repeats):
            for server in rotate([on, off], repeat):
                cpu = fixed_rate_cpu(server, args.rate, args.duration)
                fixed[server.name].append(cpu)
                print(f"  repeat {repeat} {args.rate:g} req/s {server.name:3} {cpu:6.0f} µs/req")
        active = describe(on, on_metrics)
        inactive = describe(off, off_metrics)
    print()
    print(
        f"machine: {info['cpu']}, {info['cpus']} CPUs, load {info['load_average_at_start']}, "
        f"{info['date']}; {args.repeats} repeats of {args.duration:g} s per cell"
    )
    if not active["metrics_endpoint"]:
        print("monitoring on: NO /metrics endpoint answered: this build has no exporters wired,")
        print("so 'on' and 'off' differ only in configuration; the ratio shows noise only.")
    else:
        parts = ", ".join(f"{g} ({len(n)} families)" for g, n in active["families"].items())
        print(f"monitoring on: /metrics answered with sidecar_* families for: {parts}")
    feedback = [s for s in active["services"] if "Feedback" in s]
    print(f"delayed-label store: {'FeedbackService ' + feedback[0] if feedback else 'absent'}")
    print(
        f"monitoring off: {', '.join(f'{n}.enabled: false' for n in switchable())}, no model "
        f"monitoring section; /metrics answered: {inactive['metrics_endpoint']}"
    )
    print()
    print(
        "| concurrency | on req/s | off req/s | on ÷ off (range) | on p99 ms | off p99 ms "
        "| p99 on ÷ off | CPU µs/req on | off |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    by = group(cells, "server", "concurrency")
    summary = []
    for c in levels:
        ons, offs = by[("on", c)], by[("off", c)]
        pairs = list(zip(ons, offs, strict=True))  # same repeat: measured minutes apart at most
        ratios = [a.requests_per_second / b.requests_per_second for a, b in pairs]
        p99s = [a.p99_ms / b.p99_ms for a, b in pairs]
        row = {
            "concurrency": c,
            "on_requests_per_second": median_of(ons, "requests_per_second"),
            "off_requests_per_second": median_of(offs, "requests_per_second"),
            "throughput_ratio": statistics.median(ratios),
            "throughput_ratios": ratios,
            "on_p99_ms": median_of(ons, "p99_ms"),
            "off_p99_ms": median_of(offs, "p99_ms"),
            "p99_ratio": statistics.median(p99s),
            "p99_ratios": p99s,
            "on_cpu_us": median_of(ons, "server_cpu_us_per_request"),
            "off_cpu_us": median_of(offs, "server_cpu_us_per_request"),
        }
        summary.append(row)
        print(
            f"| {c} | {row['on_requests_per_second']:,.0f} | {row['off_requests_per_second']:,.0f} "
            f"| {row['throughput_ratio']:.3f} ({min(ratios):.2f}–{max(ratios):.2f}) "
            f"| {row['on_p99_ms']:.2f} | {row['off_p99_ms']:.2f} | {row['p99_ratio']:.2f} "
            f"| {row['on_cpu_us']:.0f} | {row['off_cpu_us']:.0f} |"
        )
    cpu_on, cpu_off = statistics.median(fixed["on"]), statistics.median(fixed["off"])
    cpu_ratios = [a / b for a, b in zip(fixed["on"], fixed["off"], strict=True)]
    print()
    print(
        f"At a fixed {args.rate:g} requests/s (open loop): server CPU {cpu_on:.0f} µs/request on, "
        f"{cpu_off:.0f} off: on ÷ off {statistics.median(cpu_ratios):.3f} "
        f"({min(cpu_ratios):.2f}–{max(cpu_ratios):.2f}), monitoring costs "
        f"{cpu_on - cpu_off:+.0f} µs/request"
    )
    save(
        args.out,
        {
            "machine": info,
            "args": {k: str(v) for k, v in vars(args).items()},
            "fixed_rate_cpu_us": fixed,
            "monitoring_on": active,
            "monitoring_off": inactive,
            "summary": summary,
            "cells": cells_json(cells),
        },
    )


if __name__ == "__main__":
    main()
