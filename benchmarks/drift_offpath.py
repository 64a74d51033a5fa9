"""Serving latency while the drift worker evaluates a large window, versus without.

One server process serves the digits ONNX model (64 float inputs) with drift
monitoring on a reference of 5,000 N(0, 1) rows and windows of ``--window``
rows (default 100,000 × 64 features). Inside the server, a feeder thread offers
``--window`` rows at a time to the model's drift monitor through the same
``ModelMonitor.offer`` the tap calls, so the drift worker keeps assembling and
scoring full windows back to back, exactly as it would under heavy traffic.
(Feeding the rows in-process keeps the network and decoding cost of 100,000
rows out of the comparison: what is measured is the evaluation.)

Part 0 times the tap on the request path (``DriftMonitoring.on_request``) for
requests of 1, 64 and 4,096 rows of 64 features (inputs and outputs watched):
it should not depend on the size.

Part 1 shows where the GIL is during one evaluation: ``DriftDetector.score`` on
the same window runs in this process while a second thread spins in pure
Python; every C call of the evaluation longer than 5 ms is listed with whether
the spinning thread made progress during it (it can only if the call released
the GIL).

Part 2: this process is the client: ``--clients`` closed-loop gRPC clients send
single-row requests for ``--seconds`` per run. Runs alternate between feeder off
and feeder on (``--pairs`` times), so a noisy shared machine affects both
modes alike; the figure to quote is the ratio of p99 latencies within each
pair, and their median.

    python benchmarks/drift_offpath.py [--pairs 5] [--seconds 10] [--clients 4] [--priority idle]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sidecar.drift.worker import Priority  # noqa: E402

FEATURES = 64


# --------------------------------------------------------------------------- server side


def serve(window: int, priority: Priority) -> None:
    """The server process: digits with drift on a N(0,1) reference; a feeder toggled on stdin."""
    import asyncio

    from sidecar.app import AppParts, build_server
    from sidecar.config import ServerConfig
    from sidecar.drift import DriftMonitoring
    from sidecar.examples import MODEL_REPOSITORY
    from sidecar.metrics_listener import ServerMetrics

    rng = np.random.default_rng(0)
    repository = Path(tempfile.mkdtemp(prefix="drift-bench-"))
    model_dir = repository / "digits"
    shutil.copytree(MODEL_REPOSITORY / "digits" / "1", model_dir / "1")
    np.save(model_dir / "reference.npy", rng.standard_normal((5000, FEATURES)).astype(np.float32))
    (model_dir / "config.yaml").write_text(
        "monitoring:\n"
        "  drift:\n"
        "    reference: reference.npy\n"
        f"    window_size: {window}\n"
        "    outputs: false\n"
        f"    queue_rows: {2 * window}\n"
    )
    config = ServerConfig.model_validate(
        {
            "model_repository": str(repository),
            "device": "cpu",
            "grpc": {"host": "127.0.0.1", "port": 0},
            "metrics": {"host": "127.0.0.1", "port": 0},
            "logging": {"level": "WARNING"},
        }
    )
    metrics = ServerMetrics(config.metrics)
    drift = DriftMonitoring(metrics.registry, priority=priority)
    server = build_server(config, AppParts(metrics=metrics, drift=drift))
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(120)
    monitor = next(iter(drift.worker.monitors().values()))
    rows = rng.standard_normal((window, FEATURES)).astype(np.float32)
    feeding = threading.Event()
    busy = threading.Lock()  # held while the worker processes the monitor
    process = monitor.process

    def tracked() -> None:
        with busy:
            process()

    monitor.process = tracked  # type: ignore[method-assign]

    def feeder() -> None:
        while True:
            feeding.wait()
            if monitor.queued_rows < window:
                monitor.offer({"input": rows}, None, window)
            time.sleep(0.01)

    threading.Thread(target=feeder, daemon=True).start()
    print(json.dumps({"grpc": server.port, "metrics": metrics.http.port}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "on":
            feeding.set()
        elif command == "off":  # and wait until the worker is idle
            feeding.clear()
            while monitor.queued_rows:
                time.sleep(0.05)
            with busy:
                pass
        elif command == "quit":
            break
        print("ok", flush=True)
    asyncio.run_coroutine_threadsafe(server.stop(grace=1.0), loop).result(120)


# --------------------------------------------------------------------------- client side


def scrape_evaluations(port: int) -> tuple[float, float]:
    """(evaluations so far, total evaluation seconds) from the server's /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    count = total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sidecar_drift_evaluation_duration_seconds_count":
                count += sample.value
            elif sample.name == "sidecar_drift_evaluation_duration_seconds_sum":
                total += sample.value
    return count, total


