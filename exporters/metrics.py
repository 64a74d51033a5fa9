"""Every metric family of the serving path, declared once against an injected registry.

``SidecarMetrics(registry, ...)`` declares the families; nothing registers at
import, and nothing here touches prometheus_client's global default registry.
``SidecarMetrics.model(...)`` returns a ``ModelMetrics``: the label children of
one model version, resolved once when the model loads, so that observing a
request is a few attribute reads and counter increments (microseconds), not a
label lookup per request. Output distributions (classes, confidence,
regression values, NaN counts) are analysed off the request path by
``exporters.outputs.OutputCollector``.

Label values come from configuration, from the model file, or from fixed sets
in the server (gRPC status names, refusal reasons); never from client input. A
request that names no served model is counted under ``model=""``; a predicted
class index that is not a configured class is counted as ``class="other"``.

This package never imports ``sidecar``: the server hands in plain values.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporters.counter import CounterChild, CounterFamily
from exporters.histogram import ArrayHistogram
from exporters.outputs import OutputCollector, OutputMonitoring

PREFIX = "sidecar_"

#: ``model`` label value of requests that named no served model (and of
#: refusals before a model was resolved). No model directory can have this name.
UNKNOWN_MODEL = ""
#: Rows per executed batch.
BATCH_SIZE_BUCKETS: tuple[float, ...] = (
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536,
)  # fmt: skip
_MODEL = ("model", "version")


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What was loaded, where, and how big (from the runtime)."""

    runtime: str
    runtime_version: str
    device: str
    opset: str
    sha256: str
    parameters: int
    layers: int
    size_bytes: int
    load_seconds: float
    operators: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InflightCount:
    """Requests inside one model version right now."""

    model: str
    version: str
    requests: int


@dataclass(frozen=True, slots=True)
class InflightSnapshot:
    """What the in-flight collector reads at scrape time."""

    server: int  # accepted by the server, not yet answered
    models: Sequence[InflightCount] = ()


@dataclass(frozen=True, slots=True)
class ModelCalls:
    """The call state of one model version, counted in memory by the server."""

    model: str
    version: str
    queued: int  # requests waiting in the batcher now
    overdue: int  # calls past the model's timeout that have not returned (stalled if > 0)
    timeouts: int  # calls that ran past the model's timeout, since the model loaded
    abandoned: Mapping[str, int] = field(default_factory=dict)  # reason → calls


@dataclass(frozen=True, slots=True)
class ServerState:
    """What the server-state collector reads at scrape time (all counts kept by the server).

    ``auth`` maps (policy, outcome) to calls for every configured policy (empty: no
    service is guarded); ``tls_reloads`` and ``tls_reload_failures`` map a listener
    (``grpc``, ``metrics``) to counts, only for listeners that serve TLS.
    """

    models: Sequence[ModelCalls] = ()
    auth: Mapping[tuple[str, str], int] = field(default_factory=dict)
    tls_reloads: Mapping[str, int] = field(default_factory=dict)
    tls_reload_failures: Mapping[str, int] = field(default_factory=dict)


def dependency_version(*distributions: str) -> str:
    """Installed version of the first distribution found, or "" when none is installed."""
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return ""


