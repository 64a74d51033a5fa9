"""Serving latency while the drift worker evaluates a large window, versus without.

One server process serves the digits ONNX model (64 float inputs) with drift
monitoring on a reference of 5,000 N(0, 1) rows and windows of ``--window``
rows (default 100,000 × 64 features). The server also loads two copies of it
that nobody calls, ``thread`` and ``process``, the same but for
``monitoring.drift.executor``. Inside the server, before each of its rounds
the drift worker is handed ``--window`` rows for one of those copies' drift
monitor through the same ``ModelMonitor.offer`` the tap calls, so the drift worker keeps
assembling and scoring full windows back to back, exactly as it would under
heavy traffic, with that executor. (Feeding the rows in-process keeps the
network and decoding cost of 100,000 rows out of the comparison: what is
measured is the evaluation.)

Part 0 times the tap on the request path (``DriftMonitoring.on_request``) for
requests of 1, 64 and 4,096 rows of 64 features (inputs and outputs watched):
it should not depend on the size.

Part 1 shows where the GIL is during one evaluation: ``DriftDetector.score`` on
the same window runs in this process while a second thread spins in pure
Python; every C call of the evaluation longer than 5 ms is listed with whether
the spinning thread made progress during it (it can only if the call released
the GIL).

Part 2: this process is the client: ``--clients`` closed-loop gRPC clients send
single-row requests to ``digits`` for ``--seconds`` per run (with ``--rate``,
open loop instead: that many requests/s in all on a fixed schedule, latency
counted from each request's scheduled time, the regime of a server with CPU
to spare). Each round runs
feeding off, feeding on with the thread executor, and feeding on with the process
executor (``--rounds`` times, the order of the three rotating), so a noisy
shared machine affects all modes alike; the figures to quote are the ratios
of p99 latencies to the round's "off" run, and their medians.

Part 3 looks at the event loop itself, in this process with no serving load:
a coroutine sleeps 1 ms at a time while the real drift worker evaluates
``--window`` rows, three windows after a first unmeasured one (so the process
executor's child is running), with each executor. Per tick it records the
stall: wall time beyond the 1 ms minus the time the loop's thread was
runnable but waiting for a CPU (``run_delay`` in ``/proc/thread-self/schedstat``),
i.e. time the loop was kept from running by the GIL (or its own work), not by
other jobs on the machine. (tests/drift/test_offpath.py asserts bounds on the
same measure.)

    python benchmarks/drift_offpath.py [--rounds 5] [--seconds 10] [--clients 4] [--priority idle]
        [--rate REQUESTS_PER_SECOND]
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
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sidecar.drift.worker import Priority  # noqa: E402

FEATURES = 64


# --------------------------------------------------------------------------- server side


EXECUTORS = ("thread", "process")


def serve(window: int, priority: Priority) -> None:
    """The server process: digits, and a fed copy per executor; feeding toggled on stdin."""
    import asyncio

    from sidecar.app import AppParts, build_server
    from sidecar.config import ServerConfig
    from sidecar.drift import DriftMonitoring
    from sidecar.examples import MODEL_REPOSITORY
    from sidecar.metrics_listener import ServerMetrics

    rng = np.random.default_rng(0)
    repository = Path(tempfile.mkdtemp(prefix="drift-bench-"))
    reference = rng.standard_normal((5000, FEATURES)).astype(np.float32)
    for name, executor in (("digits", "thread"), *((e, e) for e in EXECUTORS)):
        model_dir = repository / name
        shutil.copytree(MODEL_REPOSITORY / "digits" / "1", model_dir / "1")
        np.save(model_dir / "reference.npy", reference)
        (model_dir / "config.yaml").write_text(
            "monitoring:\n"
            "  drift:\n"
            "    reference: reference.npy\n"
            f"    window_size: {window}\n"
            "    outputs: false\n"
            f"    queue_rows: {2 * window}\n"
            f"    executor: {executor}\n"
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
    # rounds every 50 ms: a fed monitor's windows are evaluated back to back
    drift = DriftMonitoring(metrics.registry, interval=0.05, priority=priority)
    server = build_server(config, AppParts(metrics=metrics, drift=drift))
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(120)
    monitors = {m.model: m for m in drift.worker.monitors().values()}
    rows = rng.standard_normal((window, FEATURES)).astype(np.float32)
    feeding: list[str] = []  # the executor being fed, if any
    busy = threading.Lock()  # held while the worker processes a fed monitor
    working = threading.Event()  # set when the worker takes a fed window

    def fed(name: str, process: Callable[[], None]) -> Callable[[], None]:
        """The monitor's ``process``, given a full window first while it is being fed."""
        monitor = monitors[name]

        def run() -> None:
            with busy:
                if feeding and feeding[0] == name:
                    if monitor.queued_rows < window:
                        monitor.offer({"input": rows}, None, window)
                    working.set()
                process()

        return run

    for name in EXECUTORS:
        monitors[name].process = fed(name, monitors[name].process)  # type: ignore[method-assign]

    print(json.dumps({"grpc": server.port, "metrics": metrics.http.port}), flush=True)
    for line in sys.stdin:
        command = line.split()
        if command[0] == "on":  # and wait until the worker has taken a window
            working.clear()
            feeding[:] = [command[1]]
            if not working.wait(120):
                raise RuntimeError(f"the drift worker took no {command[1]} window in 120 s")
        elif command[0] == "off":  # and wait until the worker is idle
            feeding.clear()
            with busy:  # the worker's current round (and its evaluation) is over
                pass
        elif command[0] == "quit":
            break
        print("ok", flush=True)
    asyncio.run_coroutine_threadsafe(server.stop(grace=1.0), loop).result(120)


