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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _labels_send(args: argparse.Namespace) -> int:
    from sidecar.labels.client import send_file

    report = send_file(
        args.file,
        args.address,
        batch_size=args.batch_size,
        timeout=args.timeout,
        problems=sys.stderr,
    )
    print(f"{args.file}: {report.summary()}")
    return 0 if report.all_matched else 1


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
    send.set_defaults(func=_labels_send)

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
