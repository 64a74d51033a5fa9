"""A minimal Seldon MLServer runtime around onnxruntime, for benchmarks/peers.py.

MLServer imports this from the model folder (``implementation:
mlserver_onnx_runtime.OnnxModel`` in model-settings.json). It does what
benchmarks/echo_server.py's ``--onnx`` mode does, the MLServer way: decode
the inputs with NumpyCodec, run the session, encode the outputs. The model
runs inline in the async ``predict``, which is how MLServer runs a custom
runtime when ``parallel_workers`` is 0 (and in its worker processes
otherwise).
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    """Serves one ONNX file with onnxruntime on CPU."""

    async def load(self) -> bool:
        uri = await get_model_uri(self.settings)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self._session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        self._output_names = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feed = {tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}
        results = self._session.run(self._output_names, feed)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output(name, array)
                for name, array in zip(self._output_names, results, strict=True)
            ],
        )
