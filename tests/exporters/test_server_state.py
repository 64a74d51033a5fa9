"""What the server counts in memory, exported at scrape time: queue depth, stalled and
abandoned model calls, authorisation outcomes, TLS reloads. Real servers on loopback,
real scrapes of /metrics (over HTTPS where the metrics port serves TLS)."""

from __future__ import annotations

import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from exporters.gpu import GpuCollector
from sidecar.app import AppParts
from sidecar.config import BatchingConfig, ModelConfig, ServerConfig
from sidecar.metrics_listener import ServerMetrics
from sidecar.proto import feedback_pb2 as fb
from sidecar.proto import feedback_pb2_grpc as fb_grpc
from sidecar.proto import grpc_service_pb2 as pb
from sidecar.proto import grpc_service_pb2_grpc as pb_grpc
from sidecar.runtimes.fakes import BlockingRuntime, SumRuntime
from tests.batching.fakes import GatedRuntime
from tests.certs import Authority, Issued, authority, issue, replace_file
from tests.exporters.scrape import OPENMETRICS, Scrape, scrape, wait_for
from tests.exporters.test_docs import compare, documented
from tests.helpers import running_server, server_config

REASONS = ("timeout", "deadline", "cancelled")
OPTIONS = [("grpc.use_local_subchannel_pool", 1)]  # a fresh connection (handshake) per channel
TOKEN = "inference-token-0123456789"


def request(model: str) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    return req


def metrics_for(config: ServerConfig) -> ServerMetrics:
    return ServerMetrics(config.metrics, gpu=GpuCollector(None, lambda: None))


def model_labels(model: str) -> dict[str, str]:
    return {"model": model, "version": "1"}


def code_of(call: grpc.Future) -> grpc.StatusCode:
    try:
        call.result()
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.fixture
def blocking() -> Iterator[BlockingRuntime]:
    runtime = BlockingRuntime()
    try:
        yield runtime
    finally:
        runtime.release.set()  # never leave a wedged thread behind


