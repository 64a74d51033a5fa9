"""The typed configuration tree: the server's ``sidecar.yaml`` and each model's ``config.yaml``.

Both are pydantic models validated once at start-up. Unknown keys are errors
(a typo must not be silently ignored). Server settings can be overridden by
environment variables ``SIDECAR_<FIELD>__<SUBFIELD>`` (for example
``SIDECAR_GRPC__PORT=9001``), which win over the file. Every error names the
file (or variable), the field and what was expected. ``docs/configuration.md``
documents every option.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sidecar.errors import ConfigError

ENV_PREFIX = "SIDECAR_"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

Device = str
DataTypeName = Literal[
    "BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
    "FP16", "FP32", "FP64",
]  # fmt: skip

#: Default latency buckets (seconds): 50 µs to 10 s, roughly ×2 apart.
DEFAULT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


#: gRPC's message size options are C ints: 2 GiB - 1 at most.
MAX_GRPC_MESSAGE_BYTES = 2**31 - 1


class _Section(BaseModel):
    """Base of every config section: unknown keys are errors, instances immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_device(value: str | None) -> str | None:
    if value is not None and not _DEVICE.match(value):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}")
    return value


# --------------------------------------------------------------------------- server


class TlsConfig(_Section):
    """TLS on a port (mutual TLS with ``client_ca_file``); the files are re-read on change."""

    cert_file: Path | None = Field(None, description="PEM certificate chain; set with key_file")
    key_file: Path | None = Field(None, description="PEM private key of cert_file")
    client_ca_file: Path | None = Field(
        None, description="PEM CA bundle; every client must present a certificate it signed"
    )

    @model_validator(mode="after")
    def _complete(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("client_ca_file (mutual TLS) needs cert_file and key_file")
        return self

    @property
    def enabled(self) -> bool:
        """True when the port serves TLS."""
        return self.cert_file is not None


class GrpcConfig(_Section):
    """The gRPC listener (KServe v2 inference, feedback, health, reflection)."""

    host: str = Field(
        "0.0.0.0",  # noqa: S104 - a sidecar listens on the pod network by design
        description="address to bind; :: for IPv6, 127.0.0.1 for same-pod callers only",
    )
    port: int = Field(8001, ge=0, le=65535, description="0 picks a free port")
    max_message_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        le=MAX_GRPC_MESSAGE_BYTES,
        description="larger requests and responses fail with RESOURCE_EXHAUSTED "
        "(reason request_too_large / response_too_large)",
    )
    transport_max_message_bytes: int | None = Field(
        None,
        ge=1024,
        le=MAX_GRPC_MESSAGE_BYTES,
        description="gRPC core's receive limit, at least max_message_bytes: core refuses a "
        "larger request before buffering it, and that refusal is not counted; between the two "
        "the server buffers the message to refuse and count it. None: twice max_message_bytes",
    )
    tls: TlsConfig = TlsConfig()
    health_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="extra plaintext port serving only grpc.health.v1, for kubelet gRPC probes "
        "(they cannot speak TLS); None: health on the main port only",
    )

    @model_validator(mode="after")
    def _transport_holds_the_limit(self) -> GrpcConfig:
        ceiling = self.transport_max_message_bytes
        if ceiling is not None and ceiling < self.max_message_bytes:
            raise ValueError(
                f"transport_max_message_bytes ({ceiling}) must be at least max_message_bytes "
                f"({self.max_message_bytes}): gRPC core would refuse allowed messages"
            )
        return self

    @property
    def transport_limit(self) -> int:
        """``transport_max_message_bytes``, or by default twice ``max_message_bytes``."""
        if self.transport_max_message_bytes is not None:
            return self.transport_max_message_bytes
        return min(2 * self.max_message_bytes, MAX_GRPC_MESSAGE_BYTES)


