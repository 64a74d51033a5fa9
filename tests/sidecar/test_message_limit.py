"""grpc.max_message_bytes on requests, over real loopback gRPC: refused by the server, counted.

The server lets gRPC core receive messages up to ``grpc.transport_max_message_bytes``
(twice the limit by default), checks the limit itself and counts the refusals
(``sidecar_rejected_requests_total{reason="request_too_large"}``); core refuses what is
above the transport limit before any code of ours runs, uncounted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporters.gpu import GpuCollector
from sidecar.app import AppParts
from sidecar.codec import PEEK_MAX, peek_request
from sidecar.config import ServerConfig
from sidecar.metrics_listener import ServerMetrics
from sidecar.proto import grpc_service_pb2 as pb
from sidecar.proto import grpc_service_pb2_grpc as pb_grpc
from sidecar.runtimes.fakes import SumRuntime
from tests.exporters.scrape import Scrape, scrape
from tests.helpers import ServerThread, running_server, server_config

LIMIT = 4096
REJECTED = "sidecar_rejected_requests_total"


def sized(size: int, model: str = "sum", request_id: str = "r") -> pb.ModelInferRequest:
    """A valid request for the 4-wide sum model, padded to ``size`` bytes in all.

    The padding is a request parameter (the server ignores it). Only the small ``sum``
    output is requested, so the answer stays far below the limit.
    """
    req = pb.ModelInferRequest(model_name=model, model_version="1", id=request_id)
    req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(np.arange(4, dtype=np.float32).tobytes())
    req.outputs.add(name="sum")
    base = req.ByteSize()
    for pad in range(max(size - base, 0), max(size - base - 32, -1), -1):  # + its framing
        req.parameters["pad"].string_param = "-" * pad
        if req.ByteSize() == size:
            return req
    raise AssertionError(f"cannot pad a request to {size} bytes")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServerThread, ServerMetrics]]:
    config = server_config(tmp_path, grpc={"max_message_bytes": LIMIT})  # transport: 8192
    metrics = ServerMetrics(config.metrics, gpu=GpuCollector(None, lambda: None))
    with running_server(config, AppParts(metrics=metrics), [("sum", SumRuntime(), None)]) as srv:
        yield srv, metrics


def rejected(got: Scrape, model: str) -> float:
    return got.value(REJECTED, model=model, reason="request_too_large") or 0.0


def test_defaults_put_grpc_cores_limit_at_twice_the_servers() -> None:
    config = ServerConfig()
    assert config.grpc.max_message_bytes == 64 * 1024 * 1024
    assert config.grpc.transport_limit == 128 * 1024 * 1024
    near_max = ServerConfig.model_validate({"grpc": {"max_message_bytes": 2**31 - 2}})
    assert near_max.grpc.transport_limit == 2**31 - 1  # gRPC's options are C ints
    explicit = {"max_message_bytes": 4096, "transport_max_message_bytes": 4096}
    assert ServerConfig.model_validate({"grpc": explicit}).grpc.transport_limit == 4096


def test_request_over_the_limit_is_refused_named_and_counted(
    served: tuple[ServerThread, ServerMetrics],
) -> None:
    server, metrics = served
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        before = scrape(metrics.http.port)
        # Exactly the limit is allowed.
        answer = stub.ModelInfer(sized(LIMIT, request_id="exact"), timeout=30)
        assert answer.id == "exact"
        assert np.frombuffer(answer.raw_output_contents[0], "<f4").tolist() == [6.0]
        # One byte more is refused, with the size, the limit and its configuration key.
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(sized(LIMIT + 1), timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = refused.value.details() or ""
        assert "4097 bytes" in details and "grpc.max_message_bytes=4096" in details, details
        # A request naming no served model is refused the same way, counted under model="".
        with pytest.raises(grpc.RpcError) as unknown:
            stub.ModelInfer(sized(LIMIT + 500, model="nope"), timeout=30)
        assert unknown.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The server goes on serving.
        assert stub.ModelInfer(sized(100), timeout=30).model_name == "sum"
        got = scrape(metrics.http.port)
    assert rejected(got, "sum") - rejected(before, "sum") == 1
    assert rejected(got, "") - rejected(before, "") == 1
    exhausted = {"version": "1", "code": "RESOURCE_EXHAUSTED"}
    assert got.value("sidecar_inference_requests_total", model="sum", **exhausted) == 1
    assert got.value("sidecar_inference_requests_total", model="sum", version="1", code="OK") == 2
    assert "nope" not in got.label_values(REJECTED, "model")  # never a label from client text


def test_streamed_request_over_the_limit_gets_its_own_error_and_the_stream_goes_on(
    served: tuple[ServerThread, ServerMetrics],
) -> None:
    server, metrics = served
    messages = [
        sized(200, request_id="a"),
        sized(LIMIT + 1, request_id="big"),
        sized(200, "sum", "b"),
    ]
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        before = rejected(scrape(metrics.http.port), "sum")
        answers = list(stub.ModelStreamInfer(iter(messages), timeout=30))
        after = rejected(scrape(metrics.http.port), "sum")
    assert len(answers) == 3  # the stream ended normally (status OK) after all three
    failed = [a for a in answers if a.error_message]
    assert len(failed) == 1
    assert "grpc.max_message_bytes=4096" in failed[0].error_message
    assert failed[0].infer_response.id == "big"  # read from the refused bytes
    assert failed[0].infer_response.model_name == "sum"
    ok = sorted(a.infer_response.id for a in answers if not a.error_message)
    assert ok == ["a", "b"]
    assert after - before == 1


def test_request_over_the_transport_limit_is_refused_by_grpc_core_uncounted(
    served: tuple[ServerThread, ServerMetrics],
) -> None:
    server, metrics = served
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        before = scrape(metrics.http.port)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(sized(3 * LIMIT), timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "vs. 8192" in (refused.value.details() or "")  # core's own message
        # On a stream, core ends the whole call.
        stream = stub.ModelStreamInfer(iter([sized(200), sized(3 * LIMIT)]), timeout=30)
        with pytest.raises(grpc.RpcError) as ended:
            list(stream)
        assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The server keeps serving, on the same connection.
        assert stub.ModelInfer(sized(LIMIT), timeout=30).model_name == "sum"
        got = scrape(metrics.http.port)
    # No code of ours saw these calls: not counted (docs/security.md, "Limits").
    assert rejected(got, "sum") == rejected(before, "sum")
    exhausted = {"model": "sum", "version": "1", "code": "RESOURCE_EXHAUSTED"}
    assert got.value("sidecar_inference_requests_total", **exhausted) is None


def test_other_methods_refuse_messages_over_the_limit(
    served: tuple[ServerThread, ServerMetrics],
) -> None:
    server, _ = served
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelMetadata(pb.ModelMetadataRequest(name="n" * (LIMIT + 10)), timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = refused.value.details() or ""
        assert "ModelMetadata" in details and "grpc.max_message_bytes=4096" in details, details
        assert stub.ModelMetadata(pb.ModelMetadataRequest(name="sum"), timeout=30).name == "sum"


# ---------------------------------------------------------------- peek_request


def expected_peek(*fields: str) -> tuple[str, str, str]:
    """What peek_request reads: each field in order, "" from the first one too long."""
    found: list[str] = []
    for value in fields:
        if len(value.encode()) > PEEK_MAX:
            break
        found.append(value)
    found += [""] * (3 - len(found))
    return found[0], found[1], found[2]


NAMES = st.text(max_size=40) | st.text(min_size=1000, max_size=1100)


@settings(max_examples=300, deadline=None)
@given(name=NAMES, version=NAMES, request_id=NAMES, rows=st.integers(0, 3))
def test_peek_reads_the_leading_strings_of_an_encoded_request(
    name: str, version: str, request_id: str, rows: int
) -> None:
    req = pb.ModelInferRequest(model_name=name, model_version=version, id=request_id)
    req.inputs.add(name="x", datatype="FP32", shape=[rows, 4])
    req.raw_input_contents.append(bytes(16 * rows))
    assert peek_request(req.SerializeToString()) == expected_peek(name, version, request_id)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=64), cut=st.integers(0, 64))
def test_peek_never_fails_on_arbitrary_or_truncated_bytes(raw: bytes, cut: int) -> None:
    valid = pb.ModelInferRequest(model_name="model", model_version="7", id="abc")
    for data in (raw, valid.SerializeToString()[:cut], b"\x0a\xff\xff\xff\x0f" + raw):
        found = peek_request(data)
        assert all(isinstance(s, str) and len(s.encode()) <= PEEK_MAX for s in found)


def test_peek_skips_absent_fields_and_stops_at_others() -> None:
    only_id = pb.ModelInferRequest(id="r1").SerializeToString()
    assert peek_request(only_id) == ("", "", "r1")
    not_utf8 = b"\x0a\x02\xff\xfe\x12\x01" + b"3"
    assert peek_request(not_utf8) == ("", "3", "")
    inputs_first = pb.ModelInferRequest(inputs=[{"name": "x"}]).SerializeToString()
    assert peek_request(inputs_first + b"\x0a\x01m") == ("", "", "")
