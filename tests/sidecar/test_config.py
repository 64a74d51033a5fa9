"""Configuration: validation errors name the file, the field and what was expected."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.config import load_model_config, load_server_config
from sidecar.errors import ConfigError
from sidecar.examples import MODEL_REPOSITORY
from tests.helpers import ROOT


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_follow_triton_ports() -> None:
    config = load_server_config(None, env={})
    assert config.grpc.port == 8001
    assert config.metrics.port == 8002
    assert config.device == "auto"


def test_yaml_and_environment_overrides(tmp_path: Path) -> None:
    path = write(tmp_path / "sidecar.yaml", "grpc:\n  port: 9000\nlogging:\n  json: true\n")
    config = load_server_config(path, env={"SIDECAR_GRPC__PORT": "9100", "OTHER": "x"})
    assert config.grpc.port == 9100  # the environment wins over the file
    assert config.logging.json_format is True
    config = load_server_config(path, env={"SIDECAR_METRICS__LATENCY_BUCKETS": "[0.1, 1]"})
    assert config.metrics.latency_buckets == (0.1, 1.0)


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("grpc:\n  port: -1\n", ["grpc.port", "greater than or equal to 0", "-1"]),
        ("grpc:\n  prot: 1\n", ["grpc.prot", "Extra inputs are not permitted"]),
        ("device: gpu\n", ["device", "'auto', 'cpu', 'cuda' or 'cuda:N'"]),
        ("logging:\n  level: LOUD\n", ["logging.level", "'DEBUG'"]),
        ("grpc: [1, 2\n", ["invalid YAML at line"]),
        ("- just\n- a list\n", ["expected a mapping"]),
        ("metrics:\n  latency_buckets: [1, 0.5]\n", ["strictly increasing"]),
        (
            "grpc:\n  max_message_bytes: 8192\n  transport_max_message_bytes: 4096\n",
            ["grpc", "transport_max_message_bytes (4096) must be at least max_message_bytes"],
        ),
        ("grpc:\n  max_message_bytes: 3000000000\n", ["grpc.max_message_bytes", "2147483647"]),
    ],
)
def test_malformed_server_config(tmp_path: Path, text: str, parts: list[str]) -> None:
    path = write(tmp_path / "sidecar.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_server_config(path, env={})
    assert str(path) in info.value.message
    for part in parts:
        assert part in info.value.message


def test_bad_environment_override() -> None:
    with pytest.raises(ConfigError) as info:
        load_server_config(None, env={"SIDECAR_GRPC__PORT": "many"})
    assert "SIDECAR_* environment" in info.value.message and "grpc.port" in info.value.message


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("runtime: tensorflow\n", ["runtime", "'onnx' or 'torch'"]),
        ("monitoring:\n  task: classification\n", ["needs a 'classification' section"]),
        (
            "monitoring:\n  task: classification\n  classification:\n"
            "    output: p\n    class_names: [a, a]\n",
            ["class_names must be unique"],
        ),
        ("batching:\n  max_batch_size: 0\n", ["batching.max_batch_size"]),
        ("inputs:\n  - {name: x, shape: [0, 3]}\n", ["inputs.0.shape"]),
    ],
)
def test_malformed_model_config(tmp_path: Path, text: str, parts: list[str]) -> None:
    path = write(tmp_path / "m" / "config.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_model_config(path)
    assert str(path) in info.value.message
    for part in parts:
        assert part in info.value.message


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_validate_bundled_examples() -> None:
    done = run_cli("validate")
    assert done.returncode == 0, done.stderr
    assert "ok     digits v1 (onnxruntime_onnx): input FP32[-1, 64]" in done.stdout
    assert "ok     digits_torch v1 (pytorch_torchscript)" in done.stdout
    assert "ok     diabetes v1" in done.stdout


def test_validate_reports_broken_models(tmp_path: Path) -> None:
    shutil.copytree(MODEL_REPOSITORY / "digits", tmp_path / "digits")
    write(tmp_path / "broken" / "1" / "model.onnx", "not onnx")
    write(
        tmp_path / "mismatch" / "config.yaml",
        "monitoring:\n  task: classification\n  classification:\n"
        "    output: probabilities\n    class_names: [a, b, c]\n",
    )
    shutil.copytree(MODEL_REPOSITORY / "digits" / "1", tmp_path / "mismatch" / "1")
    done = run_cli("validate", str(tmp_path))
    assert done.returncode == 1
    assert "ok     digits v1" in done.stdout
    assert "FAILED broken v1:" in done.stdout and "model.onnx" in done.stdout
    assert "has 10 classes" in done.stdout and "lists 3" in done.stdout


def test_serve_with_malformed_config_exits_with_a_message(tmp_path: Path) -> None:
    write(tmp_path / "m" / "config.yaml", "runtime: [onnx\n")
    done = run_cli("serve", "--model-repository", str(tmp_path), "--grpc-port", "0")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert str(tmp_path / "m" / "config.yaml") in done.stderr and "invalid YAML" in done.stderr


def test_serve_exit_on_model_error(tmp_path: Path) -> None:
    write(tmp_path / "broken" / "1" / "model.onnx", "not onnx")
    config = write(tmp_path / "sidecar.yaml", "startup:\n  exit_on_model_error: true\n")
    done = run_cli(
        "serve", "--config", str(config), "--model-repository", str(tmp_path), "--grpc-port", "0"
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "1 model(s) failed to load" in done.stderr and "model.onnx" in done.stderr


def test_torch_model_without_torch_names_the_extra(tmp_path: Path) -> None:
    shutil.copytree(MODEL_REPOSITORY / "digits_torch", tmp_path / "digits_torch")
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from sidecar.cli import main\n"
        f"raise SystemExit(main(['validate', {str(tmp_path)!r}]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "pip install 'inference-sidecar[torch]'" in done.stdout