class MetricsConfig(_Section):
    """The Prometheus HTTP endpoint (``/metrics``, ``/healthz``)."""

    enabled: bool = Field(True, description="serve /metrics and /healthz")
    host: str = Field(
        "0.0.0.0",  # noqa: S104 - scraped from outside the pod
        description="address to bind",
    )
    port: int = Field(8002, ge=0, le=65535, description="0 picks a free port")
    tls: TlsConfig = TlsConfig()
    latency_buckets: tuple[float, ...] = Field(
        DEFAULT_LATENCY_BUCKETS, description="histogram buckets (seconds) of every duration"
    )

    @field_validator("latency_buckets")
    @classmethod
    def _increasing(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(b <= a for a, b in itertools.pairwise(value)) or value[0] <= 0:
            raise ValueError("latency_buckets must be positive and strictly increasing")
        return value


class LimitsConfig(_Section):
    """Per-request limits; exceeding one is RESOURCE_EXHAUSTED naming the limit."""

    max_batch_rows: int = Field(65536, ge=1, description="rows (first dimension) per request")
    max_tensor_elements: int = Field(64 * 1024 * 1024, ge=1, description="elements per tensor")
    max_inputs: int = Field(64, ge=1, description="input tensors per request")
    max_request_id_length: int = Field(
        256, ge=1, description="characters in a client-sent request id (a label-store key)"
    )
    max_concurrent_requests: int = Field(
        256, ge=0, description="requests inside one model at once (0 = no limit)"
    )
    max_stream_inflight: int = Field(
        64,
        ge=1,
        description="messages of one ModelStreamInfer call not yet answered; "
        "beyond it the server stops reading the stream (flow control)",
    )
    model_timeout_seconds: float = Field(
        30.0,
        ge=0,
        description="a model call running longer fails with DEADLINE_EXCEEDED (0 = none)",
    )


class ShutdownConfig(_Section):
    """What SIGTERM does: report NOT_SERVING, wait, drain in-flight work, exit 0."""

    drain_delay_seconds: float = Field(
        0.0, ge=0, description="time between NOT_SERVING and refusing new requests"
    )
    grace_period_seconds: float = Field(10.0, ge=0, description="time in-flight requests get")


class LoggingConfig(_Section):
    """Log level and format."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")
    json_format: bool = Field(False, alias="json", description="one JSON object per line")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ThreadsConfig(_Section):
    """Thread pools: model execution and the runtimes' own pools (0 = library default)."""

    executor_workers: int = Field(4, ge=1, description="threads that run models")
    inline_max_us: int = Field(
        250,
        ge=0,
        description="model calls measured faster than this run on the event loop, where "
        "they cost less than a thread hand-off; 0: always in a thread",
    )
    intra_op_threads: int = Field(0, ge=0, description="threads inside one operator")
    inter_op_threads: int = Field(0, ge=0, description="operators run in parallel")


class StartupConfig(_Section):
    """What start-up does when a model fails to load."""

    exit_on_model_error: bool = Field(
        False, description="stop start-up (exit 2) instead of serving the other models"
    )
    strict_readiness: bool = Field(
        True, description="ServerReady (and overall health) needs every model ready"
    )


#: Label delay buckets (seconds): one second to thirty days.
DEFAULT_LABEL_DELAY_BUCKETS: tuple[float, ...] = (
    1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0,
    86400.0, 3 * 86400.0, 7 * 86400.0, 30 * 86400.0,
)  # fmt: skip

#: Regression absolute-error buckets (in the model's own unit).
DEFAULT_LABEL_ERROR_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0,
)  # fmt: skip


def _check_buckets(value: tuple[float, ...]) -> tuple[float, ...]:
    if not value or any(b <= a for a, b in itertools.pairwise(value)) or value[0] <= 0:
        raise ValueError("buckets must be positive and strictly increasing")
    return value


