"""Peer comparison: inference-sidecar vs Seldon MLServer on the same ONNX model.

Both serve the digits model (64→64→10 MLP) over the same KServe v2 gRPC
protocol; MLServer through the minimal custom runtime in
benchmarks/mlserver_onnx_runtime.py. The same client (``sidecar.bench``),
the same concurrency levels, cells alternating server by server with the
order rotating every repeat. MLServer runs in its own virtual environment
(its pins differ from ours):

    python -m venv /tmp/mlserver-venv
    /tmp/mlserver-venv/bin/pip install mlserver==1.7.1 onnxruntime 'uvloop<0.22'
    python -m benchmarks.peers --mlserver /tmp/mlserver-venv/bin/mlserver

(uvloop ≥ 0.22 breaks MLServer 1.7.1's worker processes: ``There is no
current event loop``.) MLServer variants: ``pw0`` = parallel_workers 0 (the
model runs in the server process, its fastest set-up), ``pw1`` =
parallel_workers 1 (its default: one worker process), both with debug off;
``shipped`` = its shipped defaults (debug on, one worker); ``pw0-asyncio``
= pw0 with uvloop hidden (asyncio's own loop); ``pw0-nometrics`` = pw0 with
its metrics endpoint (and per-request Prometheus observations) off.

``--ceiling`` adds the bare grpc.aio echo server of benchmarks/echo_server.py
(no decoding, no model, no monitoring) to the same rounds: its ratio to an
MLServer variant is the most any Python grpc.aio server could reach against
that variant on this machine, with this client sharing its cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.common import (
    DIGITS_ONNX,
    ROOT,
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

VARIANTS: dict[str, dict[str, Any]] = {
    "pw0": {"parallel_workers": 0, "debug": False},
    "pw0-asyncio": {"parallel_workers": 0, "debug": False},
    "pw0-nometrics": {"parallel_workers": 0, "debug": False, "metrics_endpoint": None},
    "pw1": {"parallel_workers": 1, "debug": False},
    "shipped": {},
}
#: Variants run with uvloop hidden (MLServer then keeps asyncio's own event loop).
NO_UVLOOP = {"pw0-asyncio"}


def hide_uvloop(root: Path) -> dict[str, str]:
    """Environment that makes ``import uvloop`` fail, so MLServer uses asyncio's loop."""
    shim = root / "no-uvloop" / "uvloop"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text('raise ImportError("uvloop hidden by benchmarks/peers.py")\n')
    return {"PYTHONPATH": str(shim.parent)}