def test_queue_depth_is_read_at_scrape_time(tmp_path: Path) -> None:
    gated = GatedRuntime()
    batching = BatchingConfig(enabled=True, max_batch_size=8, max_queue_size=8)
    config = server_config(tmp_path)
    metrics = metrics_for(config)
    fakes = [("gated", gated, ModelConfig(batching=batching)), ("sum", SumRuntime(), None)]
    with (
        running_server(config, AppParts(metrics=metrics), fakes) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert scrape(metrics.http.port).value("sidecar_queue_depth", **model_labels("gated")) == 0
        try:
            running = stub.ModelInfer.future(request("gated"), timeout=30)
            assert gated.started.wait(30)  # the first batch holds the only batch slot
            queued = [stub.ModelInfer.future(request("gated"), timeout=30) for _ in range(3)]
            wait_for(
                lambda: (
                    scrape(metrics.http.port).value("sidecar_queue_depth", **model_labels("gated"))
                    == 3
                ),
                what="three requests waiting in the batcher",
            )
            got = scrape(metrics.http.port)
            assert got.value("sidecar_queue_depth", **model_labels("sum")) == 0  # no batcher
            assert got.value("sidecar_inflight_requests", **model_labels("gated")) == 4
        finally:
            gated.release()
        assert all(code_of(f) == grpc.StatusCode.OK for f in (running, *queued))
        assert scrape(metrics.http.port).value("sidecar_queue_depth", **model_labels("gated")) == 0


def test_a_hung_model_is_counted_stalled_and_recovers(
    tmp_path: Path, blocking: BlockingRuntime
) -> None:
    config = server_config(tmp_path)
    metrics = metrics_for(config)
    hung = ModelConfig.model_validate({"limits": {"timeout_seconds": 0.3}})
    fakes = [("hung", blocking, hung), ("sum", SumRuntime(), None)]
    with (
        running_server(config, AppParts(metrics=metrics), fakes) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        hung_model = model_labels("hung")
        before = scrape(metrics.http.port)
        assert before.value("sidecar_model_overdue_calls", **hung_model) == 0
        assert before.value("sidecar_model_timeouts_total", **hung_model) == 0
        for reason in REASONS:  # every series starts at 0 when the model loads
            assert (
                before.value("sidecar_model_calls_abandoned_total", **hung_model, reason=reason)
                == 0
            )

        with pytest.raises(grpc.RpcError) as timed_out:
            stub.ModelInfer(request("hung"), timeout=30)
        assert timed_out.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request("hung"), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "stalled" in (refused.value.details() or "")
        assert stub.ModelInfer(request("sum"), timeout=30).model_name == "sum"  # contained
        ready = stub.ModelReady(pb.ModelReadyRequest(name="hung"), timeout=10)
        assert not ready.ready

        stalled = scrape(metrics.http.port)
        assert stalled.value("sidecar_model_overdue_calls", **hung_model) == 1
        assert stalled.value("sidecar_model_timeouts_total", **hung_model) == 1
        abandoned = {
            reason: stalled.value(
                "sidecar_model_calls_abandoned_total", **hung_model, reason=reason
            )
            for reason in REASONS
        }
        assert abandoned == {"timeout": 1, "deadline": 0, "cancelled": 0}
        assert (
            stalled.value("sidecar_rejected_requests_total", model="hung", reason="model_stalled")
            == 1
        )
        assert stalled.value("sidecar_model_overdue_calls", **model_labels("sum")) == 0

        blocking.release.set()  # the wedged call returns: the stall ends, the counters stay
        wait_for(
            lambda: (
                scrape(metrics.http.port).value("sidecar_model_overdue_calls", **hung_model) == 0
            ),
            what="the overdue call to return",
        )
        assert scrape(metrics.http.port).value("sidecar_model_timeouts_total", **hung_model) == 1
        assert stub.ModelReady(pb.ModelReadyRequest(name="hung"), timeout=10).ready


def test_calls_abandoned_by_the_client_deadline_and_by_cancelling(
    tmp_path: Path, blocking: BlockingRuntime
) -> None:
    config = server_config(tmp_path)  # model timeout 30 s: only the client gives up here
    metrics = metrics_for(config)
    with (
        running_server(config, AppParts(metrics=metrics), [("slow", blocking, None)]) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        slow = model_labels("slow")

        def abandoned(reason: str) -> float | None:
            got = scrape(metrics.http.port)
            return got.value("sidecar_model_calls_abandoned_total", **slow, reason=reason)

        with pytest.raises(grpc.RpcError) as late:
            stub.ModelInfer(request("slow"), timeout=0.5)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert blocking.entered.acquire(timeout=10)  # it did reach the model
        wait_for(lambda: abandoned("deadline") == 1, what="the deadline abandonment")

        cancelled = stub.ModelInfer.future(request("slow"), timeout=30)
        assert blocking.entered.acquire(timeout=10)
        cancelled.cancel()
        wait_for(lambda: abandoned("cancelled") == 1, what="the cancelled call to be counted")
        got = scrape(metrics.http.port)
        assert got.value("sidecar_inflight_requests", **slow) == 2  # both calls still run
        assert got.value("sidecar_model_overdue_calls", **slow) == 0  # not past the timeout
        assert abandoned("timeout") == 0
        blocking.release.set()
        wait_for(
            lambda: scrape(metrics.http.port).value("sidecar_inflight_requests", **slow) == 0,
            what="the abandoned calls to return",
        )


# ---------------------------------------------------------------------- security


def https_scrape(port: int, trust: Authority) -> Scrape:
    """GET /metrics over HTTPS, trusting ``trust``, as OpenMetrics."""
    context = ssl.create_default_context(cadata=trust.pem.decode())
    req = urllib.request.Request(
        f"https://127.0.0.1:{port}/metrics", headers={"Accept": OPENMETRICS}
    )
    with urllib.request.urlopen(req, timeout=10, context=context) as response:
        text = response.read().decode()
    return Scrape({f.name: f for f in text_string_to_metric_families(text)})


def write_pair(folder: Path, prefix: str, pair: Issued) -> dict[str, str]:
    files = {"cert_file": folder / f"{prefix}.crt", "key_file": folder / f"{prefix}.key"}
    replace_file(files["cert_file"], pair.cert)
    replace_file(files["key_file"], pair.key)
    return {k: str(v) for k, v in files.items()}


def grpc_call(address: str, ca: Authority, client: Issued, call: str, token: str = "") -> str:
    """ServerLive or SendLabels over a fresh mTLS connection: the status name."""
    creds = grpc.ssl_channel_credentials(ca.pem, client.key, client.cert)
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    with grpc.secure_channel(address, creds, options=OPTIONS) as channel:
        try:
            if call == "live":
                live = pb_grpc.GRPCInferenceServiceStub(channel).ServerLive
                live(pb.ServerLiveRequest(), metadata=metadata, timeout=10)
            else:
                label = fb.Label(request_id="r1", model_name="sum", class_index=1)
                send = fb_grpc.FeedbackServiceStub(channel).SendLabels
                send(fb.SendLabelsRequest(labels=[label]), metadata=metadata, timeout=10)
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return "OK"


def test_authorisation_and_tls_reloads_are_exported(tmp_path: Path) -> None:
    ca = authority("state test CA")
    grpc_tls = write_pair(tmp_path, "grpc", issue(ca, "sidecar", server=True))
    replace_file(tmp_path / "ca.crt", ca.pem)
    (tmp_path / "token").write_text(f"{TOKEN}\n")
    config = server_config(
        tmp_path,
        grpc={"tls": {**grpc_tls, "client_ca_file": str(tmp_path / "ca.crt")}},
        metrics={"tls": write_pair(tmp_path, "metrics", issue(ca, "sidecar", server=True))},
        auth={
            "writes": {"allowed_identities": ["label-writer"]},
            "inference": {"token_file": str(tmp_path / "token")},
        },
    )
    metrics = metrics_for(config)
    with running_server(config, AppParts(metrics=metrics), [("sum", SumRuntime(), None)]) as server:
        port, address = metrics.http.port, server.address
        writer, intruder = issue(ca, "label-writer"), issue(ca, "intruder")

        start = https_scrape(port, ca)
        zero = {(p, o): 0.0 for p in ("writes", "inference")
                for o in ("allowed", "unauthenticated", "permission_denied")}  # fmt: skip
        assert auth_counts(start) == zero  # every outcome of each policy starts at 0
        for listener in ("grpc", "metrics"):
            assert start.value("sidecar_tls_reloads_total", listener=listener) == 0
            assert start.value("sidecar_tls_reload_failures_total", listener=listener) == 0

        assert grpc_call(address, ca, writer, "live") == "UNAUTHENTICATED"  # no token
        assert grpc_call(address, ca, writer, "live", token="wrong") == "UNAUTHENTICATED"
        assert grpc_call(address, ca, writer, "live", token=TOKEN) == "OK"
        assert grpc_call(address, ca, writer, "labels") == "OK"
        assert grpc_call(address, ca, intruder, "labels") == "PERMISSION_DENIED"
        assert auth_counts(https_scrape(port, ca)) == {
            **zero,
            ("inference", "unauthenticated"): 2,
            ("inference", "allowed"): 1,
            ("writes", "allowed"): 1,
            ("writes", "permission_denied"): 1,
        }

        # A bad rotation on each port (a certificate without its key; a file that is not
        # PEM): connections go on with the old certificates, counted once per bad state.
        new_ca = authority("rotated CA")
        fresh, fresh_metrics = issue(new_ca, "sidecar", server=True), issue(ca, "s2", server=True)
        replace_file(tmp_path / "grpc.crt", fresh.cert)
        replace_file(tmp_path / "metrics.crt", b"not a certificate\n")
        for _ in range(3):
            assert grpc_call(address, ca, writer, "labels") == "OK"
            bad = https_scrape(port, ca)
        for listener in ("grpc", "metrics"):
            assert bad.value("sidecar_tls_reload_failures_total", listener=listener) == 1
            assert bad.value("sidecar_tls_reloads_total", listener=listener) == 0

        # The rotations completed: taken, counted as reloads.
        replace_file(tmp_path / "grpc.key", fresh.key)
        replace_file(tmp_path / "ca.crt", new_ca.pem)
        write_pair(tmp_path, "metrics", fresh_metrics)
        assert grpc_call(address, new_ca, issue(new_ca, "label-writer"), "labels") == "OK"
        done = https_scrape(port, ca)
        for listener in ("grpc", "metrics"):
            assert done.value("sidecar_tls_reloads_total", listener=listener) == 1
            assert done.value("sidecar_tls_reload_failures_total", listener=listener) == 1

        # docs/metrics.md's conditional Security section says exactly what is exposed here
        rows = [r for r in documented() if r.section.startswith("Security")]
        assert len(rows) == 3
        families = {r.family: done.families[r.family] for r in rows if r.family in done.families}
        problems = compare(rows, families, "a TLS server with authorisation")
        assert not problems, "\n".join(problems)


def auth_counts(got: Scrape) -> dict[tuple[str, str], float]:
    family = got.families["sidecar_auth_requests"]
    return {
        (s.labels["policy"], s.labels["outcome"]): s.value
        for s in family.samples
        if s.name == "sidecar_auth_requests_total"
    }
