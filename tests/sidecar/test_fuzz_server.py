"""Property-based fuzzing over a real loopback server: inference (unary, streamed, garbage
bytes) and the FeedbackService (hostile labels, batches, streams, garbage bytes).

Every call ends in OK or a specific status code (never UNKNOWN or INTERNAL,
never a hang: each call has a deadline), the server logs no unexpected
exception, and the next good request succeeds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.app import AppParts
from sidecar.proto import feedback_pb2 as fb
from sidecar.proto import feedback_pb2_grpc as fb_grpc
from sidecar.proto import grpc_service_pb2 as pb
from sidecar.proto import grpc_service_pb2_grpc as pb_grpc
from sidecar.runtimes.fakes import EchoRuntime, SumRuntime
from tests.helpers import RecordingListener, ServerThread, running_server, server_config
from tests.labels.helpers import copy_models, label_parts, registry_of
from tests.sidecar.fuzz import NAMES, hostile_request
from tests.sidecar.test_fuzz_codec import INPUTS

#: What a hostile request may get; UNKNOWN, INTERNAL or a hang would be a server bug.
EXPECTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
MODELS = {"all": INPUTS, "d": (INPUTS[3],), "c": (INPUTS[2],), "e": (INPUTS[4],)}


@pytest.fixture(scope="module")
def fuzzed_parts(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerThread, AppParts]]:
    """Echo models of every datatype, and the digits classifier with the label store."""
    repo = copy_models(tmp_path_factory.mktemp("repo"), ["digits"])
    config = server_config(
        repo,
        grpc={"max_message_bytes": 1 << 20},
        limits={"max_batch_rows": 50, "max_tensor_elements": 1000, "max_inputs": 10},
        labels={"max_batch_labels": 20},
    )
    parts = label_parts(config)
    parts.listeners.append(RecordingListener())
    fakes = [(name, EchoRuntime(inputs), None) for name, inputs in MODELS.items()]
    fakes.append(("sum", SumRuntime(), None))
    with running_server(config, parts, fakes=fakes) as thread:
        yield thread, parts


@pytest.fixture(scope="module")
def fuzzed(fuzzed_parts: tuple[ServerThread, AppParts]) -> tuple[ServerThread, RecordingListener]:
    thread, parts = fuzzed_parts
    recorder = parts.listeners[-1]
    assert isinstance(recorder, RecordingListener)
    return thread, recorder


@pytest.fixture(scope="module")
def channel(fuzzed: tuple[ServerThread, RecordingListener]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fuzzed[0].address) as channel:
        yield channel


@pytest.fixture(autouse=True)
def no_unexpected_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.ERROR, logger="sidecar")
    yield
    unexpected = [r for r in caplog.records if r.name.startswith("sidecar")]
    assert unexpected == [], [r.getMessage() for r in unexpected]


def good_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="sum")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    return request


def still_serves(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    response = stub.ModelInfer(good_request(), timeout=10)
    assert np.frombuffer(response.raw_output_contents[0], "<f4").tolist() == [4.0]


def outcome(call: grpc.RpcError | None) -> grpc.StatusCode:
    return grpc.StatusCode.OK if call is None else call.code()


@FUZZ
@given(data=st.data())
def test_model_infer(channel: grpc.Channel, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(MODELS)))
    request = data.draw(hostile_request(name, MODELS[name], max_mutations=4))
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    try:
        response = stub.ModelInfer(request, timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() in EXPECTED, (exc.code(), exc.details())
        assert len(exc.details()) < 600
    else:  # echoed back: every output has the shape its input declared
        shapes = {o.name: list(o.shape) for o in response.outputs}
        assert shapes == {t.name: list(t.shape) for t in request.inputs}
        assert response.id == (request.id or response.id) and response.id
    still_serves(stub)


@FUZZ
@given(data=st.data())
def test_model_stream_infer(channel: grpc.Channel, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(MODELS)))
    requests = data.draw(st.lists(hostile_request(name, MODELS[name]), min_size=1, max_size=6))
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    answers = list(stub.ModelStreamInfer(iter(requests), timeout=10))
    assert len(answers) == len(requests)
    for answer in answers:
        assert answer.error_message or answer.infer_response.outputs
        assert "internal error" not in answer.error_message
    still_serves(stub)


@FUZZ
@given(
    method=st.sampled_from(
        [
            "/inference.GRPCInferenceService/ModelInfer",
            "/inference.GRPCInferenceService/ModelMetadata",
            "/inference.GRPCInferenceService/ModelReady",
            "/inference.GRPCInferenceService/ServerMetadata",
            "/grpc.health.v1.Health/Check",
        ]
    ),
    payload=st.one_of(st.binary(max_size=200), st.just(b"\x0a\x03\xff\xfe\xfd")),
)
def test_garbage_bytes(channel: grpc.Channel, method: str, payload: bytes) -> None:
    call = channel.unary_unary(method)
    try:
        call(payload, timeout=10)
    except grpc.RpcError as exc:
        allowed = EXPECTED | {grpc.StatusCode.INVALID_ARGUMENT}
        if method.startswith("/grpc.health"):
            allowed.add(grpc.StatusCode.NOT_FOUND)  # unknown service name
        assert exc.code() in allowed, (exc.code(), exc.details())
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "protobuf" in exc.details():
            assert "is not a valid" in exc.details()
    still_serves(pb_grpc.GRPCInferenceServiceStub(channel))


@FUZZ
@given(payloads=st.lists(st.binary(max_size=100), min_size=1, max_size=4))
def test_garbage_stream_messages(channel: grpc.Channel, payloads: list[bytes]) -> None:
    call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
    try:
        answers = list(call(iter(payloads), timeout=10))
    except grpc.RpcError as exc:  # a message that does not parse ends the stream
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (exc.code(), exc.details())
        assert "not a valid inference.ModelInferRequest" in exc.details()
    else:
        assert len(answers) == len(payloads)
    still_serves(pb_grpc.GRPCInferenceServiceStub(channel))


@FUZZ
@given(name=NAMES, version=NAMES)
def test_metadata_and_readiness_of_any_name(channel: grpc.Channel, name: str, version: str) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    for rpc, request in (
        (stub.ModelMetadata, pb.ModelMetadataRequest(name=name, version=version)),
        (stub.ModelReady, pb.ModelReadyRequest(name=name, version=version)),
    ):
        try:
            rpc(request, timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, (exc.code(), exc.details())
            assert len(exc.details()) < 300
    health = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    try:
        health(health_pb2.HealthCheckRequest(service=name), timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND


LABEL_VALUES = st.one_of(
    st.builds(
        lambda v: {"class_name": v}, st.one_of(st.sampled_from(["three", "other", ""]), NAMES)
    ),
    st.builds(lambda v: {"class_index": v}, st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda v: {"number": v}, st.floats()),
    st.just({}),
)
LABELS = st.builds(
    lambda request_id, model, row, value: fb.Label(
        request_id=request_id, model_name=model, row=row, **value
    ),
    st.one_of(st.just("nobody"), NAMES),
    st.one_of(st.sampled_from(["digits", "sum", ""]), NAMES),
    st.integers(0, 2**32 - 1),
    LABEL_VALUES,
)


@FUZZ
@given(
    batches=st.lists(st.lists(LABELS, max_size=25), min_size=1, max_size=3), stream=st.booleans()
)
def test_feedback_service(
    channel: grpc.Channel, batches: list[list[fb.Label]], stream: bool
) -> None:
    stub = fb_grpc.FeedbackServiceStub(channel)
    requests = [fb.SendLabelsRequest(labels=batch) for batch in batches]
    try:
        if stream:
            summary = stub.StreamLabels(iter(requests), timeout=10)
            assert summary.received == sum(len(b) for b in batches)
        else:
            for request in requests:
                reply = stub.SendLabels(request, timeout=10)
                assert len(reply.results) == len(request.labels)
                for result in reply.results:
                    assert len(result.detail) < 300
    except grpc.RpcError as exc:  # more than max_batch_labels (20) in one batch
        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (exc.code(), exc.details())
        assert "20" in exc.details()
    still_serves(pb_grpc.GRPCInferenceServiceStub(channel))


@FUZZ
@given(
    method=st.sampled_from(
        ["/sidecar.v1.FeedbackService/SendLabels", "/sidecar.v1.FeedbackService/StreamLabels"]
    ),
    payloads=st.lists(st.binary(max_size=100), min_size=1, max_size=3),
)
def test_feedback_garbage_bytes(channel: grpc.Channel, method: str, payloads: list[bytes]) -> None:
    try:
        if method.endswith("SendLabels"):
            channel.unary_unary(method)(payloads[0], timeout=10)
        else:
            channel.stream_unary(method)(iter(payloads), timeout=10)
    except grpc.RpcError as exc:
        allowed = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert exc.code() in allowed, (exc.code(), exc.details())
    still_serves(pb_grpc.GRPCInferenceServiceStub(channel))


def test_hostile_labels_made_no_metric_label_values(
    fuzzed_parts: tuple[ServerThread, AppParts],
) -> None:
    registry = registry_of(fuzzed_parts[1])
    models = set()
    classes = set()
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.startswith("sidecar_label"):
                models.add(sample.labels.get("model"))
                classes |= {
                    v for k, v in sample.labels.items() if k in ("class", "predicted", "actual")
                }
    digits = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
    served = {m.name for m in fuzzed_parts[0].server.plane.models.models}
    assert models <= served | {None, ""}, models - served  # served models only ("" = unknown)
    assert classes <= digits | {"other"}, classes - digits


def test_no_request_ended_unknown_or_internal(
    fuzzed: tuple[ServerThread, RecordingListener],
) -> None:
    codes = {r.code for r in fuzzed[1].records}
    assert codes, "the fuzz tests above sent requests"
    assert not codes & {"UNKNOWN", "INTERNAL"}