def mlserver_repository(root: Path, settings: dict[str, Any]) -> tuple[Path, int]:
    """A folder MLServer can start from: settings.json and digits/ with its runtime."""
    port = free_port()
    root.mkdir(parents=True)
    server = {
        "host": "127.0.0.1",
        "grpc_port": port,
        "http_port": free_port(),
        "metrics_port": free_port(),
        "load_models_at_startup": True,
        **settings,
    }
    (root / "settings.json").write_text(json.dumps(server, indent=2))
    model = root / "digits"
    model.mkdir()
    shutil.copy(DIGITS_ONNX, model / "model.onnx")
    shutil.copy(ROOT / "benchmarks" / "mlserver_onnx_runtime.py", model)
    tensor = {"datatype": "FP32", "shape": [-1, 64]}
    (model / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "digits",
                "implementation": "mlserver_onnx_runtime.OnnxModel",
                "parameters": {"uri": "./model.onnx", "version": "1"},
                "inputs": [{"name": "input", **tensor}],
                "outputs": [
                    {"name": "logits", "datatype": "FP32", "shape": [-1, 10]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                ],
            },
            indent=2,
        )
    )
    return root, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mlserver", required=True, help="the mlserver executable")
    parser.add_argument("--variants", default="pw0,pw1", help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument(
        "--ceiling", action="store_true", help="also run the bare grpc.aio echo server ('echo')"
    )
    parser.add_argument("--logs", type=Path, help="folder for the servers' logs")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    levels = parse_concurrency(args.concurrency)
    variants = args.variants.split(",")
    info = machine()
    cells: list[Cell] = []
    names = ["sidecar", *(["echo"] if args.ceiling else []), *(f"mlserver-{v}" for v in variants)]
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        copy_model("digits", tmp / "sidecar", "digits")
        servers = []
        port = free_port()
        log = args.logs / "sidecar.log" if args.logs else None
        servers.append(
            stack.enter_context(
                server_process("sidecar", sidecar_command(tmp / "sidecar", port), port, log=log)
            )
        )
        if args.ceiling:
            port = free_port()
            log = args.logs / "echo.log" if args.logs else None
            servers.append(
                stack.enter_context(
                    server_process("echo", echo_command(port, run_model=False), port, log=log)
                )
            )
        for variant in variants:
            folder, port = mlserver_repository(tmp / f"ml-{variant}", VARIANTS[variant])
            log = args.logs / f"mlserver-{variant}.log" if args.logs else None
            command = [args.mlserver, "start", str(folder)]
            env = hide_uvloop(tmp / f"env-{variant}") if variant in NO_UVLOOP else None
            servers.append(
                stack.enter_context(
                    server_process(
                        f"mlserver-{variant}", command, port, env=env, cwd=folder, log=log
                    )
                )
            )
        cells += run_rounds(
            servers, levels, args.repeats, args.duration, args.warmup, args.batch_size
        )
    print()
    print(
        f"machine: {info['cpu']}, {info['cpus']} CPUs, load {info['load_average_at_start']}, "
        f"{info['date']}"
    )
    print(f"batch size {args.batch_size}; {args.repeats} repeats of {args.duration:g} s per cell")
    print()
    print(
        "| server | concurrency | req/s | sidecar × this | p50 ms | p99 ms | "
        "server CPU µs/req | errors |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    by = group(cells, "server", "concurrency")
    summary = []
    for concurrency in levels:
        ours = by[("sidecar", concurrency)]
        for name in names:
            theirs = by[(name, concurrency)]
            rps = median_of(theirs, "requests_per_second")
            ratios = [
                a.requests_per_second / b.requests_per_second
                for a, b in zip(ours, theirs, strict=True)
                if b.requests_per_second > 0
            ]
            row = {
                "server": name,
                "concurrency": concurrency,
                "requests_per_second": rps,
                "sidecar_ratio": median_of(ours, "requests_per_second") / rps if rps else None,
                "sidecar_ratio_per_repeat": ratios,
                "p50_ms": median_of(theirs, "p50_ms"),
                "p99_ms": median_of(theirs, "p99_ms"),
                "server_cpu_us_per_request": median_of(theirs, "server_cpu_us_per_request"),
                "errors": sum(c.errors for c in theirs),
            }
            summary.append(row)
            ratio = (
                f"{row['sidecar_ratio']:.2f} ({min(ratios):.2f}–{max(ratios):.2f})"
                if ratios
                else "–"
            )
            print(
                f"| {name} | {concurrency} | {rps:,.0f} | {ratio} | {row['p50_ms']:.2f} | "
                f"{row['p99_ms']:.2f} | {row['server_cpu_us_per_request']:.0f} | "
                f"{row['errors']} |"
            )
    ceilings = []
    if args.ceiling:
        print()
        print("The ceiling: the bare echo server ÷ each MLServer variant (per-repeat range).")
        for concurrency in levels:
            echo = by[("echo", concurrency)]
            for variant in variants:
                theirs = by[(f"mlserver-{variant}", concurrency)]
                ratios = [
                    a.requests_per_second / b.requests_per_second
                    for a, b in zip(echo, theirs, strict=True)
                    if b.requests_per_second > 0
                ]
                ceiling = median_of(echo, "requests_per_second") / median_of(
                    theirs, "requests_per_second"
                )
                ceilings.append(
                    {
                        "concurrency": concurrency,
                        "variant": variant,
                        "echo_ratio": ceiling,
                        "echo_ratio_per_repeat": ratios,
                    }
                )
                spread = f" ({min(ratios):.2f}–{max(ratios):.2f})" if ratios else ""
                print(f"- concurrency {concurrency}, {variant}: echo × {ceiling:.2f}{spread}")
    save(
        args.out,
        {
            "machine": info,
            "args": {k: str(v) for k, v in vars(args).items()},
            "summary": summary,
            "ceiling": ceilings,
            "cells": cells_json(cells),
        },
    )


if __name__ == "__main__":
    main()
