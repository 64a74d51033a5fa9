"""Model repository: versions, device selection, lazy backends, session options."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

from sidecar.config import ModelConfig, ThreadsConfig, load_model_config
from sidecar.errors import ModelLoadError
from sidecar.examples import MODEL_REPOSITORY
from sidecar.logs import JsonFormatter
from sidecar.models import scan_repository
from sidecar.runtimes.onnx import OnnxRuntime
from tests.helpers import ROOT, running_server, server_config

DIGITS = MODEL_REPOSITORY / "digits"


def two_versions(root: Path, config: str = "") -> None:
    for version in ("1", "2"):
        shutil.copytree(DIGITS / "1", root / "digits" / version)
    (root / "digits" / "config.yaml").write_text(config)


def infer(client: triton.InferenceServerClient, version: str = "") -> triton.InferResult:
    inp = triton.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 64), np.float32))
    return client.infer("digits", [inp], model_version=version)


def test_newest_version_serves_by_default(tmp_path: Path) -> None:
    two_versions(tmp_path)
    with running_server(server_config(tmp_path)) as server:
        client = triton.InferenceServerClient(server.address)
        assert list(client.get_model_metadata("digits").versions) == ["2"]
        assert infer(client).get_response().model_version == "2"
        assert not client.is_model_ready("digits", "1")


def test_configured_versions_all_serve(tmp_path: Path) -> None:
    two_versions(tmp_path, "versions: [1, 2]\n")
    with running_server(server_config(tmp_path)) as server:
        client = triton.InferenceServerClient(server.address)
        assert list(client.get_model_metadata("digits").versions) == ["1", "2"]
        assert infer(client, "1").get_response().model_version == "1"
        assert infer(client, "2").get_response().model_version == "2"
        assert infer(client).get_response().model_version == "2"


def test_missing_configured_version_is_a_problem(tmp_path: Path) -> None:
    two_versions(tmp_path, "versions: [3]\n")
    scan = scan_repository(tmp_path)
    assert scan.sources == ()
    assert "versions: [3] not found" in scan.problems[0][1]


def test_symlink_escaping_the_repository_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    shutil.copytree(DIGITS / "1", outside)
    repo = tmp_path / "repo"
    (repo / "evil").mkdir(parents=True)
    (repo / "evil" / "1").symlink_to(outside, target_is_directory=True)
    scan = scan_repository(repo)
    assert scan.sources == ()
    assert "resolves outside the repository" in scan.problems[0][1]


def test_world_writable_model_is_refused(tmp_path: Path) -> None:
    shutil.copytree(DIGITS / "1", tmp_path / "digits" / "1")
    (tmp_path / "digits" / "1" / "model.onnx").chmod(0o666)
    scan = scan_repository(tmp_path)
    assert "writable by any user" in scan.problems[0][1]


def test_cuda_without_cuda_provider_names_the_extra() -> None:
    runtime = OnnxRuntime(
        "digits", DIGITS / "1" / "model.onnx", ModelConfig(), "cuda:0", ThreadsConfig()
    )
    with pytest.raises(ModelLoadError) as info:
        asyncio.run(runtime.load())
    assert "CUDAExecutionProvider" in info.value.message and "onnx-gpu" in info.value.message


def test_auto_device_falls_back_to_cpu() -> None:
    runtime = OnnxRuntime(
        "digits", DIGITS / "1" / "model.onnx", ModelConfig(), "auto", ThreadsConfig()
    )
    asyncio.run(runtime.load())
    assert runtime.info.device == "cpu"
    assert runtime.info.layers == 6 and runtime.info.operators["MatMul"] == 2
    assert runtime.info.parameters == 64 * 64 + 64 + 64 * 10 + 10


def test_session_options_come_from_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("onnx:\n  intra_op_threads: 1\n  graph_optimization_level: basic\n")
    runtime = OnnxRuntime(
        "digits", DIGITS / "1" / "model.onnx", load_model_config(path), "cpu", ThreadsConfig()
    )
    asyncio.run(runtime.load())
    options = runtime.session_options
    assert options.intra_op_num_threads == 1
    assert str(options.graph_optimization_level).endswith("ORT_ENABLE_BASIC")


def test_heavy_backends_are_imported_lazily() -> None:
    code = (
        "import sys, sidecar.app, sidecar.cli, sidecar.server, sidecar.runtimes\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'onnx') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_json_logs_are_one_object_per_line() -> None:
    record = logging.LogRecord("sidecar.x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.model = "digits"
    data = json.loads(JsonFormatter().format(record))
    assert data["message"] == "hello you" and data["level"] == "INFO"
    assert data["model"] == "digits" and data["time"].endswith("Z")