class LabelStoreConfig(_Section):
    """Where predictions wait for their delayed labels (docs/labels.md)."""

    enabled: bool = Field(True, description="record predictions and serve FeedbackService")
    backend: Literal["memory", "sqlite", "redis"] = Field(
        "memory", description="memory (one process), sqlite (survives restarts), redis (shared)"
    )
    path: Path | None = Field(None, description="sqlite: the database file")
    url: str | None = Field(None, description="redis: redis://host:port/db (or rediss://, unix://)")
    key_prefix: str = Field("sidecar:labels:", min_length=1, description="redis: key namespace")
    max_entries: int = Field(
        1_000_000, ge=1, description="keys kept (pending + remembered); the oldest go first"
    )
    ttl_seconds: float = Field(
        86400.0, gt=0, description="how long a prediction waits for its label (model default)"
    )
    remember_seconds: float = Field(
        3600.0, ge=0, description="how long a labelled or expired key is remembered"
    )
    flush_interval_ms: int = Field(
        100, ge=1, le=60_000, description="predictions are written this often (loss window)"
    )
    queue_rows: int = Field(
        100_000, ge=1, description="rows waiting to be written; more are dropped and counted"
    )
    sweep_interval_seconds: float = Field(
        1.0, gt=0, description="how often expiry runs and the pending gauge refreshes"
    )
    max_batch_labels: int = Field(
        10_000, ge=1, description="labels per SendLabels call; more is RESOURCE_EXHAUSTED"
    )
    timeout_seconds: float = Field(1.0, gt=0, description="redis: connect and socket timeout")
    delay_buckets: tuple[float, ...] = Field(
        DEFAULT_LABEL_DELAY_BUCKETS, description="label_delay_seconds buckets (seconds)"
    )
    error_buckets: tuple[float, ...] = Field(
        DEFAULT_LABEL_ERROR_BUCKETS, description="label_absolute_error buckets (model's unit)"
    )

    _buckets = field_validator("delay_buckets", "error_buckets")(
        classmethod(lambda cls, v: _check_buckets(v))
    )

    @model_validator(mode="after")
    def _backend_target(self) -> LabelStoreConfig:
        if self.backend == "sqlite" and self.path is None:
            raise ValueError("backend 'sqlite' needs 'path' (the database file)")
        if self.backend == "redis":
            if self.url is None:
                raise ValueError("backend 'redis' needs 'url' (for example redis://host:6379/0)")
            if not self.url.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError(
                    f"url must start with redis://, rediss:// or unix://, got {self.url!r}"
                )
        return self


class AuthPolicy(_Section):
    """Who may call a group of services: a bearer token or an mTLS client identity (either)."""

    token_file: Path | None = Field(
        None, description="accepted bearer tokens, one per line; re-read when the file changes"
    )
    allowed_identities: tuple[str, ...] = Field(
        (), description="client certificate subject CN or SAN values accepted (needs mutual TLS)"
    )

    @property
    def required(self) -> bool:
        """True when calls must authenticate."""
        return self.token_file is not None or bool(self.allowed_identities)


class AuthConfig(_Section):
    """Authorisation of calls; health and reflection are always open (probes)."""

    write_services: tuple[str, ...] = Field(
        ("sidecar.v1.FeedbackService",), description="full service names the writes policy guards"
    )
    writes: AuthPolicy = Field(AuthPolicy(), description="label writes and admin calls")
    inference: AuthPolicy = Field(
        AuthPolicy(), description="inference.GRPCInferenceService (open by default)"
    )


class ServerConfig(_Section):
    """Root of ``sidecar.yaml``."""

    model_repository: Path | None = Field(None, description="None serves the bundled examples")
    device: Device = Field("auto", description="auto (GPU when present), cpu, cuda or cuda:N")
    grpc: GrpcConfig = GrpcConfig()
    metrics: MetricsConfig = MetricsConfig()
    limits: LimitsConfig = LimitsConfig()
    shutdown: ShutdownConfig = ShutdownConfig()
    logging: LoggingConfig = LoggingConfig()
    threads: ThreadsConfig = ThreadsConfig()
    startup: StartupConfig = StartupConfig()
    labels: LabelStoreConfig = LabelStoreConfig()
    auth: AuthConfig = AuthConfig()

    _device = field_validator("device")(classmethod(lambda cls, v: _check_device(v)))

    @model_validator(mode="after")
    def _identities_need_mtls(self) -> ServerConfig:
        for name in ("writes", "inference"):
            policy: AuthPolicy = getattr(self.auth, name)
            if policy.allowed_identities and self.grpc.tls.client_ca_file is None:
                raise ValueError(
                    f"auth.{name}.allowed_identities needs mutual TLS (grpc.tls.client_ca_file)"
                )
        return self


# --------------------------------------------------------------------------- model


class TensorOverride(_Section):
    """Overrides what the model file says about one input or output."""

    name: str = Field(description="the tensor's name in the model file")
    datatype: DataTypeName | None = Field(None, description="KServe v2 datatype")
    shape: tuple[int, ...] | None = Field(None, description="-1 marks a dynamic dimension")
    rename: str | None = Field(None, description="the name clients use (torch outputs)")

    @field_validator("shape")
    @classmethod
    def _dims(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and any(d < -1 or d == 0 for d in value):
            raise ValueError("shape dimensions must be positive or -1 (dynamic)")
        return value


class OnnxOptions(_Section):
    """ONNX Runtime session options (None = the server's threads settings)."""

    intra_op_threads: int | None = Field(None, ge=0, description="None: threads.intra_op_threads")
    inter_op_threads: int | None = Field(None, ge=0, description="None: threads.inter_op_threads")
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="ONNX Runtime graph optimisations"
    )