# --------------------------------------------------------------------------- client side


def scrape_evaluations(port: int, model: str) -> tuple[float, float]:
    """(evaluations of ``model`` so far, their total seconds) from the server's /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    count = total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name == "sidecar_drift_evaluation_duration_seconds_count":
                count += sample.value
            elif sample.name == "sidecar_drift_evaluation_duration_seconds_sum":
                total += sample.value
    return count, total


def measure(address: str, clients: int, seconds: float, rate: float | None = None) -> list[float]:
    """Latencies (seconds) of single-row requests from ``clients`` clients.

    Closed loop (each client sends its next request when the last one is
    answered) by default; with ``rate``, open loop: the clients send ``rate``
    requests/s in all on a fixed schedule, and a latency runs from the request's
    scheduled time (so a server that falls behind is charged for the wait).
    """
    import tritonclient.grpc as triton

    latencies: list[list[float]] = [[] for _ in range(clients)]
    start = time.perf_counter()
    deadline = start + seconds

    def run(index: int) -> None:
        client = triton.InferenceServerClient(address)
        rng = np.random.default_rng(index)
        x = rng.standard_normal((1, FEATURES)).astype(np.float32)
        inp = triton.InferInput("input", [1, FEATURES], "FP32")
        inp.set_data_from_numpy(x)
        out = latencies[index]
        interval = clients / rate if rate else 0.0
        scheduled = start + index * interval / clients
        while (now := time.perf_counter()) < deadline:
            if rate:
                if scheduled > now:
                    time.sleep(scheduled - now)  # the open loop's schedule, not a wait for state
                now, scheduled = scheduled, scheduled + interval
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

    scoring = threading.Event()

    def evaluate() -> None:
        scoring.set()
        while busy.is_set():
            detector.score(rows)

    worker = threading.Thread(target=evaluate)
    worker.start()
    if not scoring.wait(60):
        raise RuntimeError("the evaluating thread did not start")
    beside = spin_rate(6.0)
    busy.clear()
    worker.join()
    print(
        f"\nA pure-Python loop beside back-to-back evaluations in another thread ran at "
        f"{beside / alone:.0%} of its speed alone ({beside:,.0f} vs {alone:,.0f} iterations/s)."
    )


def loop_stalls(window: int, executor: str, windows: int = 3) -> np.ndarray:
    """Part 3: per 1 ms tick of an event loop, ms it stalled (not waiting for a CPU)."""
    import asyncio

    from prometheus_client import CollectorRegistry

    from sidecar.config import ModelConfig, ServerConfig
    from sidecar.drift import DriftMonitoring
    from sidecar.events import RequestRecord
    from sidecar.models import ModelManager
    from sidecar.runtimes.fakes import SumRuntime

    rng = np.random.default_rng(0)
    repository = Path(tempfile.mkdtemp(prefix="drift-stalls-"))
    (repository / "m").mkdir()
    np.save(repository / "m" / "reference.npy", rng.standard_normal((5000, FEATURES)))
    x = rng.standard_normal((window, FEATURES)).astype(np.float32)
    stalls: list[float] = []

    async def run() -> None:
        registry = CollectorRegistry()
        drift = DriftMonitoring(registry)
        manager = ModelManager(ServerConfig(), repository, [drift], hooks=[drift])
        settings = {
            "reference": "reference.npy",
            "window_size": window,
            "queue_rows": window,
            "outputs": False,
            "executor": executor,
        }
        config = ModelConfig.model_validate({"monitoring": {"drift": settings}})
        model = await manager.add(
            "m", "1", config, SumRuntime(FEATURES), repository / "m" / "1" / "model.onnx"
        )
        assert model.ready, model.error
        record = RequestRecord(model, "id", "OK", window, 0.001, 0.0, {"x": x}, {})
        labels = {"model": "m", "version": "1", "scope": "inputs"}

        def evaluations() -> float:
            return registry.get_sample_value("sidecar_drift_evaluations_total", labels) or 0.0

        fd = os.open(f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY)

        def delay() -> float:
            return int(os.pread(fd, 128, 0).split()[1]) / 1e9

        await drift.start()
        drift.on_request(record)
        while evaluations() < 1:  # the first window: starts the child, faults buffers in
            await asyncio.sleep(0.05)
        for done in range(2, windows + 2):
            drift.on_request(record)
            tick = 0
            last, last_delay = time.perf_counter(), delay()
            while True:
                await asyncio.sleep(0.001)
                now, now_delay = time.perf_counter(), delay()
                stalls.append(max(now - last - 0.001 - (now_delay - last_delay), 0.0) * 1000)
                last, last_delay = now, now_delay
                tick += 1
                if tick % 50 == 0:  # the check is left out of the ticks
                    if evaluations() >= done:
                        break
                    last, last_delay = time.perf_counter(), delay()
        await drift.stop()
        os.close(fd)

    asyncio.run(run())
    shutil.rmtree(repository)
    return np.array(stalls)


def stalls_table(window: int, repeat: int) -> None:
    """Part 3's table: stalls per executor, ``repeat`` times each, alternating."""
    print(
        "| run | executor | ticks | stall sum ms | ticks > 2 ms | > 5 ms "
        "| p99 ms | p99.9 ms | max ms |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for run in range(1, repeat + 1):
        for executor in EXECUTORS:
            s = loop_stalls(window, executor)
            print(
                f"| {run} | {executor} | {s.size} | {s.sum():.0f} | {(s > 2).sum()} | "
                f"{(s > 5).sum()} | {np.percentile(s, 99):.2f} | {np.percentile(s, 99.9):.1f} | "
                f"{s.max():.1f} |",
                flush=True,
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
    parser.add_argument("--rounds", type=int, default=5, help="rounds of off/thread/process")
    parser.add_argument("--seconds", type=float, default=10.0, help="per run (default 10)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--window", type=int, default=100_000, help="rows (default 100000)")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="part 2 open loop: requests/s in all (default: closed loop)",
    )
    parser.add_argument(
        "--priority",
        choices=("idle", "nice", "normal"),
        default="idle",
        help="the drift worker's scheduling: SCHED_IDLE (the server's default), nice 19, "
        "or unchanged",
    )
    parser.add_argument(
        "--parts",
        default="0,1,2",
        help="which parts to run (default 0,1,2; 2 runs 0 and 1 too; 3 only without 2)",
    )
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
        if "3" in parts:
            print(f"\nPart 3: event-loop stalls during {args.window} x {FEATURES} windows\n")
            stalls_table(args.window, args.rounds)
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
        for executor in EXECUTORS:  # start the evaluation process, fault the buffers in
            command(f"on {executor}")
            deadline = time.monotonic() + 300
            while scrape_evaluations(ports["metrics"], executor)[0] < 1:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no {executor} evaluation finished in 300 s")
                time.sleep(0.5)  # polling interval of a bounded poll
            command("off")
        print(f"machine: {machine()}\n")
        print("Part 0: the tap on the request path\n")
        tap_cost()
        print(f"\nPart 1: one evaluation of {args.window} x {FEATURES}, C calls and the GIL\n")
        gil_probe(args.window)
        print("\nPart 2: serving latency, drift evaluations off and on, per executor\n")
        print(
            f"window {args.window} × {FEATURES}, drift priority {args.priority}, "
            f"{args.clients} clients, "
            + (f"open loop at {args.rate:g} requests/s, " if args.rate else "closed loop, ")
            + f"{args.seconds:g} s per run, {args.rounds} rounds\n"
        )
        print(
            "| round | mode | p50 ms | p99 ms | p99.9 ms | p99 / off | req/s "
            "| evaluations (mean s each) |"
        )
        print("|---:|---|---:|---:|---:|---:|---:|---|")
        modes = ("off", *EXECUTORS)
        ratios: dict[str, list[float]] = {m: [] for m in EXECUTORS}
        pooled: dict[str, list[np.ndarray]] = {m: [] for m in modes}
        for index in range(args.rounds):
            order = modes[index % 3 :] + modes[: index % 3]
            figures: dict[str, tuple[float, float, float, float, float, float]] = {}
            for mode in order:
                if mode != "off":
                    command(f"on {mode}")  # answers once the worker has a full window
                model = mode if mode != "off" else EXECUTORS[0]
                before = scrape_evaluations(ports["metrics"], model)
                lat = np.array(measure(address, args.clients, args.seconds, args.rate))
                pooled[mode].append(lat)
                after = scrape_evaluations(ports["metrics"], model)
                command("off")  # returns once the worker is idle
                count = after[0] - before[0] if mode != "off" else 0.0
                figures[mode] = (
                    float(np.percentile(lat, 50)) * 1000,
                    float(np.percentile(lat, 99)) * 1000,
                    float(np.percentile(lat, 99.9)) * 1000,
                    lat.size / args.seconds,
                    count,
                    (after[1] - before[1]) / max(count, 1),
                )
            for mode in modes:
                p50, p99, p999, rate, count, each = figures[mode]
                ratio = p99 / figures["off"][1]
                if mode != "off":
                    ratios[mode].append(ratio)
                evaluations = f"{count:.0f} ({each:.2f} s)" if mode != "off" else "-"
                print(
                    f"| {index + 1} | {mode} | {p50:.2f} | {p99:.2f} | {p999:.2f} | "
                    f"{ratio:.2f} | {rate:.0f} | {evaluations} |"
                )
        print()
        for mode in EXECUTORS:
            print(
                f"{mode}: median of the rounds' p99 ratios (on/off) "
                f"{statistics.median(ratios[mode]):.2f} (range {min(ratios[mode]):.2f}–"
                f"{max(ratios[mode]):.2f})"
            )
        off_all = np.concatenate(pooled["off"]) * 1000
        for mode in EXECUTORS:
            on_all = np.concatenate(pooled[mode]) * 1000
            for q in (50, 99, 99.9):
                off_q, on_q = np.percentile(off_all, q), np.percentile(on_all, q)
                print(
                    f"{mode}, all runs pooled, p{q:g}: off {off_q:.2f} ms, on {on_q:.2f} ms, "
                    f"ratio {on_q / off_q:.2f}"
                )
        command("quit")
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()


if __name__ == "__main__":
    main()
