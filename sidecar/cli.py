"""The ``inference-sidecar`` command: serve, validate, and the tools around them.

Each subcommand lives in a function here (or a module it imports lazily), so
``inference-sidecar --help`` starts fast and needs no model backend.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sidecar import __version__
from sidecar.errors import SidecarError

if TYPE_CHECKING:
    from sidecar.models import ServedModel

log = logging.getLogger("sidecar")

Command = Callable[[argparse.Namespace], int]


def _serve(args: argparse.Namespace) -> int:
    from sidecar.app import build_server
    from sidecar.config import load_server_config
    from sidecar.logs import configure_logging

    config = load_server_config(args.config)
    updates: dict[str, object] = {}
    if args.model_repository is not None:
        updates["model_repository"] = args.model_repository
    if args.device is not None:
        updates["device"] = args.device
    if args.grpc_port is not None:
        updates["grpc"] = config.grpc.model_copy(update={"port": args.grpc_port})
    if args.metrics_port is not None:
        updates["metrics"] = config.metrics.model_copy(update={"port": args.metrics_port})
    if updates:
        config = config.model_validate({**config.model_dump(by_alias=True), **{
            k: (v.model_dump(by_alias=True) if hasattr(v, "model_dump") else v)
            for k, v in updates.items()
        }})  # fmt: skip
    configure_logging(config.logging)
    server = build_server(config)
    asyncio.run(server.serve_until_signal())
    return 0


def _validate(args: argparse.Namespace) -> int:
    from sidecar.app import build_server
    from sidecar.config import ServerConfig, load_server_config

    config = load_server_config(args.config) if args.config else ServerConfig()
    if args.repository is not None:
        config = config.model_copy(update={"model_repository": args.repository})
    server = build_server(config)
    models = server.plane.models

    lines: list[str] = []

    async def load() -> None:
        await models.load_all()
        for model in models.models:
            if model.ready:
                lines.append(_describe(model))
        await models.unload_all()

    asyncio.run(load())
    for line in lines:
        print(line)
    for (name, version), error in sorted(models.failures.items()):
        print(f"FAILED {name}{' v' + version if version else ''}: {error}")
    return 1 if models.failures else 0


def _bench(args: argparse.Namespace) -> int:
    import signal

    from sidecar import bench

    options = bench.BenchOptions(
        target=args.target,
        model=args.model,
        version=args.model_version,
        concurrency=bench.parse_concurrency(args.concurrency),
        duration=None if args.requests is not None else args.duration,
        requests=args.requests,
        warmup=args.warmup,
        batch_size=args.batch_size,
        data=None if args.input_data == "random" else Path(args.input_data),
        shapes=dict(bench.parse_shape(s) for s in args.shape),
        contents=args.contents,
        streaming=args.streaming,
        timeout=args.timeout,
        connect_timeout=args.connect_timeout,
        seed=args.seed,
    )
    progress = bench.progress_for(args.progress, options)

    async def run() -> bench.BenchReport:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def interrupted() -> None:
            stop.set()
            loop.remove_signal_handler(signal.SIGINT)  # a second Ctrl-C ends it at once

        loop.add_signal_handler(signal.SIGINT, interrupted)
        try:
            return await bench.run_bench(options, stop, progress)
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    report = asyncio.run(run())
    print(bench.report_json(report) if args.json else bench.format_report(report))
    if report.interrupted:
        return 130
    return 1 if report.stopped else 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _labels_send(args: argparse.Namespace) -> int:
    from sidecar.labels.client import Credentials, send_file

    credentials = Credentials.from_files(
        args.token_file, args.ca_file, args.cert_file, args.key_file
    )
    report = send_file(
        args.file,
        args.address,
        batch_size=args.batch_size,
        timeout=args.timeout,
        problems=sys.stderr,
        credentials=credentials,
    )
    print(f"{args.file}: {report.summary()}")
    return 0 if report.all_matched else 1


def _convert(args: argparse.Namespace) -> int:
    from sidecar.insight.convert import DEFAULT_OPSET, convert

    result = convert(
        args.source, args.output, int8_output=args.int8, opset=args.opset or DEFAULT_OPSET
    )
    print(
        f"wrote {result.output} ({result.size_bytes:,} bytes); "
        f"max |onnx - torch| on an example batch: {result.max_abs_diff:.3g}"
    )
    if result.int8_output is not None:
        print(
            f"wrote {result.int8_output} ({result.int8_size_bytes:,} bytes, int8 weights); "
            f"max |int8 - torch| on an example batch: {result.int8_max_abs_diff:.3g}"
        )
    print(f"check it: inference-sidecar compare {args.source} {result.output} --data FILE")
    return 0


def _compare(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from sidecar.insight.compare import compare

    report = compare(
        args.a, args.b, args.data, args.labels, batch_size=args.batch_size, device=args.device
    )
    if args.json:
        print(json.dumps(dataclasses.asdict(report), default=str, indent=2))
    else:
        print(report.render())
    return 0


def _drift(args: argparse.Namespace) -> int:
    from sidecar.drift.cli import run

    return run(args)


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _describe(model: ServedModel) -> str:
    sig = model.signature
    ins = ", ".join(f"{s.name} {s.describe()}" for s in sig.inputs)
    outs = ", ".join(f"{s.name} {s.describe()}" for s in sig.outputs)
    return f"ok     {model.name} v{model.version} ({sig.platform}): {ins} -> {outs}"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="inference-sidecar",
        description="A KServe v2 gRPC model server that monitors its models for Prometheus.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve a model repository over gRPC")
    serve.add_argument("--model-repository", type=Path, help="default: the bundled examples")
    serve.add_argument("--config", type=Path, help="sidecar.yaml (SIDECAR_* env overrides it)")
    serve.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    serve.add_argument("--grpc-port", type=int, help="default 8001 (0 = any free port)")
    serve.add_argument("--metrics-port", type=int, help="default 8002 (0 = any free port)")
    serve.set_defaults(func=_serve)

    validate = sub.add_parser("validate", help="load every model of a repository, then exit")
    validate.add_argument("repository", type=Path, nargs="?", help="default: bundled examples")
    validate.add_argument("--config", type=Path, help="sidecar.yaml")
    validate.set_defaults(func=_validate)

    bench = sub.add_parser(
        "bench",
        help="closed-loop load generator for a KServe v2 gRPC server (like perf_analyzer)",
        description="Keep N requests in flight against a KServe v2 gRPC server and report "
        "throughput, latency percentiles and errors by status code. Ctrl-C stops early and "
        "prints what was measured.",
    )
    bench.add_argument("-u", "--target", default="localhost:8001", help="host:port")
    bench.add_argument("-m", "--model", required=True, help="model name")
    bench.add_argument("-x", "--model-version", default="", help="default: the server's choice")
    bench.add_argument(
        "-c",
        "--concurrency",
        default="1",
        help="requests in flight: N, a list 1,4,16, or a range start:end[:step] (default 1)",
    )
    length = bench.add_mutually_exclusive_group()
    length.add_argument(
        "-d", "--duration", type=float, default=10.0, help="seconds per level (default 10)"
    )
    length.add_argument("-n", "--requests", type=int, help="requests per level instead")
    bench.add_argument(
        "--warmup", type=float, default=1.0, help="uncounted seconds before each level (default 1)"
    )
    bench.add_argument(
        "-b", "--batch-size", type=int, default=1, help="rows per request (default 1)"
    )
    bench.add_argument(
        "--input-data",
        default="random",
        help="'random' (of the model's shapes) or a .npy (one input) / .npz (by input name)",
    )
    bench.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="NAME:D1,D2",
        help="full shape of an input with dynamic dimensions (repeatable)",
    )
    bench.add_argument("--contents", choices=["raw", "typed"], default="raw")
    bench.add_argument("--streaming", action="store_true", help="use ModelStreamInfer")
    bench.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per request (default 30)"
    )
    bench.add_argument(
        "--connect-timeout", type=float, default=5.0, help="seconds to reach the server (default 5)"
    )
    bench.add_argument("--seed", type=int, default=0, help="seed of the random input data")
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bench.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    bench.set_defaults(func=_bench)

    labels = sub.add_parser("labels", help="delayed ground-truth labels")
    labels_sub = labels.add_subparsers(dest="labels_command", required=True)
    send = labels_sub.add_parser(
        "send",
        help="send labels from a CSV file (columns: request_id, model, [row], and "
        "class_name, class_index or value); exit 1 when any is not matched",
    )
    send.add_argument("file", type=Path, help="CSV file with a header row")
    send.add_argument("--address", default="localhost:8001", help="server host:port")
    send.add_argument(
        "--batch-size", type=_positive_int, default=1000, help="labels per SendLabels call"
    )
    send.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    send.add_argument("--token-file", type=Path, help="bearer token (first line), guarded writes")
    send.add_argument("--ca-file", type=Path, help="PEM CA of the server: connect with TLS")
    send.add_argument("--cert-file", type=Path, help="PEM client certificate (mutual TLS)")
    send.add_argument("--key-file", type=Path, help="PEM key of --cert-file")
    send.set_defaults(func=_labels_send)

    conv = sub.add_parser(
        "convert", help="export a TorchScript / torch.export model to ONNX (optionally int8)"
    )
    conv.add_argument(
        "source", type=Path, help="model.pt (TorchScript) or model.pt2 (torch.export)"
    )
    conv.add_argument(
        "output", type=Path, help="the ONNX file to write, e.g. models/m/2/model.onnx"
    )
    conv.add_argument("--int8", type=Path, help="also write a dynamically quantised int8 ONNX here")
    conv.add_argument("--opset", type=int, help="ONNX opset (default 18)")
    conv.set_defaults(func=_convert)

    comp = sub.add_parser("compare", help="run two models on the same data and report differences")
    comp.add_argument("a", type=Path, help="model file (or version directory) A")
    comp.add_argument("b", type=Path, help="model file (or version directory) B")
    comp.add_argument("--data", type=Path, required=True, help="input rows (.npy, .npz, .csv)")
    comp.add_argument("--labels", type=Path, help="true class indices or values, one per row")
    comp.add_argument("--batch-size", type=_positive_int, default=256, help="rows per model call")
    comp.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    comp.add_argument("--json", action="store_true", help="print the report as JSON")
    comp.set_defaults(func=_compare)

    drift = sub.add_parser(
        "drift",
        help="test a data set for drift against a reference, offline, as the server does "
        "(exit 0: no drift, 1: drift, 2: error)",
        description="Test CURRENT against REFERENCE with the server's drift tests "
        "(docs/drift-monitoring.md). Files: .npy, .npz keyed by name, or .csv with an optional "
        "header; the same layout in both. Every element of a row is a feature. Exit status: "
        "0 no drift, 1 drift, 2 the files could not be compared.",
    )
    drift.add_argument("reference", type=Path, help="reference rows: .npy, .npz or .csv")
    drift.add_argument("current", type=Path, help="rows to test (one window), same layout")
    drift.add_argument("--json", action="store_true", help="print the whole result as JSON")
    drift.add_argument("--alpha", type=_fraction, default=0.05, help="default 0.05")
    drift.add_argument(
        "--correction", choices=("bh", "bonferroni"), default="bh", help="default bh"
    )
    drift.add_argument(
        "--tests",
        nargs="+",
        choices=("welch", "brown_forsythe", "chi2", "ks", "cvm"),
        help="tests of continuous features (default: the measured default, docs/drift.md)",
    )
    drift.add_argument(
        "--categorical",
        action="append",
        default=[],
        metavar="COLUMN",
        help="a column holding category codes (repeat for several)",
    )
    drift.add_argument(
        "--min-window", type=_positive_int, default=50, help="fewest rows to test (default 50)"
    )
    drift.set_defaults(func=_drift)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    func: Command = args.func
    try:
        return func(args)
    except SidecarError as exc:
        print(f"inference-sidecar: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
