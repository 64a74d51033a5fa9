"""A bare grpc.aio KServe v2 server: the ceiling a Python gRPC model server can reach.

Answers ModelMetadata with an ONNX model's signature and ModelInfer with a
response of the same size the model would give (outputs of the right shapes,
zeros), doing nothing else: no decoding, no checks, no model, no monitoring.
With ``--onnx`` it runs the model inline on the event loop instead of zeros
(the "minimal server": decode with frombuffer, session.run, encode), which is
what the lightest possible real server costs.

    python -m benchmarks.echo_server --port 9001 --model sidecar/examples/models/digits/1/model.onnx
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from sidecar.proto import grpc_service_pb2 as pb
from sidecar.proto import grpc_service_pb2_grpc as pb_grpc

_ORT_TYPES = {"tensor(float)": ("FP32", np.float32), "tensor(int64)": ("INT64", np.int64)}


class EchoServicer(pb_grpc.GRPCInferenceServiceServicer):
    """ServerReady, ModelReady, ModelMetadata, ModelInfer: the least work that answers."""

    def __init__(self, name: str, model: Path, run_model: bool) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        self._name = name
        self._run_model = run_model
        self._inputs = [
            (i.name, _ORT_TYPES[i.type][0], _ORT_TYPES[i.type][1], i.shape)
            for i in self._session.get_inputs()
        ]
        self._outputs = [
            (o.name, _ORT_TYPES[o.type][0], _ORT_TYPES[o.type][1], o.shape)
            for o in self._session.get_outputs()
        ]
        self._output_names = [o[0] for o in self._outputs]
        self._zeros: dict[int, list[bytes]] = {}

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=request.name == self._name)

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        if request.name != self._name:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.name!r} not found")

        def meta(specs: list[tuple[str, str, Any, list[Any]]]) -> list[Any]:
            return [
                pb.ModelMetadataResponse.TensorMetadata(
                    name=n, datatype=d, shape=[s if isinstance(s, int) else -1 for s in shape]
                )
                for n, d, _, shape in specs
            ]

        return pb.ModelMetadataResponse(
            name=self._name,
            versions=["1"],
            platform="onnxruntime_onnx",
            inputs=meta(self._inputs),
            outputs=meta(self._outputs),
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Any
    ) -> pb.ModelInferResponse:
        rows = request.inputs[0].shape[0]
        response = pb.ModelInferResponse(model_name=self._name, model_version="1", id=request.id)
        if self._run_model:
            feed = {
                name: np.frombuffer(raw, dtype=dtype).reshape(tuple(tensor.shape))
                for (name, _, dtype, _), tensor, raw in zip(
                    self._inputs, request.inputs, request.raw_input_contents, strict=True
                )
            }
            results = self._session.run(self._output_names, feed)
            for (name, datatype, _, _), array in zip(self._outputs, results, strict=True):
                response.outputs.add(name=name, datatype=datatype, shape=array.shape)
                response.raw_output_contents.append(array.tobytes())
            return response
        blobs = self._zeros.get(rows)
        if blobs is None:
            blobs = self._zeros[rows] = [
                bytes(rows * int(np.prod([d for d in shape[1:]])) * np.dtype(dtype).itemsize)
                for _, _, dtype, shape in self._outputs
            ]
        for (name, datatype, _, shape), blob in zip(self._outputs, blobs, strict=True):
            response.outputs.add(name=name, datatype=datatype, shape=[rows, *shape[1:]])
            response.raw_output_contents.append(blob)
        return response


async def serve(port: int, name: str, model: Path, run_model: bool) -> None:
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(EchoServicer(name, model, run_model), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"echo server on 127.0.0.1:{port} ({'onnxruntime inline' if run_model else 'echo'})")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="digits")
    parser.add_argument("--model", type=Path, required=True, help="model.onnx")
    parser.add_argument("--onnx", action="store_true", help="run the model inline")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.name, args.model, args.onnx))


if __name__ == "__main__":
    main()