class BatchingConfig(_Section):
    """Dynamic batching: concurrent requests are run as one batch."""

    enabled: bool = Field(False, description="batch concurrent requests together")
    max_batch_size: int = Field(64, ge=1, description="rows per executed batch")
    max_queue_delay_us: int = Field(
        0,
        ge=0,
        description="longest wait to fill a batch; 0: none, batches still form while the "
        "model is busy (asyncio timers are 1 ms coarse: a delay under 1 ms waits ~1 ms)",
    )
    preferred_batch_sizes: tuple[int, ...] = Field(
        (), description="batch sizes sent as soon as the queue can form one"
    )
    max_queue_size: int = Field(1024, ge=1, description="requests waiting; more are refused")
    max_concurrent_batches: int = Field(
        1, ge=1, description="batches running at once; requests queue (and batch) meanwhile"
    )

    @model_validator(mode="after")
    def _preferred_fit(self) -> BatchingConfig:
        sizes = self.preferred_batch_sizes
        if any(s < 1 or s > self.max_batch_size for s in sizes):
            raise ValueError(
                f"preferred_batch_sizes {list(sizes)} must lie in 1..max_batch_size "
                f"({self.max_batch_size})"
            )
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"preferred_batch_sizes {list(sizes)} has duplicates")
        return self


class ClassificationConfig(_Section):
    """Which output holds class scores, and the class names (label values)."""

    output: str = Field(description="output holding one score per class")
    class_names: tuple[str, ...] = Field(
        min_length=2, description="one per score column; the only class label values"
    )
    scores: Literal["logits", "probabilities"] = Field(
        "probabilities", description="logits are softmaxed before confidence is measured"
    )

    @field_validator("class_names")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("class_names must be unique")
        if "other" in value:
            raise ValueError("'other' is reserved for values that are not configured classes")
        return value


class RegressionConfig(_Section):
    """Which outputs are regression values."""

    outputs: tuple[str, ...] = Field(min_length=1, description="outputs holding predicted values")
    buckets: tuple[float, ...] | None = Field(None, description="output_value histogram buckets")


#: Up to this many classes a model exports its confusion matrix unless told otherwise.
CONFUSION_MATRIX_MAX_CLASSES = 50


class LabelsConfig(_Section):
    """Delayed labels for this model: how long predictions wait, which values are valid.

    Classification labels must be one of ``classification.class_names`` (or its
    index); regression labels must be finite numbers within ``min_value`` ..
    ``max_value`` when those are set. Anything else is answered ``invalid``.
    """

    enabled: bool = Field(True, description="keep predictions of this model for labels")
    ttl_seconds: float | None = Field(
        None,
        gt=0,
        description="how long a prediction waits; None: labels.ttl_seconds of the server",
    )
    output: str | None = Field(
        None, description="regression: output labels compare to (default: the first)"
    )
    min_value: float | None = Field(None, description="regression: smallest valid label")
    max_value: float | None = Field(None, description="regression: largest valid label")
    confusion_matrix: bool | None = Field(
        None,
        description="export confusion_matrix_total (classes² series per version); "
        f"None: when the model has at most {CONFUSION_MATRIX_MAX_CLASSES} classes",
    )

    @model_validator(mode="after")
    def _range(self) -> LabelsConfig:
        if (
            self.min_value is not None
            and self.max_value is not None
            and self.min_value > self.max_value
        ):
            raise ValueError("min_value must not exceed max_value")
        return self


#: Tests a drift configuration may name (detectors.drift.TestName).
DriftTestName = Literal["welch", "brown_forsythe", "chi2", "ks", "cvm"]
_REFERENCE_SUFFIXES = (".npy", ".npz", ".csv")


