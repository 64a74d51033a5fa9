"""``inference-sidecar bench``: a closed-loop load generator for KServe v2 gRPC servers.

Like Triton's perf_analyzer: ``concurrency`` workers each keep exactly one
request in flight (one ModelInfer call, or one message on their own
ModelStreamInfer stream) for a duration or a number of requests, at one
concurrency level or a sweep of them. It asks the server for the model's
metadata first, so a server that is down or a model that does not exist
stops it at once with a message saying which.

Requests are built and serialised once before the clock starts (a few
distinct payloads, cycled), and responses of unary calls are not parsed, so
the client spends its CPU on gRPC, not on protobuf: on a machine shared by
client and server that matters. Latency is measured per request around the
call; a warm-up period runs before each level and is not counted.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import grpc
import numpy as np

from sidecar.codec import CONTENTS_FIELD
from sidecar.errors import BenchError
from sidecar.proto import grpc_service_pb2 as pb
from sidecar.proto import grpc_service_pb2_grpc as pb_grpc
from sidecar.types import DATATYPES

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
#: Code recorded for a ModelStreamInfer message answered with error_message.
STREAM_ERROR = "STREAM_ERROR"
#: Most distinct request payloads built (cycled through during the run).
MAX_PAYLOADS = 64
#: Consecutive UNAVAILABLE answers, with none OK between, that mean the server is gone.
LOST_AFTER = 200
#: Longest interval between progress-bar redraws, seconds.
PROGRESS_EVERY = 0.2

Contents = Literal["raw", "typed"]


@dataclass(frozen=True)
class BenchOptions:
    """What to send, where, how hard and for how long."""

    target: str
    model: str
    version: str = ""
    concurrency: tuple[int, ...] = (1,)
    duration: float | None = 10.0  # seconds per level (None: use ``requests``)
    requests: int | None = None  # requests per level
    warmup: float = 1.0  # seconds per level, not counted
    batch_size: int = 1
    data: Path | None = None  # .npy (one input) or .npz (by input name); None: random
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # for dynamic dims
    contents: Contents = "raw"
    streaming: bool = False
    timeout: float = 30.0  # per request
    connect_timeout: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.duration is None) == (self.requests is None):
            raise BenchError("give either a duration or a request count, not both")
        if self.duration is not None and not self.duration > 0:
            raise BenchError(f"duration must be positive, got {self.duration}")
        if self.requests is not None and self.requests < 1:
            raise BenchError(f"request count must be at least 1, got {self.requests}")
        if not self.concurrency or min(self.concurrency) < 1:
            raise BenchError(f"concurrency levels must be ≥ 1, got {list(self.concurrency)}")
        if self.batch_size < 1:
            raise BenchError(f"batch size must be ≥ 1, got {self.batch_size}")
        if self.warmup < 0 or self.timeout <= 0 or self.connect_timeout <= 0:
            raise BenchError("warm-up must be ≥ 0 and timeouts > 0")


@dataclass(frozen=True)
class LevelResult:
    """The measurements at one concurrency level."""

    concurrency: int
    ok: int  # requests answered OK
    errors: dict[str, int]  # status code name → count
    error_samples: dict[str, str]  # status code name → first message seen
    rows: int  # rows answered OK
    seconds: float  # measured wall time
    latency_ms: dict[str, float]  # p50, p90, p99, max, mean of OK requests
    interrupted: bool = False

    @property
    def requests_per_second(self) -> float:
        """OK requests per second."""
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    @property
    def rows_per_second(self) -> float:
        """OK rows per second."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, with the derived throughputs."""
        data = asdict(self)
        data["requests_per_second"] = self.requests_per_second
        data["rows_per_second"] = self.rows_per_second
        return data


@dataclass(frozen=True)
class BenchReport:
    """Every level's result and what was run."""

    options: BenchOptions
    inputs: dict[str, list[int]]  # input name → shape sent
    levels: tuple[LevelResult, ...]
    interrupted: bool = False
    stopped: str = ""  # why the run stopped early, if it did

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        options = asdict(self.options)
        options["data"] = str(self.options.data) if self.options.data else None
        options["concurrency"] = list(self.options.concurrency)
        options["shapes"] = {k: list(v) for k, v in self.options.shapes.items()}
        return {
            "options": options,
            "inputs": self.inputs,
            "levels": [level.to_dict() for level in self.levels],
            "interrupted": self.interrupted,
            "stopped": self.stopped,
        }


