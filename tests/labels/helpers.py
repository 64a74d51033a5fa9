"""Helpers for the label tests: inference and label calls over real gRPC, metric reads."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np
from prometheus_client import CollectorRegistry

from exporters.gpu import GpuCollector
from sidecar.app import AppParts
from sidecar.config import ServerConfig
from sidecar.examples import MODEL_REPOSITORY
from sidecar.labels import Labels
from sidecar.metrics_listener import ServerMetrics
from sidecar.proto import feedback_pb2 as fb
from sidecar.proto import feedback_pb2_grpc as fb_grpc
from sidecar.proto import grpc_service_pb2 as pb
from sidecar.proto import grpc_service_pb2_grpc as pb_grpc

T = TypeVar("T")

OUTCOME_NAMES = {
    fb.MATCHED: "matched",
    fb.UNKNOWN_ID: "unknown_id",
    fb.EXPIRED: "expired",
    fb.DUPLICATE: "duplicate",
    fb.INVALID: "invalid",
}


def copy_models(target: Path, names: Iterable[str] = ("digits", "diabetes")) -> Path:
    """A model repository holding copies of some bundled example models."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copytree(MODEL_REPOSITORY / name, target / name)
    return target


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 15.0) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)  # polling interval of a deadline loop, not a wait for an event
        delay = min(delay * 2, 0.1)


class Client:
    """Inference and FeedbackService calls against one server address."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.infer_stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.feedback = fb_grpc.FeedbackServiceStub(self.channel)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def infer(
        self, model: str, x: np.ndarray, request_id: str = "", input_name: str = "input"
    ) -> tuple[str, dict[str, np.ndarray]]:
        """One ModelInfer call with raw FP32 input; the response id and outputs."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        request = pb.ModelInferRequest(model_name=model, id=request_id)
        tensor = request.inputs.add()
        tensor.name = input_name
        tensor.datatype = "FP32"
        tensor.shape.extend(x.shape)
        request.raw_input_contents.append(x.tobytes())
        response = self.infer_stub.ModelInfer(request, timeout=30)
        outputs = {}
        for spec, raw in zip(response.outputs, response.raw_output_contents, strict=True):
            assert spec.datatype == "FP32"
            outputs[spec.name] = np.frombuffer(raw, dtype="<f4").reshape(tuple(spec.shape))
        return response.id, outputs

    def send(self, labels: Sequence[fb.Label]) -> list[tuple[str, str]]:
        """SendLabels; (outcome name, detail) per label."""
        reply = self.feedback.SendLabels(fb.SendLabelsRequest(labels=labels), timeout=30)
        return [(OUTCOME_NAMES[r.outcome], r.detail) for r in reply.results]

    def outcomes(self, labels: Sequence[fb.Label]) -> list[str]:
        """SendLabels; the outcome name per label."""
        return [outcome for outcome, _ in self.send(labels)]


def class_label(request_id: str, model: str, value: str | int, row: int = 0) -> fb.Label:
    """A classification label by class name (str) or index (int)."""
    if isinstance(value, str):
        return fb.Label(request_id=request_id, model_name=model, row=row, class_name=value)
    return fb.Label(request_id=request_id, model_name=model, row=row, class_index=value)


def number_label(request_id: str, model: str, value: float, row: int = 0) -> fb.Label:
    """A regression label."""
    return fb.Label(request_id=request_id, model_name=model, row=row, number=value)


def label_parts(config: ServerConfig) -> AppParts:
    """Parts whose label join exports to a registry the test can read.

    With metrics enabled it is the registry ``/metrics`` serves (ServerMetrics,
    without GPU discovery), as ``build_server`` wires it by default.
    """
    metrics = None
    if config.metrics.enabled:
        metrics = ServerMetrics(config.metrics, gpu=GpuCollector(None, lambda: None))
    registry = metrics.registry if metrics is not None else CollectorRegistry()
    return AppParts(metrics=metrics, labels=Labels(config, registry))


def registry_of(parts: AppParts) -> CollectorRegistry:
    """The registry the label join of ``parts`` exports to."""
    assert parts.labels is not None
    return parts.labels.registry


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value, 0.0 when the series does not exist."""
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample named ``name``: sorted label pairs → value."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name == name:
                found[tuple(sorted(s.labels.items()))] = s.value
    return found


def label_values(registry: CollectorRegistry, name: str, label: str) -> set[str]:
    """Every value ``label`` takes in the samples named ``name``."""
    return {dict(k)[label] for k in samples(registry, name) if label in dict(k)}