class DriftReductionConfig(_Section):
    """How each watched input becomes features before testing (high-dimensional inputs)."""

    method: Literal["none", "channel_stats", "random_projection"] = Field(
        "none",
        description="none: every element of a row is a feature; channel_stats: per-channel "
        "mean and std of (N, C, ...) inputs; random_projection: a seeded Gaussian projection "
        "of each flattened row to k features",
    )
    k: int = Field(16, ge=1, le=1024, description="random_projection: features per input")
    seed: int = Field(
        0, ge=0, description="random_projection: seed of the matrix (same seed, same features)"
    )


class DriftFleetConfig(_Section):
    """Per-feature row counts over the reference's bins, which add up across replicas."""

    enabled: bool = Field(
        True, description="export sidecar_drift_bin_rows_total and the reference's bin ratios"
    )
    max_series: int = Field(
        1024,
        ge=2,
        description="cap on features × bins exported per model version and scope; features "
        "past the cap (in feature order) export no bins",
    )
    min_rows: int = Field(
        1000,
        ge=10,
        description="adjacent bins are merged until each expects at least 5 of this many rows "
        "(the fleet rules' minimum window)",
    )
    max_bins: int = Field(
        10, ge=2, le=100, description="bins per feature at most (smallest adjacent ones merged)"
    )


