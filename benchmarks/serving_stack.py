"""Serving-stack efficiency: our server vs a bare grpc.aio echo server vs onnxruntime in-process.

One run, one machine, the same client (``sidecar.bench``) for every server:

- ``echo``: benchmarks/echo_server.py, answers with zeros of the model's
  output sizes (the ceiling for a Python grpc.aio server);
- ``minimal``: the same server running the ONNX model inline (the least a
  real grpc.aio model server can do);
- ``sidecar``: ``inference-sidecar serve`` with the digits model and its
  default configuration (whatever monitoring main wires by default);
- ``sidecar-bare`` (on request): the same with metrics off and no
  ``monitoring`` section, to split the request path's cost from monitoring's;
- onnxruntime called in this process at the same batch size (no server).

Cells alternate server by server, the order rotating every repeat; medians
of the repeats and ratios to the echo server are printed as Markdown.

    python -m benchmarks.serving_stack --duration 5 --repeats 3 --out results.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from benchmarks.common import (
    DIGITS_ONNX,
    Cell,
    cells_json,
    copy_model,
    echo_command,
    free_port,
    group,
    machine,
    median_of,
    run_rounds,
    save,
    server_process,
    sidecar_command,
)
from sidecar.bench import parse_concurrency


def onnxruntime_rows_per_second(batch_size: int, seconds: float = 2.0) -> tuple[float, float]:
    """(rows/s, µs per call) of session.run on the digits model at ``batch_size``, in-process."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(DIGITS_ONNX), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(batch_size, 64)).astype(np.float32)
    for _ in range(100):
        session.run(None, {"input": x})
    calls = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(100):
            session.run(None, {"input": x})
        calls += 100
    return calls * batch_size / elapsed, elapsed / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--servers", default="echo,minimal,sidecar")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    levels = parse_concurrency(args.concurrency)
    wanted = args.servers.split(",")
    info = machine()
    cells: list[Cell] = []
    with ExitStack() as stack:
        repo = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "models"
        copy_model("digits", repo, "digits")
        bare = repo.parent / "bare"
        copy_model("digits", bare, "digits", "{}\n")
        bare_config = repo.parent / "bare.yaml"
        bare_config.write_text("metrics:\n  enabled: false\n")
        servers = []
        commands = {
            "echo": lambda port: echo_command(port, run_model=False),
            "minimal": lambda port: echo_command(port, run_model=True),
            "sidecar": lambda port: sidecar_command(repo, port),
            "sidecar-bare": lambda port: sidecar_command(bare, port, bare_config),
        }
        for name in wanted:
            port = free_port()
            servers.append(stack.enter_context(server_process(name, commands[name](port), port)))
        cells += run_rounds(
            servers, levels, args.repeats, args.duration, args.warmup, args.batch_size
        )
    ort_rows, ort_us = onnxruntime_rows_per_second(args.batch_size)
    print()
    print(
        f"machine: {info['cpu']}, {info['cpus']} CPUs, load {info['load_average_at_start']}, "
        f"{info['date']}"
    )
    print(f"batch size {args.batch_size}; {args.repeats} repeats of {args.duration:g} s per cell")
    print()
    print("| server | concurrency | req/s | × echo | p50 ms | p99 ms | server CPU µs/req |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    by = group(cells, "server", "concurrency")
    summary = []
    for concurrency in levels:
        echo = by.get(("echo", concurrency))
        base = median_of(echo, "requests_per_second") if echo else float("nan")
        for name in wanted:
            mine = by[(name, concurrency)]
            rps = median_of(mine, "requests_per_second")
            # The ratio of medians, and the spread of per-repeat ratios (same repeat, same time).
            ratios = [
                a.requests_per_second / b.requests_per_second
                for a, b in zip(mine, echo or mine, strict=True)
            ]
            row = {
                "server": name,
                "concurrency": concurrency,
                "requests_per_second": rps,
                "ratio_to_echo": rps / base,
                "ratio_per_repeat": ratios,
                "p50_ms": median_of(mine, "p50_ms"),
                "p99_ms": median_of(mine, "p99_ms"),
                "server_cpu_us_per_request": median_of(mine, "server_cpu_us_per_request"),
            }
            summary.append(row)
            print(
                f"| {name} | {concurrency} | {rps:,.0f} | {rps / base:.2f} "
                f"({min(ratios):.2f}–{max(ratios):.2f}) | {row['p50_ms']:.2f} | "
                f"{row['p99_ms']:.2f} | {row['server_cpu_us_per_request']:.0f} |"
            )
    print()
    print(
        f"onnxruntime in-process, batch {args.batch_size}: {ort_rows:,.0f} rows/s "
        f"({ort_us:.1f} µs per call)"
    )
    for row in summary:
        if row["server"] == "sidecar":
            rows_s = row["requests_per_second"] * args.batch_size
            print(
                f"sidecar at c={row['concurrency']}: {rows_s / ort_rows:.3f} × onnxruntime "
                f"in-process rows/s"
            )
    save(
        args.out,
        {
            "machine": info,
            "args": vars(args) | {"out": str(args.out)},
            "onnxruntime_in_process": {"rows_per_second": ort_rows, "us_per_call": ort_us},
            "summary": summary,
            "cells": cells_json(cells),
            "median_load": statistics.median([info["load_average_at_start"][0]]),
        },
    )


if __name__ == "__main__":
    main()