def measure(address: str, clients: int, seconds: float) -> list[float]:
    """Latencies (seconds) of single-row requests from ``clients`` closed-loop clients."""
    import tritonclient.grpc as triton

    latencies: list[list[float]] = [[] for _ in range(clients)]
    deadline = time.perf_counter() + seconds

    def run(index: int) -> None:
        client = triton.InferenceServerClient(address)
        rng = np.random.default_rng(index)
        x = rng.standard_normal((1, FEATURES)).astype(np.float32)
        inp = triton.InferInput("input", [1, FEATURES], "FP32")
        inp.set_data_from_numpy(x)
        out = latencies[index]
        while (now := time.perf_counter()) < deadline:
            client.infer("digits", [inp])
            out.append(time.perf_counter() - now)
        client.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [x for part in latencies for x in part]


def tap_cost(iterations: int = 20000, repeat: int = 5) -> None:
    """Part 0: µs per ``on_request`` call, the request path's whole drift cost.

    The queue is not drained while timing: it holds ``iterations`` references to the
    same arrays (a few MB of list entries), and the worker's cost is measured in part 2.
    """
    import asyncio

    from prometheus_client import CollectorRegistry

    from sidecar.config import ModelConfig, ServerConfig
    from sidecar.drift import DriftMonitoring
    from sidecar.events import RequestRecord
    from sidecar.models import ModelManager
    from sidecar.runtimes.fakes import SumRuntime

    rng = np.random.default_rng(0)
    repository = Path(tempfile.mkdtemp(prefix="drift-tap-"))
    (repository / "m").mkdir()
    np.save(repository / "m" / "reference.npy", rng.standard_normal((5000, FEATURES)))
    print("| request | sample_rate | µs per call (fastest run) | µs (median run) |")
    print("|---|---:|---:|---:|")
    for rate in (1.0, 0.1):
        for rows in (1, 64, 4096):
            x = rng.standard_normal((rows, FEATURES)).astype(np.float32)
            runs = []
            for _ in range(repeat):
                drift = DriftMonitoring(CollectorRegistry())
                manager = ModelManager(ServerConfig(), repository, [drift], hooks=[drift])
                settings = {"reference": "reference.npy", "sample_rate": rate, "queue_rows": 10**12}
                config = ModelConfig.model_validate({"monitoring": {"drift": settings}})
                model = asyncio.run(
                    manager.add(
                        "m", "1", config, SumRuntime(FEATURES), repository / "m" / "1" / "x"
                    )
                )
                assert model.ready, model.error
                outputs = asyncio.run(model.runtime.predict({"x": x}))
                record = RequestRecord(model, "id", "OK", rows, 0.001, 0.0, {"x": x}, outputs)
                on_request = drift.on_request
                started = time.perf_counter_ns()
                for _ in range(iterations):
                    on_request(record)
                runs.append((time.perf_counter_ns() - started) / iterations / 1000)
            print(
                f"| OK, {rows} rows × {FEATURES} | {rate:g} | {min(runs):.2f} | "
                f"{statistics.median(runs):.2f} |"
            )
    shutil.rmtree(repository)


