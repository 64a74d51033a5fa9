"""The wire contract: generated stubs are fresh and match Triton's own."""

from __future__ import annotations

from typing import Any

from sidecar.proto import build
from sidecar.proto import grpc_service_pb2 as ours


def test_generated_stubs_are_not_stale() -> None:
    assert build.main(["--check"]) == 0, "run: python -m sidecar.proto.build"


def _fields(message: Any) -> dict[str, tuple[int, int, bool]]:
    return {f.name: (f.number, f.type, f.is_repeated) for f in message.fields}


def _compare(a: Any, b: Any, path: str, problems: list[str]) -> None:
    theirs = _fields(b)
    for name, spec in _fields(a).items():
        if theirs.get(name) != spec:
            problems.append(f"{path}.{name}: ours {spec}, triton {theirs.get(name)}")
    for nested in a.nested_types:
        _compare(nested, b.nested_types_by_name[nested.name], f"{path}.{nested.name}", problems)


def test_messages_match_tritons_field_for_field() -> None:
    from tritonclient.grpc import service_pb2 as triton

    problems: list[str] = []
    for name, message in ours.DESCRIPTOR.message_types_by_name.items():
        assert name in triton.DESCRIPTOR.message_types_by_name, name
        _compare(message, triton.DESCRIPTOR.message_types_by_name[name], name, problems)
    assert problems == []
    service = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in service.methods:
        other = theirs.methods_by_name[method.name]
        assert method.input_type.full_name == other.input_type.full_name
        assert method.output_type.full_name == other.output_type.full_name


def test_a_request_round_trips_through_tritons_messages() -> None:
    from tritonclient.grpc import service_pb2 as triton

    request = ours.ModelInferRequest(model_name="m", model_version="2", id="abc")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(b"\x00" * 8)
    decoded = triton.ModelInferRequest.FromString(request.SerializeToString())
    assert decoded.model_name == "m" and decoded.id == "abc"
    assert list(decoded.inputs[0].shape) == [1, 2]
    assert decoded.raw_input_contents[0] == b"\x00" * 8
