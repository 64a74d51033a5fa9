"""``inference-sidecar serve`` in its own process: the metrics port it logs answers scrapes."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton

from tests.exporters.conftest import copy_examples
from tests.exporters.scrape import scrape

ROOT = Path(__file__).resolve().parents[2]


def wait_for_lines(lines: queue.Queue[str], patterns: dict[str, str], timeout: float) -> dict:
    """Read log lines until every pattern matched once; {key: first group}."""
    found: dict[str, str] = {}
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while len(found) < len(patterns):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out waiting for {patterns}; log:\n" + "".join(seen))
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        seen.append(line)
        for key, pattern in patterns.items():
            match = re.search(pattern, line)
            if key not in found and match:
                found[key] = match.group(1)
    return found


def test_serve_exports_metrics_on_the_logged_port(tmp_path: Path) -> None:
    repository = copy_examples(tmp_path / "models", "diabetes")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sidecar.cli",
            "serve",
            "--model-repository",
            str(repository),
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
            "--device",
            "cpu",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SIDECAR_GRPC__HOST": "127.0.0.1", "SIDECAR_METRICS__HOST": "127.0.0.1"},
    )
    lines: queue.Queue[str] = queue.Queue()
    stderr = process.stderr
    assert stderr is not None

    def read() -> None:
        for line in stderr:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        ports = wait_for_lines(
            lines,
            {
                "metrics": r"serving metrics on 127\.0\.0\.1:(\d+)",
                "grpc": r"serving gRPC on \S+:(\d+)",
            },
            timeout=60,
        )
        client = triton.InferenceServerClient(f"127.0.0.1:{ports['grpc']}")
        x = np.zeros((2, 10), dtype=np.float32)
        inp = triton.InferInput("input", [2, 10], "FP32")
        inp.set_data_from_numpy(x)
        client.infer("diabetes", [inp])
        client.close()
        got = scrape(int(ports["metrics"]))
        labels = {"model": "diabetes", "version": "1"}
        assert got.value("sidecar_inference_requests_total", code="OK", **labels) == 1
        assert got.value("sidecar_inference_samples_total", **labels) == 2
        assert got.value("sidecar_model_ready", **labels) == 1
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
            reader.join(10)
            stderr.close()
    assert code == 0