# --------------------------------------------------------------------------- argument parsing


def parse_concurrency(text: str) -> tuple[int, ...]:
    """``16``, a list ``1,4,16``, or a range ``start:end[:step]`` as perf_analyzer takes."""
    try:
        if ":" in text:
            parts = [int(p) for p in text.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            start, end = parts[0], parts[1]
            step = parts[2] if len(parts) == 3 else 1
            if start < 1 or end < start or step < 1:
                raise ValueError
            levels = tuple(range(start, end + 1, step))
        else:
            levels = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise BenchError(
            f"concurrency {text!r}: expected N, a list like 1,4,16, or a range start:end[:step]"
        ) from None
    if not levels or min(levels) < 1:
        raise BenchError(f"concurrency {text!r}: levels must be ≥ 1")
    return levels


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``NAME:D1,D2,...``: the full shape of one input (its first dimension included)."""
    name, sep, dims = text.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) < 1:
        raise BenchError(f"--shape {text!r}: expected NAME:D1,D2,... with positive dimensions")
    return name, shape


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class _Workload:
    payloads: tuple[bytes, ...]  # serialised ModelInferRequest messages
    rows: int  # rows per request
    shapes: dict[str, list[int]]


def _input_shape(
    spec: pb.ModelMetadataResponse.TensorMetadata, options: BenchOptions
) -> tuple[int, ...]:
    if spec.name in options.shapes:
        return options.shapes[spec.name]
    dims = list(spec.shape)
    if dims and dims[0] == -1:
        dims[0] = options.batch_size
    if any(d < 0 for d in dims):
        raise BenchError(
            f"model {options.model!r}: input {spec.name!r} has shape {list(spec.shape)} with "
            f"dynamic dimensions besides the batch; give its shape: --shape {spec.name}:D1,D2,..."
        )
    return tuple(dims)


def _random_tensor(rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, 0), min(info.max, 100) + 1, size=shape).astype(dtype)


def _load_data(options: BenchOptions, names: Sequence[str]) -> dict[str, np.ndarray]:
    path = options.data
    assert path is not None
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BenchError(f"input data {path}: cannot read it as .npy/.npz: {exc}") from exc
    if isinstance(loaded, np.ndarray):
        if len(names) != 1:
            raise BenchError(
                f"input data {path}: one array, but model {options.model!r} has "
                f"{len(names)} inputs ({', '.join(names)}); give an .npz keyed by input name"
            )
        return {names[0]: loaded}
    with loaded:
        missing = [n for n in names if n not in loaded.files]
        if missing:
            raise BenchError(
                f"input data {path}: no array for input(s) {', '.join(missing)}; "
                f"it holds {', '.join(loaded.files) or 'nothing'}"
            )
        return {n: loaded[n] for n in names}


def build_workload(metadata: pb.ModelMetadataResponse, options: BenchOptions) -> _Workload:
    """Serialised requests to cycle through: random of the model's shapes, or from a file."""
    specs = list(metadata.inputs)
    if not specs:
        raise BenchError(f"model {options.model!r}: the server reports no inputs")
    for spec in specs:
        if spec.datatype not in DATATYPES:
            raise BenchError(
                f"model {options.model!r}: input {spec.name!r} has datatype {spec.datatype}, "
                "which bench cannot generate"
            )
        if options.contents == "typed" and spec.datatype not in CONTENTS_FIELD:
            raise BenchError(
                f"model {options.model!r}: input {spec.name!r} is {spec.datatype}, which has "
                "no typed contents field; use --contents raw"
            )
    shapes = {s.name: _input_shape(s, options) for s in specs}
    batched = [s.name for s in specs if list(s.shape)[:1] == [-1]]
    rows = shapes[batched[0]][0] if batched else 1
    arrays: list[dict[str, np.ndarray]] = []
    if options.data is None:
        rng = np.random.default_rng(options.seed)
        for _ in range(min(MAX_PAYLOADS, 8)):
            arrays.append(
                {s.name: _random_tensor(rng, DATATYPES[s.datatype], shapes[s.name]) for s in specs}
            )
    else:
        data = _load_data(options, [s.name for s in specs])
        arrays = _slices(data, specs, shapes, options)
    payloads = tuple(_request(options, specs, tensors) for tensors in arrays)
    return _Workload(payloads, rows, {k: list(v) for k, v in shapes.items()})


def _slices(
    data: dict[str, np.ndarray],
    specs: Sequence[pb.ModelMetadataResponse.TensorMetadata],
    shapes: dict[str, tuple[int, ...]],
    options: BenchOptions,
) -> list[dict[str, np.ndarray]]:
    """Consecutive request-sized slices of the file's rows (wrapping round)."""
    converted: dict[str, np.ndarray] = {}
    for spec in specs:
        array = data[spec.name]
        want = shapes[spec.name]
        dtype = DATATYPES[spec.datatype]
        batched = list(spec.shape)[:1] == [-1]
        per_row = want[1:] if batched else want
        if array.shape[1 if batched else 0 :] != per_row or (batched and array.shape[0] < 1):
            raise BenchError(
                f"input data {options.data}: {spec.name!r} has shape {list(array.shape)}; "
                f"expected {'[rows, ' + ', '.join(map(str, per_row)) + ']' if batched else want}"
            )
        if not np.can_cast(array.dtype, dtype, casting="same_kind"):
            raise BenchError(
                f"input data {options.data}: {spec.name!r} is {array.dtype}, which does not "
                f"convert to {spec.datatype} without changing kind"
            )
        converted[spec.name] = array.astype(dtype, copy=False)
    first = next((s.name for s in specs if list(s.shape)[:1] == [-1]), None)
    if first is None:
        return [converted]
    total = converted[first].shape[0]
    rows = shapes[first][0]
    count = min(MAX_PAYLOADS, max(1, math.ceil(total / rows)))
    out = []
    for index in range(count):
        take = np.arange(index * rows, (index + 1) * rows) % total
        out.append(
            {
                name: (array[take] if list(spec.shape)[:1] == [-1] else array)
                for spec, (name, array) in zip(specs, converted.items(), strict=True)
            }
        )
    return out


def _request(
    options: BenchOptions,
    specs: Sequence[pb.ModelMetadataResponse.TensorMetadata],
    tensors: dict[str, np.ndarray],
) -> bytes:
    request = pb.ModelInferRequest(model_name=options.model, model_version=options.version)
    for spec in specs:
        array = tensors[spec.name]
        tensor = request.inputs.add(name=spec.name, datatype=spec.datatype, shape=array.shape)
        if options.contents == "raw":
            request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
        else:
            getattr(tensor.contents, CONTENTS_FIELD[spec.datatype]).extend(array.ravel().tolist())
    return request.SerializeToString()


# --------------------------------------------------------------------------- running


async def fetch_metadata(
    channel: grpc.aio.Channel, options: BenchOptions
) -> pb.ModelMetadataResponse:
    """The model's metadata; BenchError saying why not (server down, unknown model)."""
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelMetadataRequest(name=options.model, version=options.version)
    try:
        response: pb.ModelMetadataResponse = await stub.ModelMetadata(
            request, timeout=options.connect_timeout
        )
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.NOT_FOUND:
            raise BenchError(
                f"model {options.model!r} not found on {options.target}: {exc.details()}"
            ) from None
        if code == grpc.StatusCode.UNAVAILABLE:
            raise BenchError(
                f"cannot reach an inference server at {options.target} "
                f"(is it running?): {exc.details()}"
            ) from None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise BenchError(
                f"no answer from {options.target} within {options.connect_timeout:g} s"
            ) from None
        raise BenchError(
            f"ModelMetadata for {options.model!r} at {options.target} failed: "
            f"{code.name}: {exc.details()}"
        ) from None
    return response


class _Level:
    """Shared state of the workers at one concurrency level."""

    def __init__(self, options: BenchOptions, concurrency: int, stop: asyncio.Event) -> None:
        self.options = options
        self.concurrency = concurrency
        self.stop = stop  # the user's Ctrl-C: ends this level and the run
        self.done = False  # the level's time or count is up
        self.recording = options.warmup == 0
        self.tickets = options.requests if options.requests is not None else -1
        self.latencies = array("d")
        self.errors: Counter[str] = Counter()
        self.samples: dict[str, str] = {}
        self.unavailable_run = 0  # UNAVAILABLE answers since the last OK one
        self.lost = ""

    def take_ticket(self) -> bool:
        if self.done or self.stop.is_set():
            return False
        if self.recording and self.tickets >= 0:
            if self.tickets == 0:
                self.done = True
                return False
            self.tickets -= 1
        return True

    def ok(self, seconds: float, counted: bool) -> None:
        """One OK answer; ``counted``: it was sent after the warm-up."""
        self.unavailable_run = 0
        if counted:
            self.latencies.append(seconds)

    def error(self, code: str, message: str, counted: bool) -> None:
        """One failed request, by status code name."""
        if code == "UNAVAILABLE":
            self.unavailable_run += 1
            if self.unavailable_run >= LOST_AFTER:
                self.lost = f"the server stopped answering ({LOST_AFTER} UNAVAILABLE in a row)"
                self.done = True
        if counted:
            self.errors[code] += 1
            self.samples.setdefault(code, message[:300])


async def _unary_worker(
    channel: grpc.aio.Channel, level: _Level, payloads: Sequence[bytes]
) -> None:
    call = channel.unary_unary(INFER_METHOD)  # bytes in, bytes out: nothing parsed
    timeout = level.options.timeout
    index = 0
    clock = time.perf_counter
    while level.take_ticket():
        payload = payloads[index % len(payloads)]
        index += 1
        counted = level.recording
        started = clock()
        try:
            await call(payload, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            level.error(exc.code().name, exc.details() or "", counted)
            continue
        level.ok(clock() - started, counted)


async def _stream_worker(
    channel: grpc.aio.Channel, level: _Level, payloads: Sequence[bytes]
) -> None:
    method = channel.stream_stream(
        STREAM_METHOD, response_deserializer=pb.ModelStreamInferResponse.FromString
    )
    stream = method(timeout=None)
    index = 0
    clock = time.perf_counter
    counted = False
    try:
        while level.take_ticket():
            payload = payloads[index % len(payloads)]
            index += 1
            counted = level.recording
            started = clock()
            await stream.write(payload)
            message = await stream.read()
            if message is grpc.aio.EOF:
                level.error("UNAVAILABLE", "the server closed the stream", counted)
                return
            if message.error_message:
                level.error(STREAM_ERROR, message.error_message, counted)
            else:
                level.ok(clock() - started, counted)
        await stream.done_writing()
        while await stream.read() is not grpc.aio.EOF:
            pass  # nothing is in flight: the server just closes its side
    except grpc.aio.AioRpcError as exc:
        level.error(exc.code().name, exc.details() or "", counted)
    finally:
        if not stream.done():
            stream.cancel()


async def _run_level(
    channel: grpc.aio.Channel,
    options: BenchOptions,
    workload: _Workload,
    concurrency: int,
    stop: asyncio.Event,
    progress: Progress | None,
) -> tuple[LevelResult, str]:
    level = _Level(options, concurrency, stop)
    worker = _stream_worker if options.streaming else _unary_worker
    loop = asyncio.get_running_loop()
    tasks = [
        loop.create_task(worker(channel, level, workload.payloads)) for _ in range(concurrency)
    ]
    all_done = asyncio.gather(*tasks)
    started = loop.time()
    if options.warmup:
        await _wait_any(all_done, stop, options.warmup)
        level.recording = True
    measured_from = loop.time()
    deadline = measured_from + options.duration if options.duration is not None else None
    while not all_done.done() and not stop.is_set():
        remaining = None if deadline is None else deadline - loop.time()
        if remaining is not None and remaining <= 0:
            break
        step = PROGRESS_EVERY if remaining is None else min(PROGRESS_EVERY, remaining)
        await _wait_any(all_done, stop, step)
        if progress is not None:
            progress.update(level, loop.time() - measured_from, loop.time() - started)
    level.done = True
    await all_done  # each worker finishes the one request it has in flight
    seconds = loop.time() - measured_from
    if progress is not None:
        progress.finish()
    latencies = np.frombuffer(level.latencies, dtype=np.float64) * 1000.0
    if latencies.size:
        p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
        summary = {
            "p50": float(p50),
            "p90": float(p90),
            "p99": float(p99),
            "max": float(latencies.max()),
            "mean": float(latencies.mean()),
        }
    else:
        summary = dict.fromkeys(("p50", "p90", "p99", "max", "mean"), math.nan)
    result = LevelResult(
        concurrency=concurrency,
        ok=int(latencies.size),
        errors=dict(level.errors),
        error_samples=dict(level.samples),
        rows=int(latencies.size) * workload.rows,
        seconds=seconds,
        latency_ms=summary,
        interrupted=stop.is_set(),
    )
    return result, level.lost


async def _wait_any(future: asyncio.Future[Any], stop: asyncio.Event, timeout: float) -> None:
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((future, stopper), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()


async def run_bench(
    options: BenchOptions,
    stop: asyncio.Event | None = None,
    progress: Progress | None = None,
    on_level: Callable[[LevelResult], None] | None = None,
) -> BenchReport:
    """Run every concurrency level; ``stop`` (Ctrl-C) ends early with partial results."""
    stop = stop or asyncio.Event()
    channel_options = [
        ("grpc.max_receive_message_length", 256 * 1024 * 1024),
        ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ]
    async with grpc.aio.insecure_channel(options.target, options=channel_options) as channel:
        metadata = await fetch_metadata(channel, options)
        workload = build_workload(metadata, options)
        levels: list[LevelResult] = []
        stopped = ""
        for concurrency in options.concurrency:
            if stop.is_set():
                break
            result, lost = await _run_level(channel, options, workload, concurrency, stop, progress)
            levels.append(result)
            if on_level is not None:
                on_level(result)
            if lost:
                stopped = lost
                break
    return BenchReport(options, workload.shapes, tuple(levels), stop.is_set(), stopped)


# --------------------------------------------------------------------------- output


class Progress:
    """A one-line progress bar redrawn in place on a terminal (stderr)."""

    WIDTH = 24

    def __init__(self, stream: TextIO, options: BenchOptions) -> None:
        self._stream = stream
        self._options = options

    def update(self, level: _Level, measured: float, elapsed: float) -> None:
        """Redraw the bar for ``level``."""
        options = self._options
        count = len(level.latencies)
        errors = sum(level.errors.values())
        if not level.recording:
            fraction, what = 0.0, f"warm-up {elapsed:.1f}/{options.warmup:g} s"
        elif options.duration is not None:
            fraction = min(1.0, measured / options.duration)
            what = f"{measured:.1f}/{options.duration:g} s"
        else:
            assert options.requests is not None
            fraction = min(1.0, (count + errors) / options.requests)
            what = f"{count + errors}/{options.requests} requests"
        filled = round(fraction * self.WIDTH)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        rate = count / measured if measured > 0 and level.recording else 0.0
        self._stream.write(
            f"\rconcurrency {level.concurrency:>4} [{bar}] {fraction:4.0%} {what}  "
            f"{count} ok  {rate:,.0f} req/s  {errors} errors "
        )
        self._stream.flush()

    def finish(self) -> None:
        """End the bar's line."""
        self._stream.write("\n")
        self._stream.flush()


def format_report(report: BenchReport) -> str:
    """The results as a plain-text table, with errors by code underneath."""
    o = report.options
    mode = "streaming" if o.streaming else "unary"
    length = f"{o.duration:g} s" if o.duration is not None else f"{o.requests} requests"
    shapes = ", ".join(f"{name} {shape}" for name, shape in report.inputs.items())
    lines = [
        f"model {o.model}{' v' + o.version if o.version else ''} at {o.target}: {shapes}, "
        f"{o.contents} contents, {mode}, {length} per level"
        + (f" after {o.warmup:g} s warm-up" if o.warmup else ""),
        "",
        f"{'concurrency':>11} {'requests':>9} {'req/s':>10} {'rows/s':>11} "
        f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7}",
    ]
    for r in report.levels:
        lat = r.latency_ms
        lines.append(
            f"{r.concurrency:>11} {r.ok:>9} {r.requests_per_second:>10,.1f} "
            f"{r.rows_per_second:>11,.1f} {lat['p50']:>8.3f} {lat['p90']:>8.3f} "
            f"{lat['p99']:>8.3f} {lat['max']:>8.3f} {sum(r.errors.values()):>7}"
            + ("  (interrupted)" if r.interrupted else "")
        )
    for r in report.levels:
        for code, count in sorted(r.errors.items()):
            lines.append(
                f"errors at concurrency {r.concurrency}: {code} × {count}: "
                f"{r.error_samples.get(code, '')}"
            )
    if report.interrupted:
        lines.append("interrupted: partial results")
    if report.stopped:
        lines.append(f"stopped early: {report.stopped}")
    return "\n".join(lines)


def report_json(report: BenchReport) -> str:
    """The results as one JSON document (NaN latencies become null)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(report.to_dict()), indent=2)


def progress_for(enabled: bool | None, options: BenchOptions) -> Progress | None:
    """A progress bar on stderr when asked, or by default when stderr is a terminal."""
    show = sys.stderr.isatty() if enabled is None else enabled
    return Progress(sys.stderr, options) if show else None
