"""``sidecar.v1.FeedbackService``: labels in, one outcome per label out.

A thin adapter like the inference servicer: protobuf → ``Label`` → the
worker's join → protobuf. Errors map to status codes in ``sidecar.servicer``'s
one place (``_rpc``): a unary batch above ``labels.max_batch_labels`` is
RESOURCE_EXHAUSTED naming the limit (counted in
``sidecar_label_requests_refused_total``), a store that is down is UNAVAILABLE.
Everything else about a label is answered per label.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc

from exporters.labels import LabelMetrics
from sidecar.errors import ResourceExhaustedError
from sidecar.labels.join import Label
from sidecar.labels.worker import StoreWorker
from sidecar.proto import feedback_pb2 as fb
from sidecar.proto import feedback_pb2_grpc as fb_grpc
from sidecar.servicer import _rpc

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
        self, worker: StoreWorker, max_batch_labels: int, metrics: LabelMetrics | None = None
    ) -> None:
        self._worker = worker
        self._max = max_batch_labels
        self._metrics = metrics

    @_rpc
    async def SendLabels(
        self, request: fb.SendLabelsRequest, context: grpc.aio.ServicerContext
    ) -> fb.SendLabelsResponse:
        """A batch of labels; one result per label, in order."""
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
        request_iterator: AsyncIterator[fb.SendLabelsRequest],
        context: grpc.aio.ServicerContext,
    ) -> fb.StreamLabelsResponse:
        """Batches of any size (joined in chunks of max_batch_labels); one summary at the end."""
        counts = dict.fromkeys(_OUTCOMES, 0)
        async for request in request_iterator:
            messages = request.labels
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
        fb_grpc.add_FeedbackServiceServicer_to_server(self._servicer, server)
        return [fb.DESCRIPTOR.services_by_name["FeedbackService"].full_name]