def gil_probe(window: int, repeat: int = 3) -> None:
    """Part 1: C calls of one evaluation longer than 5 ms, and whether they released the GIL."""
    from detectors.drift import DriftDetector
    from detectors.reference import Reference

    rng = np.random.default_rng(0)
    names = [f"x[{i}]" for i in range(FEATURES)]
    detector = DriftDetector(Reference.fit(rng.standard_normal((5000, FEATURES)), names))
    rows = rng.standard_normal((window, FEATURES))
    ticks = [0]
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            ticks[0] += 1

    calls: list[tuple[float, int]] = []
    open_calls: list[tuple[float, int]] = []

    def profile(frame: object, event: str, arg: object) -> None:
        if event == "c_call":
            open_calls.append((time.perf_counter(), ticks[0]))
        elif event in ("c_return", "c_exception") and open_calls:
            started, before = open_calls.pop()
            calls.append((time.perf_counter() - started, ticks[0] - before))

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    print(
        "| run | evaluation s | C calls > 5 ms | their total s | of which held the GIL | held s |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for run in range(1, repeat + 1):
        calls.clear()
        sys.setprofile(profile)
        started = time.perf_counter()
        detector.score(rows)
        total = time.perf_counter() - started
        sys.setprofile(None)
        long = [c for c in calls if c[0] > 0.005]
        held = [c for c in long if c[1] == 0]
        print(
            f"| {run} | {total:.2f} | {len(long)} | {sum(c[0] for c in long):.2f} | "
            f"{len(held)} | {sum(c[0] for c in held):.3f} |"
        )
    stop.set()
    spinner.join()

    # The share of time the GIL is free: a pure-Python loop's speed beside back-to-back
    # evaluations in another thread, relative to its speed alone.
    def spin_rate(seconds: float) -> float:
        n = 0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            n += 1
        return n / seconds

    alone = spin_rate(2.0)
    busy = threading.Event()
    busy.set()

    def evaluate() -> None:
        while busy.is_set():
            detector.score(rows)

    worker = threading.Thread(target=evaluate)
    worker.start()
    time.sleep(0.5)
    beside = spin_rate(6.0)
    busy.clear()
    worker.join()
    print(
        f"\nA pure-Python loop beside back-to-back evaluations in another thread ran at "
        f"{beside / alone:.0%} of its speed alone ({beside:,.0f} vs {alone:,.0f} iterations/s)."
    )


def machine() -> str:
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return (
        f"{cpu}, {os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.2f}; "
        f"Python {platform.python_version()}, numpy {np.__version__}, "
        f"scipy {metadata.version('scipy')}, onnxruntime {metadata.version('onnxruntime')}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="off/on run pairs (default 5)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per run (default 10)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--window", type=int, default=100_000, help="rows (default 100000)")
    parser.add_argument(
        "--priority",
        choices=("idle", "nice", "normal"),
        default="idle",
        help="the drift worker's scheduling: SCHED_IDLE (the server's default), nice 19, "
        "or unchanged",
    )
    parser.add_argument("--parts", default="0,1,2", help="which parts to run (default 0,1,2)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.window, args.priority)
        return
    parts = {p.strip() for p in args.parts.split(",")}
    if "2" not in parts:
        print(f"machine: {machine()}\n")
        if "0" in parts:
            print("Part 0: the tap on the request path\n")
            tap_cost()
        if "1" in parts:
            print(f"\nPart 1: one evaluation of {args.window} x {FEATURES}, C calls and the GIL\n")
            gil_probe(args.window)
        return

    server = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            "--window",
            str(args.window),
            "--priority",
            args.priority,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert server.stdin is not None and server.stdout is not None
    try:
        ports = json.loads(server.stdout.readline())
        address = f"127.0.0.1:{ports['grpc']}"

        def command(text: str) -> None:
            assert server.stdin is not None and server.stdout is not None
            server.stdin.write(text + "\n")
            server.stdin.flush()
            server.stdout.readline()

        measure(address, args.clients, 2.0)  # warm up
        print(f"machine: {machine()}\n")
        print("Part 0: the tap on the request path\n")
        tap_cost()
        print(f"\nPart 1: one evaluation of {args.window} x {FEATURES}, C calls and the GIL\n")
        gil_probe(args.window)
        print("\nPart 2: serving latency, drift evaluations off and on\n")
        print(
            f"window {args.window} × {FEATURES}, drift worker priority {args.priority}, "
            f"{args.clients} clients, "
            f"{args.seconds:g} s per run, {args.pairs} pairs\n"
        )
        print(
            "| pair | p50 off ms | p50 on ms | p99 off ms | p99 on ms | p99 on/off "
            "| req/s off | req/s on | evaluations in the on run (mean s each) |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        ratios = []
        pooled: dict[str, list[np.ndarray]] = {"off": [], "on": []}
        for pair in range(1, args.pairs + 1):
            figures = {}
            for mode in ("off", "on"):
                command(mode)
                if mode == "on":  # let the worker start on a full window first
                    time.sleep(1.0)
                before = scrape_evaluations(ports["metrics"])
                lat = np.array(measure(address, args.clients, args.seconds))
                pooled[mode].append(lat)
                after = scrape_evaluations(ports["metrics"])
                command("off")  # returns once the worker is idle
                figures[mode] = (
                    np.percentile(lat, 50) * 1000,
                    np.percentile(lat, 99) * 1000,
                    lat.size / args.seconds,
                    after[0] - before[0],
                    (after[1] - before[1]) / max(after[0] - before[0], 1),
                )
            off, on = figures["off"], figures["on"]
            ratio = on[1] / off[1]
            ratios.append(ratio)
            print(
                f"| {pair} | {off[0]:.2f} | {on[0]:.2f} | {off[1]:.2f} | {on[1]:.2f} | "
                f"{ratio:.2f} | {off[2]:.0f} | {on[2]:.0f} | {on[3]:.0f} ({on[4]:.2f} s) |"
            )
        off_all, on_all = (np.concatenate(pooled[m]) * 1000 for m in ("off", "on"))
        print(f"\nmedian of the pairs' p99 ratios (on/off): {statistics.median(ratios):.2f}")
        for q in (50, 99, 99.9):
            off_q, on_q = np.percentile(off_all, q), np.percentile(on_all, q)
            print(
                f"all runs pooled, p{q:g}: off {off_q:.2f} ms, on {on_q:.2f} ms, "
                f"ratio {on_q / off_q:.2f}"
            )
        command("quit")
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()


if __name__ == "__main__":
    main()
