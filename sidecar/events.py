"""What the request path tells the rest of the server: one record per request.

Metrics, the monitor tap and the label store subscribe as ``Listener``s. Each
callback must be O(1) and must not block: heavy work goes to a background
task or thread. A listener that raises is logged and skipped, never allowed
to fail a request.

Two narrower seams: a ``ModelHook`` prepares a model version after its runtime
loaded (a ModelLoadError there fails that version's load, like a bad
config.yaml), and a ``ResponseAnnotator`` may add ``parameters`` to an OK
response before it is sent (one that raises is logged and skipped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sidecar.types import Tensors

if TYPE_CHECKING:
    from sidecar.models import ServedModel
    from sidecar.proto import grpc_service_pb2 as pb


@dataclass(slots=True)
class RequestRecord:
    """One answered (or refused) ModelInfer request."""

    model: ServedModel | None  # None when no such model exists
    request_id: str
    code: str  # gRPC status name: "OK", "INVALID_ARGUMENT", ...
    rows: int  # batch rows (0 when the request never decoded)
    duration: float  # seconds, server-side, end to end
    queue_seconds: float = 0.0
    inputs: Tensors | None = None  # decoded inputs (OK requests)
    outputs: Tensors | None = None  # all model outputs (OK requests)
    reason: str = ""  # for refusals: queue_full, too_large, shutting_down, ...


class Listener(Protocol):
    """Receives model lifecycle and request events."""

    def on_model_loaded(self, model: ServedModel) -> None:
        """A model version finished loading and is ready."""
        ...

    def on_model_failed(self, name: str, version: str, error: str) -> None:
        """A model version failed to load."""
        ...

    def on_model_unloaded(self, model: ServedModel) -> None:
        """A model version was unloaded."""
        ...

    def on_batch(self, model: ServedModel, rows: int, compute_seconds: float) -> None:
        """The model executed one batch."""
        ...

    def on_request(self, record: RequestRecord) -> None:
        """A request was answered (OK or error)."""
        ...


class BaseListener:
    """A listener that ignores everything; subclass and override what you need."""

    def on_model_loaded(self, model: ServedModel) -> None:
        """Ignored."""

    def on_model_failed(self, name: str, version: str, error: str) -> None:
        """Ignored."""

    def on_model_unloaded(self, model: ServedModel) -> None:
        """Ignored."""

    def on_batch(self, model: ServedModel, rows: int, compute_seconds: float) -> None:
        """Ignored."""

    def on_request(self, record: RequestRecord) -> None:
        """Ignored."""


class ModelHook(Protocol):
    """Prepares a model version after its runtime loaded, before it serves."""

    async def prepare(self, model: ServedModel) -> None:
        """Set up per-model state; raise ModelLoadError to fail this version's load."""
        ...


class ResponseAnnotator(Protocol):
    """Adds to an OK response before it is sent (for example response parameters)."""

    def annotate(
        self, model: ServedModel, inputs: Tensors, outputs: Tensors, response: pb.ModelInferResponse
    ) -> None:
        """Must be cheap and must not block: it runs on the request path."""
        ...
