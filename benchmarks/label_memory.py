"""Memory under a flood of unlabelled predictions and bogus labels (docs/benchmarks.md).

Starts ``inference-sidecar serve`` (memory label store, the bundled digits
classifier) in its own process, then, over loopback gRPC:

1. sends ``--predictions`` rows that will never be labelled, in requests of
   ``--rows`` rows, paced so the label worker keeps up (a queue that overflows
   drops rows, counted, which would flatter the figure);
2. sends ``--bogus`` labels whose class names are all distinct and none a
   configured class, in SendLabels batches of 10,000;

and reports the server's RSS (from /proc) before, after each phase and at the
end, the store's size, and the number of metric series /metrics exposes
before and after the bogus labels (it must not change: label values come from
configuration, never from clients).

    python benchmarks/label_memory.py --predictions 10000000 --bogus 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
#: The longest the script waits for the server to catch up before giving up.
WAIT_SECONDS = 600
sys.path.insert(0, str(ROOT))

from sidecar.examples import MODEL_REPOSITORY  # noqa: E402
from sidecar.proto import feedback_pb2 as fb  # noqa: E402
from sidecar.proto import feedback_pb2_grpc as fb_grpc  # noqa: E402
from sidecar.proto import grpc_service_pb2 as pb  # noqa: E402
from sidecar.proto import grpc_service_pb2_grpc as pb_grpc  # noqa: E402

PORTS = re.compile(r"serving (gRPC|metrics) on [^:]+:(\d+)")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def scrape(port: int) -> dict[str, float]:
    """Every sample of /metrics: series name with labels → value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def total(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", type=int, default=10_000_000)
    parser.add_argument("--bogus", type=int, default=1_000_000)
    parser.add_argument("--rows", type=int, default=10_000, help="rows per ModelInfer request")
    parser.add_argument("--max-entries", type=int, default=1_000_000, help="labels.max_entries")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="label-memory-"))
    try:
        shutil.copytree(MODEL_REPOSITORY / "digits", work / "models" / "digits")
        # Measure the label store alone: the example's drift monitoring has its own
        # bound (drift.queue_rows sampled rows waiting for the worker, up to tens of MB
        # while a flood outruns the worker), which is not what this benchmark is about.
        model_config = work / "models" / "digits" / "config.yaml"
        settings = yaml.safe_load(model_config.read_text())
        settings["monitoring"].pop("drift", None)
        model_config.write_text(yaml.safe_dump(settings))
        config = work / "sidecar.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "grpc": {"host": "127.0.0.1", "port": 0},
                    "metrics": {"host": "127.0.0.1", "port": 0},
                    "device": "cpu",
                    "model_repository": str(work / "models"),
                    "labels": {"backend": "memory", "max_entries": args.max_entries},
                }
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            return run(proc, args)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(proc: subprocess.Popen[str], args: argparse.Namespace) -> int:
    ports: dict[str, int] = {}
    assert proc.stderr is not None
    while len(ports) < 2:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError("server exited before listening")
        found = PORTS.search(line)
        if found:
            ports[found.group(1)] = int(found.group(2))
    # Keep reading the server's log so it never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stderr or ()], daemon=True).start()

    address = f"127.0.0.1:{ports['gRPC']}"
    options = [("grpc.max_send_message_length", 1 << 30)]
    channel = grpc.insecure_channel(address, options=options)
    infer = pb_grpc.GRPCInferenceServiceStub(channel)
    feedback = fb_grpc.FeedbackServiceStub(channel)

    x = np.random.default_rng(0).uniform(0, 16, (args.rows, 64)).astype(np.float32)
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())

    def accounted() -> float:
        """Rows the label worker has taken from its queue: recorded, or dropped (any reason)."""
        metrics = scrape(ports["metrics"])
        recorded = total(metrics, "sidecar_predictions_recorded_total")
        dropped = sum(
            v
            for k, v in metrics.items()
            if k.startswith("sidecar_predictions_dropped_total{") and 'reason="evicted"' not in k
        )
        return recorded + dropped

    def wait_until(what: str, done: Callable[[], bool], every: float) -> None:
        """Poll ``done`` every ``every`` s; RuntimeError after WAIT_SECONDS."""
        deadline = time.monotonic() + WAIT_SECONDS
        while not done():
            if time.monotonic() > deadline:
                raise RuntimeError(f"gave up after {WAIT_SECONDS} s waiting for {what}")
            time.sleep(every)  # polling interval of a bounded poll

    infer.ModelInfer(request, timeout=60)  # warm-up (its rows count too)
    sent = args.rows
    # The baseline is read once the label worker has taken the warm-up's rows.
    wait_until("the warm-up's rows to be recorded", lambda: accounted() >= sent, 0.05)
    baseline = rss_mb(proc.pid)
    series_0 = len(scrape(ports["metrics"]))
    print(f"baseline: RSS {baseline:.1f} MB, {series_0} series")

    started = time.monotonic()
    while sent < args.predictions:
        infer.ModelInfer(request, timeout=60)
        sent += args.rows
        if sent % (args.rows * 5) == 0:
            # Pace to the worker: wait while more than 5 requests' rows are queued.
            wait_until("the label worker", lambda n=sent: n - accounted() <= 5 * args.rows, 0.05)
    wait_until("every prediction to be recorded", lambda: accounted() >= sent, 0.2)
    metrics = scrape(ports["metrics"])
    elapsed = time.monotonic() - started
    after_predictions = rss_mb(proc.pid)
    pending = total(metrics, "sidecar_pending_predictions")
    dropped = {
        k: v for k, v in metrics.items() if k.startswith("sidecar_predictions_dropped_total{")
    }
    print(
        f"{sent:,} predictions in {elapsed:.0f}s: RSS {after_predictions:.1f} MB "
        f"(+{after_predictions - baseline:.1f}), pending {pending:,.0f}, dropped {dropped}"
    )

    series_1 = set(scrape(ports["metrics"]))
    rng = np.random.default_rng(1)
    started = time.monotonic()
    answered = 0
    for start in range(0, args.bogus, 10_000):
        count = min(10_000, args.bogus - start)
        salt = rng.integers(0, 2**62)
        labels = [
            fb.Label(request_id=f"bogus-{start + i}", model_name="digits",
                     class_name=f"class-{salt:x}-{start + i}")
            for i in range(count)
        ]  # fmt: skip
        reply = feedback.SendLabels(fb.SendLabelsRequest(labels=labels), timeout=60)
        answered += len(reply.results)
    elapsed = time.monotonic() - started
    after_bogus = rss_mb(proc.pid)
    series_2 = set(scrape(ports["metrics"]))
    print(
        f"{answered:,} bogus labels in {elapsed:.0f}s: RSS {after_bogus:.1f} MB "
        f"(+{after_bogus - baseline:.1f} over baseline); series {len(series_1)} → "
        f"{len(series_2)} (new: {sorted(series_2 - series_1)[:5]})"
    )
    channel.close()
    figures = {
        "baseline_mb": round(baseline, 1),
        "after_predictions_mb": round(after_predictions, 1),
        "after_bogus_mb": round(after_bogus, 1),
        "pending": pending,
        "series_before": len(series_1),
        "series_after": len(series_2),
    }
    print(json.dumps(figures))  # last line: for tests/sidecar/test_label_memory.py
    return 0 if series_2 == series_1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