class SidecarMetrics:
    """The serving, model and output metric families, bound to one registry."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        latency_buckets: Sequence[float],
        sidecar_version: str,
    ) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        r = registry
        p = PREFIX

        # serving: updated on every request, so collectors cheaper per call than
        # prometheus_client's (exporters.counter, exporters.histogram), same exposition
        self.requests = CounterFamily(
            f"{p}inference_requests_total",
            "ModelInfer requests answered, by gRPC status code name.",
            [*_MODEL, "code"],
            registry=r,
        )
        self.samples = CounterFamily(
            f"{p}inference_samples_total",
            "Rows (batch dimension) of successfully answered requests.",
            _MODEL,
            registry=r,
        )
        self.request_duration = ArrayHistogram(
            f"{p}request_duration_seconds",
            "Server-side end-to-end time of successful ModelInfer requests.",
            _MODEL,
            latency_buckets,
            registry=r,
            unit="seconds",
        )
        self.queue_duration = ArrayHistogram(
            f"{p}queue_duration_seconds",
            "Time successful requests waited in the batcher before execution.",
            _MODEL,
            latency_buckets,
            registry=r,
            unit="seconds",
        )
        self.compute_duration = ArrayHistogram(
            f"{p}compute_duration_seconds",
            "Model execution time per executed batch.",
            _MODEL,
            latency_buckets,
            registry=r,
            unit="seconds",
        )
        self.batch_size = ArrayHistogram(
            f"{p}batch_size",
            "Rows per executed batch.",
            _MODEL,
            BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            f"{p}rejected_requests_total",
            "Requests refused, by reason (a limit, queue_full, model_stalled, shutting_down, "
            "...); all before the model ran except response_too_large.",
            ["model", "reason"],
            registry=r,
        )

        # models
        self.model_ready = Gauge(
            f"{p}model_ready",
            "1 when the model version is loaded and serving, 0 otherwise.",
            _MODEL,
            registry=r,
        )
        self.model_info = Gauge(
            f"{p}model_info",
            "Always 1: what is loaded where (runtime, device, opset, first 12 hex of sha256).",
            [*_MODEL, "runtime", "runtime_version", "device", "opset", "sha256"],
            registry=r,
        )
        self.model_parameters = Gauge(
            f"{p}model_parameters",
            "Parameter count of the model.",
            _MODEL,
            registry=r,
        )
        self.model_layers = Gauge(
            f"{p}model_layers",
            "ONNX graph nodes or torch leaf modules.",
            _MODEL,
            registry=r,
        )
        self.model_operators = Gauge(
            f"{p}model_operators",
            "Operator (ONNX node / torch module) count by type.",
            [*_MODEL, "op_type"],
            registry=r,
        )
        self.model_size = Gauge(
            f"{p}model_size_bytes",
            "Size of the model file.",
            _MODEL,
            unit="bytes",
            registry=r,
        )
        self.model_load_duration = Gauge(
            f"{p}model_load_duration_seconds",
            "Time the last successful load of the model version took.",
            _MODEL,
            unit="seconds",
            registry=r,
        )
        self.model_load_failures = Counter(
            f"{p}model_load_failures_total",
            "Model loads that failed (bad file, bad config, monitoring mismatch).",
            ["model"],
            registry=r,
        )

        # outputs: analysed off the request path (see exporters.outputs)
        self.outputs = OutputCollector(r)

        # build
        self.build_info = Gauge(
            f"{p}build_info",
            "Always 1: versions of the sidecar, Python and the model runtimes ('' = absent).",
            ["version", "python", "onnxruntime", "torch"],
            registry=r,
        )
        self.build_info.labels(
            sidecar_version,
            platform.python_version(),
            dependency_version("onnxruntime", "onnxruntime-gpu"),
            dependency_version("torch"),
        ).set(1)

        self._info_labels: dict[tuple[str, str], tuple[str, ...]] = {}
        self._operator_labels: dict[tuple[str, str], tuple[str, ...]] = {}
        self._inflight: InflightCollector | None = None
        self._state: ServerStateCollector | None = None

    # ------------------------------------------------------------------ handles

    def model(
        self, name: str, version: str, monitoring: OutputMonitoring | None = None
    ) -> ModelMetrics:
        """The label children of one model version (resolve once, keep it)."""
        return ModelMetrics(self, name, version, monitoring or OutputMonitoring())

    def unknown_model(self) -> RequestCounters:
        """Counters for requests that named no served model (``model=""``)."""
        return RequestCounters(self, UNKNOWN_MODEL, "")

    # ------------------------------------------------------------------ lifecycle

    def model_loaded(self, name: str, version: str, facts: ModelFacts) -> None:
        """A model version is serving: set its ready, info and complexity gauges."""
        key = (name, version)
        info = (
            name,
            version,
            facts.runtime,
            facts.runtime_version,
            facts.device,
            facts.opset,
            facts.sha256,
        )
        with self._lock:
            old = self._info_labels.get(key)
            if old is not None and old != info:
                self.model_info.remove(*old)
            self._info_labels[key] = info
            old_ops = self._operator_labels.get(key, ())
            for op in old_ops:
                if op not in facts.operators:
                    self.model_operators.remove(name, version, op)
            self._operator_labels[key] = tuple(facts.operators)
        self.model_info.labels(*info).set(1)
        for op, count in facts.operators.items():
            self.model_operators.labels(name, version, op).set(count)
        self.model_parameters.labels(name, version).set(facts.parameters)
        self.model_layers.labels(name, version).set(facts.layers)
        self.model_size.labels(name, version).set(facts.size_bytes)
        self.model_load_duration.labels(name, version).set(facts.load_seconds)
        self.model_ready.labels(name, version).set(1)

    def model_failed(self, name: str, version: str) -> None:
        """A model (version) failed to load; ``version`` is "" for repository problems."""
        self.model_load_failures.labels(name).inc()
        if version:
            self.model_ready.labels(name, version).set(0)

    def model_unloaded(self, name: str, version: str) -> None:
        """A model version stopped serving."""
        self.model_ready.labels(name, version).set(0)

    # ------------------------------------------------------------------ scrape-time state

    def watch_inflight(self, source: Callable[[], InflightSnapshot]) -> None:
        """Read in-flight request counts from ``source`` at every scrape (call once)."""
        if self._inflight is not None:
            raise RuntimeError("watch_inflight called twice")
        self._inflight = InflightCollector(source)
        self.registry.register(self._inflight)

    def watch_server(self, source: Callable[[], ServerState]) -> None:
        """Read queue depths, stalls, authorisation and TLS counts at every scrape (call once)."""
        if self._state is not None:
            raise RuntimeError("watch_server called twice")
        self._state = ServerStateCollector(source)
        self.registry.register(self._state)


class RequestCounters:
    """Requests by code and refusals by reason for one ``model`` label value."""

    __slots__ = ("_codes", "_name", "_reasons", "_rejected", "_requests", "_version")

    def __init__(self, metrics: SidecarMetrics, name: str, version: str) -> None:
        self._name = name
        self._version = version
        self._requests = metrics.requests
        self._rejected = metrics.rejected
        self._codes: dict[str, CounterChild] = {}
        self._reasons: dict[str, Counter] = {}

    def _code(self, code: str) -> CounterChild:
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = self._requests.labels(self._name, self._version, code)
        return child

    def request(self, code: str, reason: str = "") -> None:
        """Count one answered request; ``reason`` (set for refusals) also counts a rejection."""
        self._code(code).inc()
        if reason:
            child = self._reasons.get(reason)
            if child is None:
                child = self._reasons[reason] = self._rejected.labels(self._name, reason)
            child.inc()


class ModelMetrics(RequestCounters):
    """Every label child of one model version, resolved once."""

    __slots__ = (
        "_batch",
        "_compute",
        "_duration",
        "_ok",
        "_output_stats",
        "_outputs",
        "_queue",
        "_samples",
    )

    def __init__(
        self, metrics: SidecarMetrics, name: str, version: str, monitoring: OutputMonitoring
    ) -> None:
        super().__init__(metrics, name, version)
        self._ok = self._code("OK")
        self._samples = metrics.samples.labels(name, version)
        self._duration = metrics.request_duration.labels(name, version)
        self._queue = metrics.queue_duration.labels(name, version)
        self._compute = metrics.compute_duration.labels(name, version)
        self._batch = metrics.batch_size.labels(name, version)
        self._outputs = metrics.outputs
        self._output_stats = metrics.outputs.stats(name, version, monitoring)

    def request_done(
        self,
        code: str,
        rows: int,
        duration: float,
        queue_seconds: float = 0.0,
        outputs: Mapping[str, np.ndarray] | None = None,
        reason: str = "",
    ) -> None:
        """Observe one answered request (the hot path: a few microseconds).

        Outputs are queued for analysis off the request path (``exporters.outputs``).
        """
        if code != "OK":
            self.request(code, reason)
            return
        self._ok.inc()
        self._samples.inc(rows)
        self._duration.observe(duration)
        self._queue.observe(queue_seconds)
        if outputs and self._output_stats is not None:
            self._outputs.submit(self._output_stats, outputs)

    def batch_done(self, rows: int, compute_seconds: float) -> None:
        """Observe one executed batch."""
        self._compute.observe(compute_seconds)
        self._batch.observe(rows)


class InflightCollector(Collector):
    """Reads in-flight request counts at scrape time (no work on the request path)."""

    def __init__(self, source: Callable[[], InflightSnapshot]) -> None:
        self._source = source

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                f"{PREFIX}inflight_requests",
                "Requests inside a model version (queued or executing) right now.",
                labels=_MODEL,
            ),
            GaugeMetricFamily(
                f"{PREFIX}server_inflight_requests",
                "Requests the server has accepted and not yet answered, all models.",
            ),
        )

    def describe(self) -> Iterable[Metric]:
        """Families without samples."""
        return self._families()

    def collect(self) -> Iterator[Metric]:
        """Current counts."""
        snapshot = self._source()
        per_model, server = self._families()
        for item in snapshot.models:
            per_model.add_metric([item.model, item.version], item.requests)
        server.add_metric([], snapshot.server)
        yield per_model
        yield server


class ServerStateCollector(Collector):
    """Counts the server keeps in memory, exported at scrape time (no request-path work).

    Per model version: batcher queue depth, calls past the model's timeout
    (stalled), model timeouts and abandoned calls. Per authorisation policy: calls
    by outcome. Per TLS listener: certificate reloads and failed reloads. The
    authorisation and TLS families are absent when nothing is guarded or no
    listener serves TLS.
    """

    def __init__(self, source: Callable[[], ServerState]) -> None:
        self._source = source

    def _families(
        self,
    ) -> tuple[
        GaugeMetricFamily,
        GaugeMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
    ]:
        return (
            GaugeMetricFamily(
                f"{PREFIX}queue_depth",
                "Requests waiting in the batcher for a batch now (0 without batching).",
                labels=_MODEL,
            ),
            GaugeMetricFamily(
                f"{PREFIX}model_overdue_calls",
                "Model calls past the model's timeout that have not returned; "
                "above 0 the model is stalled (refuses requests, health NOT_SERVING).",
                labels=_MODEL,
            ),
            CounterMetricFamily(
                f"{PREFIX}model_timeouts",
                "Model calls that ran past the model's timeout (each stalls the model "
                "until it returns).",
                labels=_MODEL,
            ),
            CounterMetricFamily(
                f"{PREFIX}model_calls_abandoned",
                "Model calls a request stopped waiting for while the model ran on, by reason "
                "(timeout, deadline, cancelled).",
                labels=[*_MODEL, "reason"],
            ),
            CounterMetricFamily(
                f"{PREFIX}auth_requests",
                "Calls to guarded services by policy and outcome (allowed, unauthenticated, "
                "permission_denied).",
                labels=["policy", "outcome"],
            ),
            CounterMetricFamily(
                f"{PREFIX}tls_reloads",
                "TLS certificate files reloaded after they changed on disk, by listener.",
                labels=["listener"],
            ),
            CounterMetricFamily(
                f"{PREFIX}tls_reload_failures",
                "Changed TLS files that could not be used (unreadable, not PEM, key not "
                "matching the certificate); the previous certificates stay in use.",
                labels=["listener"],
            ),
        )

    def describe(self) -> Iterable[Metric]:
        """Families without samples."""
        return self._families()

    def collect(self) -> Iterator[Metric]:
        """Current counts; the authorisation and TLS families only when they have series."""
        state = self._source()
        queue, overdue, timeouts, abandoned, auth, reloads, failures = self._families()
        for m in state.models:
            key = [m.model, m.version]
            queue.add_metric(key, m.queued)
            overdue.add_metric(key, m.overdue)
            timeouts.add_metric(key, m.timeouts)
            for reason, calls in m.abandoned.items():
                abandoned.add_metric([*key, reason], calls)
        for (policy, outcome), calls in state.auth.items():
            auth.add_metric([policy, outcome], calls)
        for listener, count in state.tls_reloads.items():
            reloads.add_metric([listener], count)
        for listener, count in state.tls_reload_failures.items():
            failures.add_metric([listener], count)
        yield from (queue, overdue, timeouts, abandoned)
        yield from (f for f in (auth, reloads, failures) if f.samples)
