"""The request path in-process, without gRPC: what our code costs per request.

On a shared 2-vCPU machine server-level comparisons carry ±20 % noise, which
hides differences of a few percent. This measures the part of a request that
is ours, in one process, alternating the variants many times:

- ``minimal``: what the bare server in benchmarks/echo_server.py does with a
  request: ``numpy.frombuffer`` the input, build the response;
- ``data plane``: ``DataPlane.infer`` with metrics off (resolve, decode with
  every check, run, encode, request record);
- ``data plane + monitoring``: the same with the server's default monitoring
  (whatever ``build_server`` wires in this build: metrics, output analysis,
  the delayed-label store, ...) and the digits model's shipped ``monitoring``
  section (a classifier), so every part has work to do;
- ``data plane + batcher``: metrics off, the model behind a ``Batcher`` with
  the default settings.

The model is a constant (the digits model's output shapes, no compute), so
the figures are the request path alone. CPU µs per request of the whole
process (background threads such as the output analysis and the label
store's writer included), fastest and median of the repeats.

    python -m benchmarks.request_path --repeats 15 --requests 5000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from benchmarks.common import EXAMPLES, machine, save
from benchmarks.monitoring_overhead import switchable
from sidecar.app import build_server
from sidecar.config import BatchingConfig, ModelConfig, ServerConfig, load_model_config
from sidecar.dataplane import DataPlane
from sidecar.proto import grpc_service_pb2 as pb
from sidecar.runtimes.fakes import SumRuntime
from sidecar.server import SidecarServer
from sidecar.types import ModelSignature, Tensors, TensorSpec


class Constant(SumRuntime):
    """The digits model's signature, answering with fixed arrays (no compute)."""

    def __init__(self) -> None:
        super().__init__(64)
        self._signature = ModelSignature(
            inputs=(TensorSpec("input", "FP32", (-1, 64)),),
            outputs=(
                TensorSpec("logits", "FP32", (-1, 10)),
                TensorSpec("probabilities", "FP32", (-1, 10)),
            ),
            platform="constant",
        )
        self.outputs = {
            "logits": np.zeros((1, 10), np.float32),
            "probabilities": np.full((1, 10), 0.1, np.float32),
        }

    async def predict(self, inputs: Tensors) -> Tensors:
        """The fixed outputs."""
        return self.outputs

    def predict_inline(self, inputs: Tensors) -> Tensors | None:
        """The fixed outputs, at once: as ONNX/torch runtimes answer calls known to be fast."""
        return self.outputs


def request() -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="digits")
    req.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    req.raw_input_contents.append(np.zeros((1, 64), np.float32).tobytes())
    return req


def minimal(req: pb.ModelInferRequest, outputs: Tensors) -> pb.ModelInferResponse:
    """What echo_server.py --onnx does around the model call."""
    tensor = req.inputs[0]
    np.frombuffer(req.raw_input_contents[0], dtype=np.float32).reshape(tuple(tensor.shape))
    response = pb.ModelInferResponse(model_name="digits", model_version="1", id=req.id)
    for name, array in outputs.items():
        response.outputs.add(name=name, datatype="FP32", shape=array.shape)
        response.raw_output_contents.append(array.tobytes())
    return response


async def plane(root: Path, monitoring: bool, batching: bool) -> tuple[DataPlane, SidecarServer]:
    """A started server (loopback, ports picked by the OS) with the constant model added."""
    switches = {name: {"enabled": monitoring} for name in switchable()}
    loopback = {"host": "127.0.0.1", "port": 0}
    config = ServerConfig.model_validate(
        {"model_repository": str(root), "device": "cpu", **switches}
        | {"grpc": loopback, "metrics": {**switches["metrics"], **loopback}}
    )
    server = build_server(config)
    shipped = load_model_config(EXAMPLES / "digits" / "config.yaml")
    model_config = ModelConfig(
        batching=BatchingConfig(enabled=batching),
        **({"monitoring": shipped.monitoring} if monitoring else {}),
    )
    # The model file's path places relative monitoring files (the drift reference).
    model_file = EXAMPLES / "digits" / "1" / "model.onnx"
    await server.plane.models.add("digits", "1", model_config, Constant(), path=model_file)
    await server.start()
    return server.plane, server


async def measure(requests: int, repeats: int) -> dict[str, list[float]]:
    root = Path(tempfile.mkdtemp())
    req = request()
    outputs = Constant().outputs
    plain, plain_server = await plane(root, monitoring=False, batching=False)
    monitored, monitored_server = await plane(root, monitoring=True, batching=False)
    batched, batched_server = await plane(root, monitoring=False, batching=True)

    async def run_minimal() -> None:
        for _ in range(requests):
            minimal(req, outputs)

    def through(dp: DataPlane) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            for _ in range(requests):
                await dp.infer(req)

        return run

    variants: dict[str, Callable[[], Awaitable[None]]] = {
        "minimal": run_minimal,
        "data plane": through(plain),
        "data plane + monitoring": through(monitored),
        "data plane + batcher": through(batched),
    }
    for run in variants.values():
        await run()  # warm-up
    results: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(repeats):
        names = list(variants)
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            started = time.process_time()
            await variants[name]()
            results[name].append((time.process_time() - started) / requests * 1e6)
    for server in (plain_server, monitored_server, batched_server):
        await server.stop(grace=0)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="per repeat and variant")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    info = machine()
    results = asyncio.run(measure(args.requests, args.repeats))
    print(
        f"machine: {info['cpu']}, {info['cpus']} CPUs, load {info['load_average_at_start']}, "
        f"{info['date']}; {args.repeats} repeats of {args.requests} requests"
    )
    print()
    print("| request path | fastest µs/req | median µs/req |")
    print("|---|---:|---:|")
    for name, values in results.items():
        print(f"| {name} | {min(values):.1f} | {statistics.median(values):.1f} |")
    save(args.out, {"machine": info, "args": vars(args) | {"out": str(args.out)}, **results})


if __name__ == "__main__":
    main()
