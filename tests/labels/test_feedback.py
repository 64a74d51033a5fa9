"""FeedbackService over a real server: outcomes per label, limits, TTL and the memory bound."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from exporters.gpu import GpuCollector
from sidecar.app import AppParts
from sidecar.config import ModelConfig
from sidecar.labels.store_memory import MemoryStore
from sidecar.metrics_listener import ServerMetrics
from sidecar.proto import feedback_pb2 as fb
from tests.exporters.scrape import scrape
from tests.helpers import ServerThread, running_server, server_config
from tests.labels.fakes import ChosenClassRuntime
from tests.labels.helpers import (
    Client,
    class_label,
    label_parts,
    label_values,
    number_label,
    registry_of,
    sample,
    wait_for,
)

FAST = {"sweep_interval_seconds": 0.05, "flush_interval_ms": 20, "max_batch_labels": 100}
CHOSEN = ModelConfig.model_validate(
    {
        "monitoring": {
            "task": "classification",
            "classification": {"output": "probabilities", "class_names": ["a", "b", "c"]},
        }
    }
)


@pytest.fixture(scope="module")
def served(labels_repo: Path) -> Iterator[tuple[ServerThread, AppParts]]:
    config = server_config(labels_repo, labels=FAST)
    parts = label_parts(config)
    with running_server(config, parts, fakes=[("chosen", ChosenClassRuntime(3), CHOSEN)]) as srv:
        yield srv, parts


@pytest.fixture
def client(served: tuple[ServerThread, AppParts]) -> Iterator[Client]:
    with Client(served[0].address) as c:
        yield c


def test_each_row_of_a_batch_is_labelled(
    served: tuple[ServerThread, AppParts], client: Client, labels_repo: Path
) -> None:
    registry = registry_of(served[1])
    x = np.load(labels_repo / "digits" / "holdout_features.npy")[:40]
    y = np.load(labels_repo / "digits" / "holdout_labels.npy")[:40]
    request_id, outputs = client.infer("digits", x, request_id="batch-of-forty")
    assert request_id == "batch-of-forty"
    predicted = outputs["probabilities"].argmax(axis=1)
    before = sample(registry, "sidecar_labeled_predictions_total", model="digits", version="1",
                    correct="true")  # fmt: skip
    labels = [class_label(request_id, "digits", int(v), row=i) for i, v in enumerate(y)]
    assert client.outcomes(labels) == ["matched"] * 40
    after = sample(registry, "sidecar_labeled_predictions_total", model="digits", version="1",
                   correct="true")  # fmt: skip
    assert after - before == int((predicted == y).sum())


def test_generated_request_ids_are_the_label_keys(client: Client) -> None:
    request_id, outputs = client.infer("diabetes", np.zeros((1, 10)))
    assert request_id  # the server made one
    predicted = float(outputs["prediction"][0, 0])
    reply = client.send([number_label(request_id, "diabetes", predicted + 3.0)])
    assert reply == [("matched", "")]


def test_stream_answers_with_a_summary(
    served: tuple[ServerThread, AppParts], client: Client
) -> None:
    ids = [client.infer("chosen", np.array([[i % 3]]))[0] for i in range(250)]
    good = [class_label(rid, "chosen", "a") for rid in ids]
    requests = [
        fb.SendLabelsRequest(labels=good[:230]),  # above max_batch_labels: joined in chunks
        fb.SendLabelsRequest(labels=good[230:] + good[:5]),
        fb.SendLabelsRequest(labels=[class_label("nobody", "chosen", 0)]),
        fb.SendLabelsRequest(labels=[class_label(ids[0], "chosen", "zebra")]),
    ]
    summary = client.feedback.StreamLabels(iter(requests), timeout=30)
    assert (summary.received, summary.matched, summary.duplicate) == (257, 250, 5)
    assert (summary.unknown_id, summary.invalid, summary.expired) == (1, 1, 0)


def test_oversized_unary_batch_is_resource_exhausted(
    served: tuple[ServerThread, AppParts], client: Client
) -> None:
    registry = registry_of(served[1])
    metrics = served[1].metrics
    assert metrics is not None
    refused = "sidecar_label_requests_refused_total"
    before = sample(registry, "sidecar_labels_received_total", model="chosen", outcome="unknown_id")
    refused_before = scrape(metrics.http.port).value(refused, reason="too_many_labels")
    assert refused_before is not None  # the series exists from the start
    with pytest.raises(grpc.RpcError) as err:
        client.send([class_label(f"r{i}", "chosen", 0) for i in range(101)])
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at most 100 labels" in (err.value.details() or "")
    assert "max_batch_labels" in (err.value.details() or "")
    after = sample(registry, "sidecar_labels_received_total", model="chosen", outcome="unknown_id")
    assert after == before
    # counted in the exported metric (read over HTTP from the server's /metrics)
    assert scrape(metrics.http.port).value(refused, reason="too_many_labels") == refused_before + 1
    assert (
        client.outcomes([class_label(f"r{i}", "chosen", 0) for i in range(100)])
        == ["unknown_id"] * 100
    )


def test_label_messages_over_the_message_limit_are_refused_and_counted(
    labels_repo: Path,
) -> None:
    config = server_config(labels_repo, labels=FAST, grpc={"max_message_bytes": 4096})
    parts = label_parts(config)
    assert parts.metrics is not None
    refused = "sidecar_label_requests_refused_total"
    big = fb.SendLabelsRequest(labels=[class_label(f"r{i:04}", "chosen", 0) for i in range(300)])
    assert 4096 < big.ByteSize() < 8192  # under gRPC core's own limit (twice the server's)
    with (
        running_server(config, parts, fakes=[("chosen", ChosenClassRuntime(3), CHOSEN)]) as srv,
        Client(srv.address) as client,
    ):
        before = scrape(parts.metrics.http.port).value(refused, reason="request_too_large")
        assert before == 0  # the series exists from the start
        with pytest.raises(grpc.RpcError) as unary:
            client.feedback.SendLabels(big, timeout=30)
        small = fb.SendLabelsRequest(labels=[class_label("nobody", "chosen", 0)])
        with pytest.raises(grpc.RpcError) as streamed:
            client.feedback.StreamLabels(iter([small, big]), timeout=30)
        for err in (unary, streamed):
            assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "grpc.max_message_bytes=4096" in (err.value.details() or "")
        after = scrape(parts.metrics.http.port).value(refused, reason="request_too_large")
        assert after == 2
        assert client.outcomes([class_label("nobody", "chosen", 0)]) == ["unknown_id"]


def test_bad_input_is_answered_per_label_without_new_metric_values(
    served: tuple[ServerThread, AppParts], client: Client
) -> None:
    registry = registry_of(served[1])
    clf_id, _ = client.infer("chosen", np.array([[1], [2]]))
    reg_id, _ = client.infer("diabetes", np.zeros((1, 10)))
    batch = [
        class_label("no-such-id", "chosen", "a"),
        class_label(clf_id, "diabetes", 1),  # wrong model
        class_label(clf_id, "chosen", "zebra"),  # not a class
        class_label(clf_id, "chosen", 7),  # index out of range
        number_label(reg_id, "diabetes", float("nan")),
        class_label(clf_id, "chosen", "a", row=2),  # the request had 2 rows
        class_label(clf_id, "made-up-model", "a"),
        class_label(clf_id, "chosen", "b"),
        class_label(clf_id, "chosen", "b"),
        number_label(reg_id, "diabetes", 150.0),
    ]
    assert client.outcomes(batch) == [
        "unknown_id", "invalid", "invalid", "invalid", "invalid", "invalid", "invalid",
        "matched", "duplicate", "matched",
    ]  # fmt: skip
    assert "made-up-model" not in label_values(registry, "sidecar_labels_received_total", "model")
    assert label_values(registry, "sidecar_class_outcomes_total", "class") <= {
        "a", "b", "c", "zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
        "nine",
    }  # fmt: skip
    assert client.infer("chosen", np.array([[0]]))[0]  # still serving


def test_feedback_service_is_reflected(served: tuple[ServerThread, AppParts]) -> None:
    with grpc.insecure_channel(served[0].address) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "sidecar.v1.FeedbackService" in services


def test_predictions_expire_after_their_ttl(labels_repo: Path) -> None:
    config = server_config(labels_repo, labels={**FAST, "ttl_seconds": 0.3})
    parts = label_parts(config)
    with running_server(config, parts) as srv, Client(srv.address) as client:
        registry = registry_of(parts)
        request_id, _ = client.infer("digits", np.zeros((3, 64)))
        wait_for(
            "3 predictions to expire",
            lambda: sample(registry, "sidecar_predictions_expired_total", model="digits") == 3,
        )
        assert sample(registry, "sidecar_pending_predictions", model="digits", store="local") == 0
        labels = [class_label(request_id, "digits", "zero", row=i) for i in range(3)]
        assert client.outcomes(labels) == ["expired"] * 3
        assert sample(registry, "sidecar_predictions_expired_total", model="digits") == 3


def test_memory_store_stays_bounded_under_a_flood(labels_repo: Path) -> None:
    config = server_config(labels_repo, labels={**FAST, "max_entries": 200})
    parts = label_parts(config)
    with running_server(config, parts) as srv, Client(srv.address) as client:
        registry = registry_of(parts)
        assert parts.labels is not None
        store = parts.labels.store
        assert isinstance(store, MemoryStore)
        largest = 0
        done = threading.Event()

        def watch() -> None:
            nonlocal largest
            while not done.is_set():
                largest = max(largest, len(store))
                done.wait(0.001)

        watcher = threading.Thread(target=watch)
        watcher.start()
        x = np.zeros((20, 64))
        ids = [client.infer("digits", x)[0] for _ in range(50)]
        wait_for(
            "1000 rows recorded",
            lambda: (
                sample(registry, "sidecar_predictions_recorded_total", model="digits", version="1")
                == 1000
            ),
        )
        done.set()
        watcher.join()
        assert largest <= 200
        assert len(store) == 200
        assert sample(registry, "sidecar_predictions_dropped_total", model="digits",
                      reason="evicted") == 800  # fmt: skip
        wait_for(
            "pending gauge at the bound",
            lambda: (
                sample(registry, "sidecar_pending_predictions", model="digits", store="local")
                == 200
            ),
        )
        # the newest predictions are the ones kept
        assert client.outcomes([class_label(ids[-1], "digits", 0, row=19)]) == ["matched"]
        assert client.outcomes([class_label(ids[0], "digits", 0, row=0)]) == ["unknown_id"]


def test_labels_can_be_switched_off(labels_repo: Path) -> None:
    config = server_config(labels_repo, labels={"enabled": False})
    metrics = ServerMetrics(config.metrics, gpu=GpuCollector(None, lambda: None))
    with running_server(config, AppParts(metrics=metrics)) as srv, Client(srv.address) as client:
        client.infer("digits", np.zeros((1, 64)))
        with pytest.raises(grpc.RpcError) as err:
            client.send([class_label("x", "digits", 0)])
        assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED
    families = {family.name for family in metrics.registry.collect()}
    assert "sidecar_inference_requests" in families
    assert not {name for name in families if "label" in name or "pending" in name}
