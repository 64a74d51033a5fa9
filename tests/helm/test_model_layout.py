"""The init containers' shell steps, run for real on a copy of the example models:
the repository they lay out is one the server loads, with the chart's configs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sidecar.cli import main as cli
from sidecar.examples import MODEL_REPOSITORY
from sidecar.models import scan_repository
from tests.helm.chart import Helm, config_map, container, pod_spec

MODELS = ("digits", "diabetes")
CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
LAYOUT_ENV = ("SOURCE", "REPOSITORY", "CONFIGS")  # the ONNX examples: quick to load
CHART_CONFIGS: dict[str, Any] = {
    # Replaces the example's own config.yaml: batching on, same monitoring.
    "digits": {
        "batching": {"enabled": True, "max_batch_size": 16},
        "monitoring": {
            "task": "classification",
            "classification": {
                "output": "probabilities",
                "class_names": CLASSES,
            },
        },
    },
    # A model the repository does not have: the server reports it, the rest serve.
    "absent": {},
}


def _copy_examples(target: Path) -> None:
    target.mkdir(parents=True)
    for name in MODELS:
        shutil.copytree(MODEL_REPOSITORY / name, target / name)


def _run(command: list[str], env: dict[str, str]) -> None:
    sh = shutil.which("sh")
    assert sh, "a POSIX sh is needed"
    clean = {k: v for k, v in os.environ.items() if k not in LAYOUT_ENV}
    proc = subprocess.run(
        [sh, *command], env={**clean, **env}, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def _layout_inputs(helm: Helm, values: dict[str, Any], tmp: Path) -> tuple[Path, Path, Any]:
    """The rendered layout script and model configs, as the init container sees them."""
    objects = helm.template({**values, "models": CHART_CONFIGS})
    data = config_map(objects)["data"]
    script = tmp / "model-layout.sh"
    script.write_text(data["model-layout.sh"])
    configs = tmp / "configs"
    configs.mkdir()
    for name in CHART_CONFIGS:
        (configs / f"{name}.yaml").write_text(data[f"model.{name}.yaml"])
    return script, configs, pod_spec(objects)


def _check_repository(repository: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scan = scan_repository(repository)
    configs = {s.name: s.config for s in scan.sources}
    assert sorted(configs) == sorted(MODELS)
    assert configs["digits"].batching.enabled is True  # the chart's config won
    assert configs["digits"].batching.max_batch_size == 16
    assert configs["diabetes"].monitoring.task == "regression"  # the repository's own
    assert [name for name, _ in scan.problems] == ["absent"]
    # The server loads every model from it (exit 1 only for the absent one).
    assert cli(["validate", str(repository)]) == 1
    out = capsys.readouterr().out
    assert "ok     digits v1" in out and "ok     diabetes v1" in out
    assert "FAILED absent" in out


def test_pvc_layout_links_the_volume_and_writes_the_configs(
    helm: Helm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = {"modelRepository": {"source": "pvc", "pvc": {"claimName": "store"}}}
    script, configs, spec = _layout_inputs(helm, values, tmp_path)
    env = {e["name"]: e["value"] for e in container(spec, "model-layout")["env"]}
    assert env == {
        "SOURCE": "/models/.source",
        "REPOSITORY": "/models",
        "CONFIGS": "/etc/sidecar-layout/models",
    }
    repository = tmp_path / "models"  # the emptyDir; the volume is mounted inside it
    _copy_examples(repository / ".source")
    env = {"SOURCE": str(repository / ".source"), "REPOSITORY": str(repository)}
    for _ in range(2):  # a restarted pod runs it again over the same emptyDir
        _run([str(script)], {**env, "CONFIGS": str(configs)})
    assert (repository / "diabetes" / "1").is_symlink()
    assert not (repository / "digits" / "config.yaml").is_symlink()
    _check_repository(repository, capsys)


def test_image_layout_copies_the_models_then_writes_the_configs(
    helm: Helm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = {"modelRepository": {"source": "image", "image": {"repository": "models"}}}
    script, configs, spec = _layout_inputs(helm, values, tmp_path)
    copy = container(spec, "copy-models")
    assert copy["command"][:2] == ["sh", "-c"]
    image = tmp_path / "image" / "models"  # the model image's files
    _copy_examples(image)
    repository = tmp_path / "models"
    repository.mkdir()
    _run(copy["command"][1:], {"SOURCE": str(image), "REPOSITORY": str(repository)})
    assert "SOURCE" not in {e["name"] for e in container(spec, "model-layout")["env"]}
    _run([str(script)], {"REPOSITORY": str(repository), "CONFIGS": str(configs)})
    assert not (repository / "diabetes" / "1").is_symlink()
    _check_repository(repository, capsys)
