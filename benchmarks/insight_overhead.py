"""Throughput with activation taps on versus off (docs/benchmarks.md, "Model insight").

    python benchmarks/insight_overhead.py [--seconds 5] [--runs 3] [--concurrency 8]

Serves the bundled torch.export digits model from a temporary repository in
three server subprocesses (loopback, ports chosen by the OS), one per config,
and loads them one at a time, interleaved run by run so that drift of the
machine hits all alike:

- ``off``: no ``insight`` section (no taps in the graph);
- ``taps 0.1``: ``activations: {layers: [body.0, body.1, body.2], sample_rate: 0.1}``;
- ``taps 1.0``: the same layers on every batch (the worst case).

A closed-loop grpc.aio client sends batch-1 requests (raw FP32) with
``--concurrency`` in flight. Reported per config: requests per second, and the
server process's CPU time per request (user + system from /proc, the figure
least moved by other load on the machine). Also measures the in-process CPU
cost of one model call (the executor thread's work) with and without taps,
configs interleaved call by call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sidecar.examples import MODEL_REPOSITORY  # noqa: E402
from sidecar.proto import grpc_service_pb2 as pb  # noqa: E402
from sidecar.proto import grpc_service_pb2_grpc as pb_grpc  # noqa: E402

LAYERS = ["body.0", "body.1", "body.2"]
CONFIGS: dict[str, dict[str, Any] | None] = {
    "off": None,
    "taps 0.1": {"activations": {"layers": LAYERS, "sample_rate": 0.1}},
    "taps 1.0": {"activations": {"layers": LAYERS, "sample_rate": 1.0}},
}


def _repository(base: Path, insight: dict[str, Any] | None) -> Path:
    repo = base / "repo"
    base.mkdir(parents=True, exist_ok=True)
    source = MODEL_REPOSITORY / "digits_export"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(source, repo / "digits_export")
    config = yaml.safe_load((source / "config.yaml").read_text())
    if insight is not None:
        config["insight"] = insight
    (repo / "digits_export" / "config.yaml").write_text(yaml.safe_dump(config))
    return repo


def _serve(repo: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "sidecar.cli", "serve", "--model-repository", str(repo),
            "--grpc-port", "0", "--metrics-port", "0", "--device", "cpu",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={"SIDECAR_GRPC__HOST": "127.0.0.1", "PATH": ""},
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        if "serving gRPC on" in line:
            return proc, int(line.rsplit(":", 1)[1])
    raise RuntimeError("server did not start")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _load(port: int, pid: int, seconds: float, concurrency: int) -> tuple[float, float]:
    x = np.load(MODEL_REPOSITORY / "digits" / "holdout_features.npy")[:1]
    request = pb.ModelInferRequest(model_name="digits_export")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(x.astype(np.float32).tobytes())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(200):
            await stub.ModelInfer(request)
        done = 0
        deadline = time.perf_counter() + seconds
        cpu = _cpu_seconds(pid)

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await stub.ModelInfer(request)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        return done / elapsed, (_cpu_seconds(pid) - cpu) / done


def _in_process(calls: int) -> dict[str, tuple[float, float]]:
    """Per-call wall time of ``TorchRuntime`` runs, configs interleaved call by call.

    Returns (10th percentile, median) seconds per call for each config and batch
    size. Interleaving and the low percentile keep other load on the machine out
    of the comparison as far as possible.
    """
    from sidecar.config import ModelConfig, ThreadsConfig
    from sidecar.runtimes.torch import TorchRuntime

    path = MODEL_REPOSITORY / "digits_export" / "1" / "model.pt2"
    base = yaml.safe_load((MODEL_REPOSITORY / "digits_export" / "config.yaml").read_text())
    x = np.load(MODEL_REPOSITORY / "digits" / "holdout_features.npy")
    runtimes = {}
    for name, insight in CONFIGS.items():
        config = ModelConfig.model_validate({**base, "insight": insight or {}})
        runtime = TorchRuntime("d", path, config, "cpu", ThreadsConfig(intra_op_threads=1))
        asyncio.run(runtime.load())
        runtimes[name] = runtime
    result: dict[str, tuple[float, float]] = {}
    for rows in (1, 64):
        batch = {"input": x[:rows]}
        times: dict[str, list[float]] = {name: [] for name in runtimes}
        for _ in range(calls):
            for name, runtime in runtimes.items():
                started = time.perf_counter()
                runtime._run(batch)  # the executor thread's work, without the thread hop
                times[name].append(time.perf_counter() - started)
        for name, values in times.items():
            result[f"{name}, batch {rows}"] = (
                float(np.percentile(values, 10)),
                float(np.median(values)),
            )
    for runtime in runtimes.values():
        asyncio.run(runtime.unload())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()

    per_call = _in_process(args.calls)
    print(f"in-process model call, µs ({args.calls} calls per config, interleaved):")
    for key, (p10, median) in per_call.items():
        print(f"  {key:<22} p10 {p10 * 1e6:7.1f}   median {median * 1e6:7.1f}")

    rates: dict[str, list[float]] = {name: [] for name in CONFIGS}
    cpu: dict[str, list[float]] = {name: [] for name in CONFIGS}
    servers: dict[str, tuple[subprocess.Popen[str], int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for name, insight in CONFIGS.items():
                servers[name] = _serve(_repository(Path(tmp) / name.replace(" ", "_"), insight))
            for _ in range(args.runs):  # interleaved: machine drift hits every config alike
                for name, (proc, port) in servers.items():
                    rate, per_request = asyncio.run(
                        _load(port, proc.pid, args.seconds, args.concurrency)
                    )
                    rates[name].append(rate)
                    cpu[name].append(per_request)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(30)
                if proc.stderr is not None:
                    proc.stderr.close()
    off = statistics.median(rates["off"])
    off_cpu = statistics.median(cpu["off"])
    print(f"\nserver, batch 1, concurrency {args.concurrency}, {args.runs}×{args.seconds:g} s:")
    for name, values in rates.items():
        med = statistics.median(values)
        med_cpu = statistics.median(cpu[name])
        print(
            f"  {name:<9} {med:7.0f} req/s ({(med / off - 1) * 100:+6.1f} %)  "
            f"server CPU {med_cpu * 1e6:6.0f} µs/req ({(med_cpu / off_cpu - 1) * 100:+6.1f} %)  "
            f"runs req/s: {', '.join(f'{v:.0f}' for v in values)}"
        )


if __name__ == "__main__":
    main()