class DriftMonitoringConfig(_Section):
    """Drift of inputs and outputs against a reference, tested on windows of live rows.

    docs/drift.md explains the tests; docs/metrics.md the exported families.
    """

    enabled: bool = Field(True, description="false keeps the section but monitors nothing")
    reference: Path = Field(
        description="reference rows: .npy (one input), .npz keyed by input name, or .csv "
        "(one input, optional header row); relative paths are in the model's directory"
    )
    capture_rows: int | None = Field(
        None,
        ge=2,
        description="when the reference file does not exist: take the first this many live "
        "rows as the reference and write them there (a restart reuses the file)",
    )
    inputs: tuple[str, ...] | None = Field(None, description="inputs to watch; None: all")
    feature_names: dict[str, tuple[str, ...]] = Field(
        {},
        description="input name → one name per element of a row (default: input[index])",
    )
    categorical: tuple[str, ...] = Field(
        (), description="features (by exported name) holding category codes: chi-squared only"
    )
    window_size: int = Field(1000, ge=2, description="rows per evaluation window (not overlapping)")
    min_window: int = Field(
        100, ge=2, description="fewest rows a window (and a feature) needs to be evaluated"
    )
    flush_seconds: float | None = Field(
        None,
        gt=0,
        description="evaluate a window this long after its first row even if not full "
        "(low traffic); None: only full windows",
    )
    sample_rate: float = Field(
        1.0, gt=0, le=1, description="share of requests whose rows are monitored"
    )
    alpha: float = Field(
        0.05, gt=0, lt=1, description="significance after correction (false-alarm rate per window)"
    )
    correction: Literal["bonferroni", "bh"] = Field(
        "bh", description="across features: bonferroni or bh (Benjamini-Hochberg)"
    )
    tests: tuple[DriftTestName, ...] | None = Field(
        None,
        description="tests of continuous features; None: the measured default (docs/drift.md)",
    )
    discrete_tests: tuple[DriftTestName, ...] | None = Field(
        None,
        description="tests of discrete features (few distinct reference values); None: default",
    )
    psi_thresholds: tuple[float, float] = Field(
        (0.1, 0.25),
        description="PSI levels of a moderate and a major change (reported, not tested)",
    )
    reduction: DriftReductionConfig = DriftReductionConfig()
    max_features: int = Field(
        4096, ge=1, description="features per scope; more is a load error (use a reduction)"
    )
    max_exported_features: int = Field(
        100,
        ge=1,
        description="features per scope with per-feature series (the first ones); all are tested",
    )
    outputs: bool = Field(True, description="also test the model's outputs (scope outputs)")
    queue_rows: int = Field(
        65536, ge=1, description="sampled rows waiting for the drift worker; more are dropped"
    )
    executor: Literal["thread", "process"] = Field(
        "thread",
        description="where windows are evaluated: thread (the drift worker thread, which "
        "shares the GIL with serving) or process (a low-priority child process reading the "
        "window from shared memory; for large windows, docs/drift-monitoring.md)",
    )
    fleet: DriftFleetConfig = DriftFleetConfig()

    @field_validator("reference")
    @classmethod
    def _suffix(cls, value: Path) -> Path:
        if value.suffix.lower() not in _REFERENCE_SUFFIXES:
            raise ValueError(
                f"reference must be a {', '.join(_REFERENCE_SUFFIXES)} file, got {str(value)!r}"
            )
        return value

    @field_validator("tests", "discrete_tests")
    @classmethod
    def _distinct(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError("tests must be a non-empty list of distinct test names")
        return value

    @field_validator("psi_thresholds")
    @classmethod
    def _psi(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] <= value[1]:
            raise ValueError("psi_thresholds must be [moderate, major] with 0 <= moderate <= major")
        return value

    @model_validator(mode="after")
    def _sizes(self) -> DriftMonitoringConfig:
        if self.min_window > self.window_size:
            raise ValueError(
                f"min_window ({self.min_window}) must not exceed window_size ({self.window_size})"
            )
        if self.capture_rows is not None and self.capture_rows < self.min_window:
            raise ValueError(
                f"capture_rows ({self.capture_rows}) must be at least min_window "
                f"({self.min_window})"
            )
        return self


class MonitoringConfig(_Section):
    """What the server watches for this model."""

    task: Literal["classification", "regression", "none"] = Field(
        "none", description="what the outputs mean"
    )
    classification: ClassificationConfig | None = None
    regression: RegressionConfig | None = None
    labels: LabelsConfig = LabelsConfig()
    drift: DriftMonitoringConfig | None = None

    @model_validator(mode="after")
    def _task_section(self) -> MonitoringConfig:
        if self.task == "classification" and self.classification is None:
            raise ValueError("task 'classification' needs a 'classification' section")
        if self.task == "regression" and self.regression is None:
            raise ValueError("task 'regression' needs a 'regression' section")
        if (
            self.labels.output is not None
            and self.regression is not None
            and self.labels.output not in self.regression.outputs
        ):
            raise ValueError(
                f"labels.output {self.labels.output!r} is not one of regression.outputs "
                f"{list(self.regression.outputs)}"
            )
        return self


#: Anomaly-score histogram buckets: the score divided by its threshold (1 = the threshold).
DEFAULT_ANOMALY_BUCKETS: tuple[float, ...] = (
    0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0,
)  # fmt: skip
#: Shadow output-difference buckets: |primary - shadow|, in the output's own unit.
DEFAULT_DIFFERENCE_BUCKETS: tuple[float, ...] = (
    1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 100.0,
)  # fmt: skip


def _increasing(value: tuple[float, ...]) -> tuple[float, ...]:
    if not value or any(b <= a for a, b in itertools.pairwise(value)) or value[0] <= 0:
        raise ValueError("buckets must be positive and strictly increasing")
    return value


class ActivationsConfig(_Section):
    """Activation statistics of chosen layers (torch.export models; docs/insight.md)."""

    layers: tuple[str, ...] = Field(
        min_length=1, description="module names or globs (fnmatch), e.g. body.0 or encoder.*"
    )
    sample_rate: float = Field(0.1, gt=0, le=1, description="fraction of batches summarised")
    seed: int = Field(0, description="seed of the batch sampler")
    max_layers: int = Field(
        32, ge=1, le=256, description="most layers the patterns may match (bounds metric series)"
    )
    window: int = Field(
        500, ge=50, description="most recent sampled rows whose layer means are drift-tested"
    )
    reference: Path | None = Field(
        None,
        description="input rows (.npy/.npz/.csv, relative to the model directory) whose layer "
        "means are the drift reference; None: no drift test",
    )
    drift_alpha: float = Field(
        0.05, gt=0, lt=1, description="significance of the layer-mean drift test (BH-corrected)"
    )


class AnomalyConfig(_Section):
    """Per-row anomaly score: Mahalanobis distance from the reference data."""

    reference: Path = Field(
        description="reference rows of the input (.npy, relative to the model directory)"
    )
    input: str | None = Field(None, description="input to score; None: the model's only input")
    quantile: float = Field(
        0.99, gt=0.5, lt=1, description="reference quantile of the score that is the threshold"
    )
    projection: Literal["none", "pca", "random"] = Field(
        "none", description="reduce standardised features to `components` dimensions first"
    )
    components: int = Field(32, ge=1, description="dimensions kept by the projection")
    shrinkage: float = Field(
        0.01, ge=0, lt=1, description="covariance shrinkage towards the identity"
    )
    calibration_fraction: float = Field(
        0.3, gt=0, lt=1, description="reference rows held out to place the threshold"
    )
    seed: int = Field(0, description="seed of the calibration split and random projection")
    return_score: bool = Field(
        False, description="add sidecar_anomaly_* parameters to every response"
    )
    buckets: tuple[float, ...] = Field(
        DEFAULT_ANOMALY_BUCKETS, description="histogram buckets of score / threshold"
    )

    _buckets = field_validator("buckets")(classmethod(lambda cls, v: _increasing(v)))


class ShadowConfig(_Section):
    """Run sampled requests on another version too, off the request path, and compare."""

    version: int = Field(ge=0, description="the shadow version's directory under the model")
    sample_rate: float = Field(1.0, gt=0, le=1, description="fraction of requests shadowed")
    seed: int = Field(0, description="seed of the request sampler")
    queue_size: int = Field(
        64, ge=1, description="requests waiting for the shadow; more are dropped and counted"
    )
    output: str | None = Field(
        None,
        description="output compared; None: classification output or first regression output",
    )
    difference_buckets: tuple[float, ...] = Field(
        DEFAULT_DIFFERENCE_BUCKETS, description="histogram buckets of |primary - shadow|"
    )

    _buckets = field_validator("difference_buckets")(classmethod(lambda cls, v: _increasing(v)))


class InsightConfig(_Section):
    """Model insight: activations, anomaly scores, shadow comparison (docs/insight.md)."""

    activations: ActivationsConfig | None = Field(None, description="None: no layer hooks")
    anomaly: AnomalyConfig | None = Field(None, description="None: no anomaly score")
    shadow: ShadowConfig | None = Field(None, description="None: no shadow version")


class ModelLimitsConfig(_Section):
    """Per-model overrides of the server's limits (None inherits ``limits``)."""

    max_concurrent_requests: int | None = Field(
        None, ge=0, description="None: limits.max_concurrent_requests (0 = no limit)"
    )
    timeout_seconds: float | None = Field(
        None, ge=0, description="None: limits.model_timeout_seconds (0 = none)"
    )


class ModelConfig(_Section):
    """Root of ``<repository>/<model>/config.yaml``."""

    name: str | None = Field(None, description="defaults to the directory name")
    runtime: Literal["onnx", "torch"] | None = Field(None, description="None: from the file")
    versions: tuple[int, ...] | None = Field(None, description="None serves the newest")
    device: Device | None = Field(None, description="None inherits the server's device")
    inputs: tuple[TensorOverride, ...] = Field((), description="overrides of input specs")
    outputs: tuple[TensorOverride, ...] = Field((), description="overrides of output specs")
    onnx: OnnxOptions = OnnxOptions()
    batching: BatchingConfig = BatchingConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    insight: InsightConfig = InsightConfig()
    limits: ModelLimitsConfig = ModelLimitsConfig()

    _device = field_validator("device")(classmethod(lambda cls, v: _check_device(v)))


# --------------------------------------------------------------------------- loading


def _format(err: ValidationError, source: str) -> str:
    lines = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(root)"
        got = item.get("input")
        shown = "" if isinstance(got, dict) else f" (got {json.dumps(got, default=str)[:80]})"
        lines.append(f"{source}: {where}: {item['msg']}{shown}")
    return "\n".join(lines)


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML mapping; a missing file, bad YAML or a non-mapping is a ConfigError."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX) :].split("__")]
        value: Any = raw
        if raw[:1] in "[{":
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"environment variable {key}: invalid JSON: {exc}") from exc
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment variable {key}: conflicts with another variable")
        node[path[-1]] = value
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_server_config(
    path: Path | None = None, env: Mapping[str, str] | None = None
) -> ServerConfig:
    """Read ``sidecar.yaml`` (optional), apply ``SIDECAR_*`` overrides, validate."""
    data = read_yaml(path) if path is not None else {}
    overrides = _env_overrides(os.environ if env is None else env)
    source = str(path) if path is not None else "server config"
    if overrides:
        source += " (with SIDECAR_* environment overrides)"
    try:
        return ServerConfig.model_validate(_merge(data, overrides))
    except ValidationError as exc:
        raise ConfigError(_format(exc, source)) from exc


def load_model_config(path: Path) -> ModelConfig:
    """Read and validate one model's ``config.yaml``; a missing file means defaults."""
    data = read_yaml(path) if path.exists() else {}
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc, str(path))) from exc
