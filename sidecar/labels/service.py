"""``sidecar.v1.FeedbackService``: labels in, one outcome per label out.

A thin adapter like the inference servicer: protobuf → ``Label`` → the
worker's join → protobuf. Errors map to status codes in ``sidecar.servicer``'s
one place (``_rpc``): a unary batch above ``labels.max_batch_labels`` is
RESOURCE_EXHAUSTED naming the limit (counted in
``sidecar_label_requests_refused_total``), a store that is down is UNAVAILABLE.
Everything else about a label is answered per label.

Both methods receive their request messages as bytes (``guard.add_service``'s
``raw``) and parse them here: a message larger than ``grpc.max_message_bytes``
is RESOURCE_EXHAUSTED and counted (``reason="request_too_large"``); in
StreamLabels it ends the call, after the labels of the earlier messages were
joined.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc

from exporters.labels import LabelMetrics
from sidecar.errors import ResourceExhaustedError
from sidecar.guard import MessageTooLargeError, add_service, message_reader
from sidecar.labels.join import Label
from sidecar.labels.worker import StoreWorker
from sidecar.proto import feedback_pb2 as fb
from sidecar.proto import feedback_pb2_grpc as fb_grpc
from sidecar.servicer import _rpc

_SERVICE = fb.DESCRIPTOR.services_by_name["FeedbackService"]
_SEND = f"/{_SERVICE.full_name}/SendLabels"
_STREAM = f"/{_SERVICE.full_name}/StreamLabels"
_OUTCOMES = {
    "matched": fb.MATCHED,
    "unknown_id": fb.UNKNOWN_ID,
    "expired": fb.EXPIRED,
    "duplicate": fb.DUPLICATE,
    "invalid": fb.INVALID,
}


def label_from_proto(message: fb.Label) -> Label:
    """The internal form of one protobuf label."""
    kind = message.WhichOneof("value")
    value: str | int | float | None = None
    if kind is not None:
        value = getattr(message, kind)
    return Label(message.request_id, message.model_name, message.row, kind, value)


class FeedbackServicer(fb_grpc.FeedbackServiceServicer):
    """Joins labels sent over gRPC to the predictions they belong to."""

    def __init__(
        self,
        worker: StoreWorker,
        max_batch_labels: int,
        metrics: LabelMetrics | None = None,
        max_message_bytes: int = 0,
    ) -> None:
        """``max_message_bytes``: ``grpc.max_message_bytes`` (0: no limit)."""
        self._worker = worker
        self._max = max_batch_labels
        self._metrics = metrics
        limit = max_message_bytes or 2**63
        self._readers = {
            method: message_reader(fb.SendLabelsRequest, method, limit)
            for method in (_SEND, _STREAM)
        }

    def _read(self, raw: bytes, method: str) -> fb.SendLabelsRequest:
        try:
            return self._readers[method](raw)
        except MessageTooLargeError:
            if self._metrics is not None:
                self._metrics.refused_request("request_too_large")
            raise

    @_rpc
    async def SendLabels(
        self, raw: bytes, context: grpc.aio.ServicerContext
    ) -> fb.SendLabelsResponse:
        """A batch of labels; one result per label, in order."""
        request = self._read(raw, _SEND)
        if len(request.labels) > self._max:
            if self._metrics is not None:
                self._metrics.refused_request("too_many_labels")
            raise ResourceExhaustedError(
                f"SendLabels takes at most {self._max} labels per call "
                f"(labels.max_batch_labels), got {len(request.labels)}; "
                "split the batch or use StreamLabels"
            )
        outcomes = await self._worker.join([label_from_proto(m) for m in request.labels])
        return fb.SendLabelsResponse(
            results=[
                fb.LabelResult(outcome=_OUTCOMES[o.outcome], detail=o.detail) for o in outcomes
            ]
        )

    @_rpc
    async def StreamLabels(
        self,
        request_iterator: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
    ) -> fb.StreamLabelsResponse:
        """Batches of any size (joined in chunks of max_batch_labels); one summary at the end."""
        counts = dict.fromkeys(_OUTCOMES, 0)
        async for raw in request_iterator:
            messages = self._read(raw, _STREAM).labels
            for start in range(0, len(messages), self._max):
                chunk = [label_from_proto(m) for m in messages[start : start + self._max]]
                for outcome in await self._worker.join(chunk):
                    counts[outcome.outcome] += 1
        return fb.StreamLabelsResponse(received=sum(counts.values()), **counts)


class FeedbackRegistrar:
    """Adds the FeedbackService to the gRPC server."""

    def __init__(self, servicer: FeedbackServicer) -> None:
        self._servicer = servicer

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        """Register; return the service's full name for reflection."""
        return [add_service(server, _SERVICE, self._servicer, raw=("SendLabels", "StreamLabels"))]
