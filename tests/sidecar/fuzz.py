"""Hypothesis strategies for hostile KServe v2 requests, shared by the fuzz tests.

A request is drawn as a valid one for a signature (random row counts, random
dynamic dimensions, raw or typed data) and then damaged by a list of random
mutations, so the fuzzer reaches every check of the decoder, not only the
first one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from hypothesis import strategies as st

from sidecar.proto import grpc_service_pb2 as pb
from sidecar.types import DATATYPES, TensorSpec

#: Every datatype the decoder knows, plus names it must refuse.
DATATYPE_NAMES = st.one_of(
    st.sampled_from([*DATATYPES, "BYTES", "", "fp32", "FP32 ", "INT128", "STRING"]),
    st.text(max_size=12),
)
#: Dimensions: small, zero, negative, and ones that overflow when multiplied.
DIMS = st.one_of(
    st.integers(-3, 6),
    st.just(0),
    st.sampled_from([2**31 - 1, 2**31, 2**32 + 1, 2**40, 2**62, 2**63 - 1, -(2**63)]),
)
#: Dimensions whose products overflow int64, and zeros to put beside them.
OVERFLOWING = [0, 1, 2**62, 2**63 - 1]
NAMES = st.one_of(st.text(max_size=8), st.text(min_size=65, max_size=300))
CONTENT_FIELDS = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
}
TYPED_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}

Mutation = Callable[[pb.ModelInferRequest], None]


@st.composite
def valid_request(
    draw: st.DrawFn, model: str, inputs: tuple[TensorSpec, ...]
) -> pb.ModelInferRequest:
    """A request every check accepts: one row count, dynamic dims drawn, raw or typed data."""
    request = pb.ModelInferRequest(model_name=model)
    rows = draw(st.integers(1, 4))
    raw = draw(st.booleans()) or any(s.datatype not in TYPED_FIELD for s in inputs)
    for spec in inputs:
        shape = [
            (rows if i == 0 else draw(st.integers(1, 3))) if d == -1 else d
            for i, d in enumerate(spec.shape)
        ]
        tensor = request.inputs.add(name=spec.name, datatype=spec.datatype, shape=shape)
        count = math.prod(shape)
        data = np.arange(count, dtype=np.int64) % 2 if spec.datatype == "BOOL" else np.arange(count)
        array = data.astype(spec.dtype)
        if raw:
            request.raw_input_contents.append(array.tobytes())
        else:
            getattr(tensor.contents, TYPED_FIELD[spec.datatype]).extend(array.tolist())
    return request


@st.composite
def mutation(draw: st.DrawFn) -> Mutation:
    """One random change to a request."""
    kind = draw(
        st.sampled_from(
            [
                "datatype", "shape", "overflow_shape", "overflow_shape", "dim", "raw_bytes",
                "raw_cut", "raw_extra", "raw_clear", "contents", "drop_input", "dup_input",
                "new_input", "model", "version", "id",
                "parameter", "output", "output_parameter",
            ]
        )
    )  # fmt: skip
    index = draw(st.integers(0, 7))
    if kind == "datatype":
        value = draw(DATATYPE_NAMES)

        def change(r: pb.ModelInferRequest) -> None:
            if r.inputs:
                r.inputs[index % len(r.inputs)].datatype = value

    elif kind == "shape":
        dims = draw(st.lists(DIMS, min_size=6, max_size=6))
        same_rank = draw(st.booleans())
        rank = draw(st.integers(0, 6))

        def change(r: pb.ModelInferRequest) -> None:
            if r.inputs:
                tensor = r.inputs[index % len(r.inputs)]
                keep = len(tensor.shape) if same_rank else rank
                del tensor.shape[:]
                tensor.shape.extend(dims[:keep])

    elif kind == "overflow_shape":  # products that overflow int64, zeros beside huge dims
        dims = draw(st.lists(st.sampled_from(OVERFLOWING), min_size=6, max_size=6))

        def change(r: pb.ModelInferRequest) -> None:
            if r.inputs and r.inputs[index % len(r.inputs)].shape:
                shape = r.inputs[index % len(r.inputs)].shape
                shape[1:] = dims[: len(shape) - 1]  # keep the row count

    elif kind == "dim":
        dim = draw(DIMS)

        def change(r: pb.ModelInferRequest) -> None:
            if r.inputs and r.inputs[index % len(r.inputs)].shape:
                shape = r.inputs[index % len(r.inputs)].shape
                shape[index % len(shape)] = dim

    elif kind == "raw_bytes":
        data = draw(st.binary(max_size=64))

        def change(r: pb.ModelInferRequest) -> None:
            if r.raw_input_contents:
                r.raw_input_contents[index % len(r.raw_input_contents)] = data

    elif kind == "raw_cut":
        cut = draw(st.integers(1, 9))

        def change(r: pb.ModelInferRequest) -> None:
            if r.raw_input_contents:
                i = index % len(r.raw_input_contents)
                r.raw_input_contents[i] = r.raw_input_contents[i][:-cut]

    elif kind == "raw_extra":
        data = draw(st.binary(max_size=16))

        def change(r: pb.ModelInferRequest) -> None:
            r.raw_input_contents.append(data)

    elif kind == "raw_clear":

        def change(r: pb.ModelInferRequest) -> None:
            r.ClearField("raw_input_contents")

    elif kind == "contents":
        field = draw(st.sampled_from(sorted(CONTENT_FIELDS)))
        values = draw(st.lists(CONTENT_FIELDS[field], max_size=12))

        def change(r: pb.ModelInferRequest) -> None:
            if r.inputs:
                target = getattr(r.inputs[index % len(r.inputs)].contents, field)
                del target[:]
                target.extend(values)

    elif kind == "drop_input":

        def change(r: pb.ModelInferRequest) -> None:
            if r.inputs:
                del r.inputs[index % len(r.inputs)]

    elif kind == "dup_input":

        def change(r: pb.ModelInferRequest) -> None:
            if r.inputs:
                r.inputs.add().CopyFrom(r.inputs[index % len(r.inputs)])
                if r.raw_input_contents:
                    r.raw_input_contents.append(r.raw_input_contents[-1])

    elif kind == "new_input":
        name, datatype = draw(NAMES), draw(DATATYPE_NAMES)
        dims = draw(st.lists(DIMS, max_size=4))

        def change(r: pb.ModelInferRequest) -> None:
            r.inputs.add(name=name, datatype=datatype, shape=dims)

    elif kind in ("model", "version", "id"):
        text = draw(NAMES)
        attr = {"model": "model_name", "version": "model_version", "id": "id"}[kind]

        def change(r: pb.ModelInferRequest) -> None:
            setattr(r, attr, text)

    elif kind == "parameter":
        key = draw(NAMES)
        value = draw(
            st.one_of(
                st.builds(lambda v: pb.InferParameter(bool_param=v), st.booleans()),
                st.builds(
                    lambda v: pb.InferParameter(int64_param=v), st.integers(-(2**63), 2**63 - 1)
                ),
                st.builds(lambda v: pb.InferParameter(string_param=v), st.text(max_size=20)),
            )
        )

        def change(r: pb.ModelInferRequest) -> None:
            target = (
                r.inputs[index % len(r.inputs)].parameters
                if r.inputs and index % 2
                else r.parameters
            )
            target[key].CopyFrom(value)

    elif kind == "output":
        name = draw(NAMES)

        def change(r: pb.ModelInferRequest) -> None:
            r.outputs.add(name=name)

    else:
        key = draw(st.sampled_from(["classification", "binary_data", "x"]))

        def change(r: pb.ModelInferRequest) -> None:
            out = r.outputs.add(name=r.inputs[0].name if r.inputs else "x")
            out.parameters[key].int64_param = 1

    return change


def hostile_request(
    model: str, inputs: tuple[TensorSpec, ...], max_mutations: int = 3
) -> st.SearchStrategy[pb.ModelInferRequest]:
    """A valid request for ``inputs`` damaged by up to ``max_mutations`` random changes."""

    @st.composite
    def build(draw: st.DrawFn) -> pb.ModelInferRequest:
        request = draw(valid_request(model, inputs))
        for change in draw(st.lists(mutation(), max_size=max_mutations)):
            change(request)
        if max_mutations and draw(st.booleans()):
            refit(draw, request)
        return request

    return build()


def refit(draw: st.DrawFn, request: pb.ModelInferRequest) -> None:
    """Give each input data of the size its (possibly damaged) header asks for.

    Random raw bytes of exactly the right length reach the checks behind the
    size check (BOOL bytes that are not 0/1, NaN bit patterns, zero-size
    tensors with huge dimensions).
    """
    raw = draw(st.booleans()) or any(t.datatype not in TYPED_FIELD for t in request.inputs)
    request.ClearField("raw_input_contents")
    for tensor in request.inputs:
        dtype = DATATYPES.get(tensor.datatype)
        count = math.prod(tensor.shape) if dtype and all(d >= 0 for d in tensor.shape) else 0
        if count > 64:
            count = 0
        if raw:
            request.raw_input_contents.append(
                draw(
                    st.binary(
                        min_size=count * (dtype.itemsize if dtype else 1),
                        max_size=count * (dtype.itemsize if dtype else 1),
                    )
                )
            )
        elif tensor.datatype in TYPED_FIELD:
            field = TYPED_FIELD[tensor.datatype]
            tensor.ClearField("contents")
            getattr(tensor.contents, field).extend(
                draw(st.lists(CONTENT_FIELDS[field], min_size=count, max_size=count))
            )
