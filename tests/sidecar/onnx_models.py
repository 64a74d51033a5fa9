"""Tiny ONNX models written in tests (identity per datatype, a broken file)."""

from __future__ import annotations

from pathlib import Path

ONNX_TYPES = {
    "BOOL": "BOOL",
    "INT8": "INT8",
    "INT16": "INT16",
    "INT32": "INT32",
    "INT64": "INT64",
    "UINT8": "UINT8",
    "UINT16": "UINT16",
    "UINT32": "UINT32",
    "UINT64": "UINT64",
    "FP16": "FLOAT16",
    "FP32": "FLOAT",
    "FP64": "DOUBLE",
}


def write_identity(path: Path, datatype: str, width: int = 3) -> None:
    """model.onnx: output ``y`` = input ``x``, both ``datatype``[-1, width]."""
    import onnx
    from onnx import TensorProto, helper

    elem = getattr(TensorProto, ONNX_TYPES[datatype])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", elem, ["batch", width])],
        [helper.make_tensor_value_info("y", elem, ["batch", width])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
