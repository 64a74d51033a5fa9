"""Dynamic batching: throughput vs concurrency with batching off and on, and what the delay costs.

One server process serves several copies of two models, differing only in
their ``batching`` section, and the client (``sidecar.bench``) drives one
model at a time, the order rotating every repeat:

- ``digits``: the bundled 64→64→10 MLP (~6 µs per call: the request path is
  everything, batching can only add work);
- ``mlp``: a generated 256→2048→2048→10 MLP, 19 MB of weights (a few ms per
  call at batch 1 and barely more at batch 8: reading the weights is the
  cost, the kind of model batching is for).

Batching on means ``max_batch_size: 64`` and the defaults otherwise (no queue
delay, one batch at a time: requests gather while a batch runs). The delay
sweep (0, 500, 2000 µs) runs on ``digits`` at concurrency 1, where each lone
request waits the whole delay, and 16.

    python -m benchmarks.batching --duration 4 --repeats 3 --out results.json
"""

from __future__ import annotations

import argparse
import tempfile
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from benchmarks.common import (
    Cell,
    cells_json,
    copy_model,
    free_port,
    group,
    machine,
    measure,
    median_of,
    rotate,
    save,
    server_process,
    sidecar_command,
)
from sidecar.bench import parse_concurrency

BATCHING = "batching:\n  enabled: true\n  max_batch_size: 64\n  max_queue_delay_us: {delay}\n"


def write_mlp(path: Path, width: int = 2048, depth: int = 2, inputs: int = 256) -> None:
    """A seeded random MLP as ONNX: input FP32[-1, inputs] → probabilities FP32[-1, 10]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    dims = [inputs, *([width] * depth), 10]
    nodes, weights, previous = [], [], "input"
    for i in range(len(dims) - 1):
        w = (rng.standard_normal((dims[i], dims[i + 1])) / np.sqrt(dims[i])).astype(np.float32)
        weights += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(np.zeros(dims[i + 1], np.float32), f"b{i}"),
        ]
        nodes.append(helper.make_node("Gemm", [previous, f"w{i}", f"b{i}"], [f"h{i}"]))
        previous = f"h{i}"
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [previous], [f"r{i}"]))
            previous = f"r{i}"
    nodes.append(helper.make_node("Softmax", [previous], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", inputs])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True)
    onnx.save(model, str(path))


def repository(root: Path) -> None:
    """digits and mlp, each unbatched and batched; digits with three queue delays."""
    copy_model("digits", root, "digits", "{}\n")
    for delay in (0, 500, 2000):
        copy_model("digits", root, f"digits_b{delay}", BATCHING.format(delay=delay))
    write_mlp(root / "mlp" / "1" / "model.onnx")
    (root / "mlp" / "config.yaml").write_text("{}\n")
    write_mlp(root / "mlp_b0" / "1" / "model.onnx")
    (root / "mlp_b0" / "config.yaml").write_text(BATCHING.format(delay=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--delay-concurrency", default="1,16")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    levels = parse_concurrency(args.concurrency)
    delay_levels = parse_concurrency(args.delay_concurrency)
    info = machine()
    sweep = [(model, c) for c in levels for model in ("digits", "digits_b0", "mlp", "mlp_b0")]
    delays = [
        (model, c)
        for c in delay_levels
        for model in ("digits", "digits_b0", "digits_b500", "digits_b2000")
        if (model, c) not in sweep
    ]
    cells: list[Cell] = []
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "models"
        repository(root)
        port = free_port()
        server = stack.enter_context(server_process("sidecar", sidecar_command(root, port), port))
        plan = sweep + delays
        for repeat in range(args.repeats):
            for model, concurrency in rotate(plan, repeat * 3):
                cell = measure(
                    server, concurrency, args.duration, args.warmup, model=model, label=model
                )
                cell.repeat = repeat
                cells.append(cell)
                print(
                    f"  repeat {repeat} {model:12} c={concurrency:<3} "
                    f"{cell.requests_per_second:8.1f} req/s  p50 {cell.p50_ms:6.2f} ms  "
                    f"p99 {cell.p99_ms:6.2f} ms  errors {cell.errors}",
                    flush=True,
                )
    by = group(cells, "server", "concurrency")

    def med(model: str, c: int, attribute: str) -> float:
        return median_of(by[(model, c)], attribute)

    print()
    print(
        f"machine: {info['cpu']}, {info['cpus']} CPUs, load {info['load_average_at_start']}, "
        f"{info['date']}; {args.repeats} repeats of {args.duration:g} s per cell"
    )
    print()
    print(
        "| model | concurrency | off req/s | on req/s | on ÷ off | off p50 ms | on p50 ms "
        "| off p99 ms | on p99 ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    summary = []
    for base in ("digits", "mlp"):
        for c in levels:
            off = med(base, c, "requests_per_second")
            on = med(f"{base}_b0", c, "requests_per_second")
            row = {
                "model": base,
                "concurrency": c,
                "off_requests_per_second": off,
                "on_requests_per_second": on,
                "ratio": on / off,
                "off_p50_ms": med(base, c, "p50_ms"),
                "on_p50_ms": med(f"{base}_b0", c, "p50_ms"),
                "off_p99_ms": med(base, c, "p99_ms"),
                "on_p99_ms": med(f"{base}_b0", c, "p99_ms"),
            }
            summary.append(row)
            print(
                f"| {base} | {c} | {off:,.0f} | {on:,.0f} | {on / off:.2f} | "
                f"{row['off_p50_ms']:.2f} | {row['on_p50_ms']:.2f} | "
                f"{row['off_p99_ms']:.2f} | {row['on_p99_ms']:.2f} |"
            )
    print()
    print("| queue delay µs | concurrency | req/s | p50 ms | p99 ms | p50 − unbatched p50 ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    delay_rows = []
    for c in delay_levels:
        for delay in (0, 500, 2000):
            model = f"digits_b{delay}"
            p50 = med(model, c, "p50_ms")
            unbatched = med("digits", c, "p50_ms")
            row = {
                "delay_us": delay,
                "concurrency": c,
                "requests_per_second": med(model, c, "requests_per_second"),
                "p50_ms": p50,
                "p99_ms": med(model, c, "p99_ms"),
                "p50_minus_unbatched_ms": p50 - unbatched,
            }
            delay_rows.append(row)
            print(
                f"| {delay} | {c} | {row['requests_per_second']:,.0f} | {p50:.2f} | "
                f"{row['p99_ms']:.2f} | {row['p50_minus_unbatched_ms']:+.2f} |"
            )
    save(
        args.out,
        {
            "machine": info,
            "args": {k: str(v) for k, v in vars(args).items()},
            "summary": summary,
            "delays": delay_rows,
            "cells": cells_json(cells),
        },
    )


if __name__ == "__main__":
    main()
