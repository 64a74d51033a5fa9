"""Property-based fuzzing of the v2 request decoder, called directly (no gRPC).

Every hostile request either decodes into arrays that match the model's
signature or raises a RequestError with a specific status code and a short
message; nothing else escapes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.codec import RequestCodec
from sidecar.config import LimitsConfig
from sidecar.errors import MAX_QUOTE, RequestError
from sidecar.proto import grpc_service_pb2 as pb
from sidecar.types import ModelSignature, TensorSpec
from tests.sidecar.fuzz import hostile_request

INPUTS = (
    TensorSpec("a", "FP32", (-1, 3)),
    TensorSpec("b", "INT8", (-1,)),
    TensorSpec("c", "BOOL", (-1, 2)),
    TensorSpec("d", "FP16", (-1, -1, -1)),
    TensorSpec("e", "UINT64", ()),
    TensorSpec("f", "INT16", (2, -1)),
    TensorSpec("g", "UINT8", (-1, 2)),
    TensorSpec("h", "FP64", (-1, 1)),
)
LIMITS = LimitsConfig(max_batch_rows=50, max_tensor_elements=1000, max_inputs=10)
#: One signature with every input, and single-input ones (mutations then always hit the
#: input) for those with the most edge cases: BOOL bytes, all-dynamic FP16, a scalar, a
#: fixed first dimension with integer narrowing.
SIGNATURES = [INPUTS, *((spec,) for spec in INPUTS if spec.name in "cdef")]


def codec(inputs: tuple[TensorSpec, ...]) -> RequestCodec:
    return RequestCodec("m", ModelSignature(inputs, inputs, "fake"), LIMITS)


CODES = {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def check_decoded(
    inputs: tuple[TensorSpec, ...],
    request: pb.ModelInferRequest,
    tensors: dict[str, np.ndarray],
    rows: int,
) -> None:
    assert set(tensors) == {s.name for s in inputs}
    headers = {t.name: t for t in request.inputs}
    for spec in inputs:
        array = tensors[spec.name]
        assert array.dtype == spec.dtype
        assert list(array.shape) == list(headers[spec.name].shape)
        assert all(w in (-1, g) for g, w in zip(array.shape, spec.shape, strict=True))
        assert array.size <= LIMITS.max_tensor_elements
        if spec.batched:
            assert array.shape[0] == rows
            assert 1 <= rows <= LIMITS.max_batch_rows
        if spec.datatype == "BOOL":  # raw bytes other than 0/1 are not booleans
            assert set(np.unique(array.view(np.uint8)).tolist()) <= {0, 1}


@pytest.mark.parametrize("inputs", SIGNATURES, ids=lambda s: "+".join(x.name for x in s))
@FUZZ
@given(data=st.data())
def test_decoder_accepts_or_refuses_with_a_specific_code(
    inputs: tuple[TensorSpec, ...], data: st.DataObject
) -> None:
    request = data.draw(hostile_request("m", inputs, max_mutations=4))
    decoder = codec(inputs)
    try:
        tensors, rows = decoder.decode(request)
        decoder.requested_outputs(request)
    except RequestError as exc:
        assert exc.code in CODES, exc.message
        assert len(exc.message) < 600, exc.message
        long_names = [t.name for t in request.inputs if len(t.name) > MAX_QUOTE]
        long_names += [o.name for o in request.outputs if len(o.name) > MAX_QUOTE]
        for name in long_names:  # client text is quoted only up to MAX_QUOTE characters
            assert name not in exc.message
        return
    check_decoded(inputs, request, tensors, rows)


@FUZZ
@given(hostile_request("m", INPUTS, max_mutations=0))
def test_valid_requests_decode(request: pb.ModelInferRequest) -> None:
    tensors, rows = codec(INPUTS).decode(request)
    check_decoded(INPUTS, request, tensors, rows)
    assert rows == request.inputs[0].shape[0]
    assert math.prod(tensors["e"].shape) == 1
