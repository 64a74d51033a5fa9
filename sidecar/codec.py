"""KServe v2 protobuf ⇄ numpy, with every check a request must pass.

``RequestCodec`` is built once per loaded model; decoding a request is O(number
of inputs) Python work. Raw tensors are read with ``numpy.frombuffer`` (no
copy, no per-element Python work); typed ``contents`` are converted by numpy
from the repeated field in one call. Every problem raises an
``InvalidRequestError`` / ``ResourceExhaustedError`` whose message names the
input, what arrived and what the model expects.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import numpy as np

from sidecar.config import LimitsConfig
from sidecar.errors import (
    InvalidRequestError,
    ModelExecutionError,
    ResourceExhaustedError,
    quote,
)
from sidecar.proto import grpc_service_pb2 as pb
from sidecar.types import DATATYPES, ModelSignature, Tensors, TensorSpec, datatype_of

#: v2 datatype → the ``InferTensorContents`` field that carries it (FP16: raw only).
CONTENTS_FIELD: dict[str, str] = {
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
#: numpy dtype the repeated field holds before narrowing to the tensor's dtype.
_FIELD_DTYPE: dict[str, np.dtype] = {
    "bool_contents": np.dtype("?"),
    "int_contents": np.dtype("<i4"),
    "int64_contents": np.dtype("<i8"),
    "uint_contents": np.dtype("<u4"),
    "uint64_contents": np.dtype("<u8"),
    "fp32_contents": np.dtype("<f4"),
    "fp64_contents": np.dtype("<f8"),
}


#: Longest model name, version or id that ``peek_request`` reads (bytes).
PEEK_MAX = 1024
#: Tags of ModelInferRequest fields 1-3 (model_name, model_version, id; length-delimited).
_PEEK_TAGS = (0x0A, 0x12, 0x1A)


def peek_request(raw: bytes) -> tuple[str, str, str]:
    """``(model_name, model_version, id)`` from the first bytes of a ModelInferRequest.

    For a request refused before it is parsed (larger than grpc.max_message_bytes):
    protobuf encoders write fields in field-number order, so these three strings lead
    the message when they are set. O(1): reads at most three short fields. One that is
    absent, out of order, longer than ``PEEK_MAX`` bytes or not UTF-8 reads as "".
    The strings are client input: use them to look up a served model, or quote them.
    """
    found = ["", "", ""]
    pos, end = 0, len(raw)
    for index, tag in enumerate(_PEEK_TAGS):
        if pos >= end or raw[pos] != tag:
            continue
        # The length: a varint, at most two bytes for anything up to PEEK_MAX.
        if pos + 1 >= end:
            break
        length = raw[pos + 1]
        start = pos + 2
        if length & 0x80:
            if start >= end or raw[start] & 0x80:
                break
            length = (length & 0x7F) | (raw[start] << 7)
            start += 1
        if length > PEEK_MAX or start + length > end:
            break
        with contextlib.suppress(UnicodeDecodeError):  # not UTF-8: reads as ""
            found[index] = raw[start : start + length].decode()
        pos = start + length
    return found[0], found[1], found[2]


class RequestCodec:
    """Decodes requests for one model and encodes its responses."""

    def __init__(self, model: str, signature: ModelSignature, limits: LimitsConfig) -> None:
        self._model = model
        self._signature = signature
        self._limits = limits
        self._inputs: dict[str, TensorSpec] = {s.name: s for s in signature.inputs}
        self._outputs: tuple[str, ...] = tuple(s.name for s in signature.outputs)
        self._output_set = frozenset(self._outputs)
        self._expected = ", ".join(f"{s.name} {s.describe()}" for s in signature.inputs)
        #: Per output, what a well-formed answer's dtype and shape are, for a fast exact
        #: comparison: (spec, dtype, batched, dims after the batch dim or None when some
        #: of them are dynamic too and only the full check can tell).
        self._output_checks = tuple(
            (
                spec,
                spec.dtype,
                spec.batched,
                None if -1 in spec.shape[int(spec.batched) :] else spec.shape[int(spec.batched) :],
            )
            for spec in signature.outputs
        )

    # ------------------------------------------------------------------ decode

    def decode(self, request: pb.ModelInferRequest) -> tuple[Tensors, int]:
        """The request's inputs as arrays keyed by name, and its row count."""
        if len(request.id) > self._limits.max_request_id_length:
            raise ResourceExhaustedError(
                f"model {self._model!r}: request id of {len(request.id)} characters, more than "
                f"the limit max_request_id_length={self._limits.max_request_id_length}",
                reason="request_id_too_long",
            )
        n_inputs = len(request.inputs)
        if n_inputs > self._limits.max_inputs:
            raise ResourceExhaustedError(
                f"model {self._model!r}: request has {n_inputs} inputs, "
                f"more than the limit max_inputs={self._limits.max_inputs}",
                reason="too_many_inputs",
            )
        raw = request.raw_input_contents
        if raw and len(raw) != n_inputs:
            raise InvalidRequestError(
                f"model {self._model!r}: raw_input_contents has {len(raw)} entries but the "
                f"request has {n_inputs} inputs; send one raw entry per input, in input order"
            )
        tensors: Tensors = {}
        rows = -1
        for index, tensor in enumerate(request.inputs):
            spec = self._inputs.get(tensor.name)
            if spec is None:
                raise InvalidRequestError(
                    f"model {self._model!r}: unknown input {quote(tensor.name)}; "
                    f"the model's inputs are: {self._expected}"
                )
            if spec.name in tensors:
                raise InvalidRequestError(
                    f"model {self._model!r}: input {spec.name!r} appears more than once"
                )
            shape = self._check_header(spec, tensor)
            if raw:
                array = self._from_raw(spec, tensor, shape, raw[index])
            else:
                array = self._from_contents(spec, tensor, shape)
            if spec.batched:
                if rows == -1:
                    rows = shape[0]
                elif shape[0] != rows:
                    raise InvalidRequestError(
                        f"model {self._model!r}: input {spec.name!r} has {shape[0]} rows but "
                        f"other inputs have {rows}; every input needs the same batch size"
                    )
            tensors[spec.name] = array
        if len(tensors) != len(self._inputs):
            missing = [n for n in self._inputs if n not in tensors]
            raise InvalidRequestError(
                f"model {self._model!r}: missing input(s) {', '.join(missing)}; "
                f"the model's inputs are: {self._expected}"
            )
        return tensors, (rows if rows != -1 else 1)

    def _check_header(
        self, spec: TensorSpec, tensor: pb.ModelInferRequest.InferInputTensor
    ) -> tuple[int, ...]:
        where = f"model {self._model!r}, input {spec.name!r}"
        if tensor.datatype != spec.datatype:
            known = "" if tensor.datatype in DATATYPES else " (not a supported datatype)"
            raise InvalidRequestError(
                f"{where}: datatype {quote(tensor.datatype)}{known}, expected {spec.datatype} "
                f"(the model takes {spec.describe()})"
            )
        shape = tuple(tensor.shape)
        if len(shape) != len(spec.shape):
            raise InvalidRequestError(
                f"{where}: shape {list(shape)[:8]} has {len(shape)} dimensions, "
                f"expected {len(spec.shape)} as in {spec.describe()}"
            )
        for got, want in zip(shape, spec.shape, strict=True):
            if got < 0 or (want != -1 and got != want):
                raise InvalidRequestError(
                    f"{where}: shape {list(shape)} does not match {spec.describe()}"
                )
        if spec.batched and shape[0] == 0:
            raise InvalidRequestError(f"{where}: empty batch (shape {list(shape)}); send ≥ 1 row")
        if spec.batched and shape[0] > self._limits.max_batch_rows:
            raise ResourceExhaustedError(
                f"{where}: {shape[0]} rows, more than the limit "
                f"max_batch_rows={self._limits.max_batch_rows}",
                reason="too_many_rows",
            )
        elements = math.prod(shape)
        limit = self._limits.max_tensor_elements
        if elements > limit or max(shape, default=0) > limit:
            # A zero-size tensor may still name a huge dimension; no dimension may exceed the
            # element limit either (numpy refuses such shapes, and they mean nothing).
            raise ResourceExhaustedError(
                f"{where}: shape {list(shape)} has {elements} elements, more than the limit "
                f"max_tensor_elements={limit} (no dimension may exceed it either)",
                reason="too_many_elements",
            )
        return shape

    def _from_raw(
        self,
        spec: TensorSpec,
        tensor: pb.ModelInferRequest.InferInputTensor,
        shape: tuple[int, ...],
        data: bytes,
    ) -> np.ndarray:
        if tensor.HasField("contents"):
            raise InvalidRequestError(
                f"model {self._model!r}, input {spec.name!r}: both typed contents and "
                "raw_input_contents were given; send the tensor's data one way only"
            )
        expected = math.prod(shape) * spec.dtype.itemsize
        if len(data) != expected:
            raise InvalidRequestError(
                f"model {self._model!r}, input {spec.name!r}: raw data has {len(data)} bytes, "
                f"expected {expected} for shape {list(shape)} of {spec.datatype} "
                f"({spec.dtype.itemsize} bytes each)"
            )
        array = np.frombuffer(data, dtype=spec.dtype).reshape(shape)
        if spec.datatype == "BOOL" and array.size and array.view(np.uint8).max() > 1:
            raise InvalidRequestError(
                f"model {self._model!r}, input {spec.name!r}: raw BOOL data holds bytes other "
                "than 0 and 1"
            )
        return array

    def _from_contents(
        self,
        spec: TensorSpec,
        tensor: pb.ModelInferRequest.InferInputTensor,
        shape: tuple[int, ...],
    ) -> np.ndarray:
        where = f"model {self._model!r}, input {spec.name!r}"
        field = CONTENTS_FIELD.get(spec.datatype)
        if field is None:
            raise InvalidRequestError(
                f"{where}: {spec.datatype} has no typed contents field; "
                "send it as raw_input_contents"
            )
        if not tensor.HasField("contents"):
            raise InvalidRequestError(
                f"{where}: no data; send typed contents ({field}) or raw_input_contents"
            )
        values = getattr(tensor.contents, field)
        count = math.prod(shape)
        if len(values) != count:
            others = [f for f in _FIELD_DTYPE if f != field and len(getattr(tensor.contents, f))]
            hint = f" (data was sent in {', '.join(others)})" if others else ""
            raise InvalidRequestError(
                f"{where}: {field} has {len(values)} values, expected {count} for shape "
                f"{list(shape)} of {spec.datatype}{hint}"
            )
        wide = np.array(values, dtype=_FIELD_DTYPE[field])
        if wide.dtype != spec.dtype:
            info = np.iinfo(spec.dtype)
            if wide.size and (wide.min() < info.min or wide.max() > info.max):
                raise InvalidRequestError(
                    f"{where}: values out of range for {spec.datatype} ({info.min}..{info.max})"
                )
            wide = wide.astype(spec.dtype)
        return wide.reshape(shape)

    # ------------------------------------------------------------------ outputs

    def check_outputs(self, outputs: Tensors, rows: int) -> None:
        """ModelExecutionError unless every declared output came back as declared.

        A model answering with a missing output, another datatype, another number
        of dimensions or another row count is broken; its answer must not reach a
        client (or, batched, be split between the wrong requests).
        """
        is_dict = isinstance(outputs, dict)
        for spec, dtype, batched, fixed in self._output_checks:
            array = outputs.get(spec.name) if is_dict else None
            # The common case in one comparison: the declared dtype and exact shape.
            if (
                fixed is not None
                and type(array) is np.ndarray
                and array.dtype == dtype
                and array.shape == ((rows, *fixed) if batched else fixed)
            ):
                continue
            self._check_output(spec, outputs, array, rows)

    def _check_output(self, spec: TensorSpec, outputs: Tensors, array: object, rows: int) -> None:
        """The full check of one output (raises ModelExecutionError with the reason)."""
        where = f"model {self._model!r} returned output {spec.name!r}"
        if array is None:
            got = sorted(outputs)[:8] if isinstance(outputs, dict) else type(outputs).__name__
            raise ModelExecutionError(
                f"model {self._model!r} did not return output {spec.name!r} (it returned {got})"
            )
        if not isinstance(array, np.ndarray):
            raise ModelExecutionError(f"{where} as {type(array).__name__}, not an array")
        try:
            datatype = datatype_of(array.dtype)
        except ValueError:
            datatype = str(array.dtype)
        shape = array.shape
        if (
            datatype != spec.datatype
            or len(shape) != len(spec.shape)
            or any(w not in (-1, g) for g, w in zip(shape, spec.shape, strict=True))
            or (spec.batched and shape[0] != rows)
        ):
            raise ModelExecutionError(
                f"{where} as {datatype}{list(shape)[:8]}, expected {spec.describe()}"
                + (f" with {rows} rows" if spec.batched else "")
            )

    def requested_outputs(self, request: pb.ModelInferRequest) -> Sequence[str]:
        """Names of the outputs to return: those the request names, else all."""
        if not request.outputs:
            return self._outputs
        names = []
        for out in request.outputs:
            if out.name not in self._output_set:
                raise InvalidRequestError(
                    f"model {self._model!r}: unknown output {quote(out.name)} requested; "
                    f"the model's outputs are: {', '.join(self._outputs)}"
                )
            if "classification" in out.parameters:
                raise InvalidRequestError(
                    f"model {self._model!r}, output {out.name!r}: the classification extension "
                    "is not supported; request the scores and take the top class client-side"
                )
            names.append(out.name)
        return names


def encode_response(
    model: str, version: str, request_id: str, outputs: Tensors, names: Sequence[str]
) -> pb.ModelInferResponse:
    """A ModelInferResponse with the named outputs as ``raw_output_contents``, as Triton does."""
    response = pb.ModelInferResponse(model_name=model, model_version=version, id=request_id)
    for name in names:
        array = outputs[name]
        datatype = datatype_of(array.dtype)
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        response.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
    return response
