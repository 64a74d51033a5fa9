"""A monitoring config that does not fit the model's outputs is a load error naming both."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from exporters.metrics import SidecarMetrics
from sidecar.cli import main
from sidecar.config import (
    DEFAULT_LATENCY_BUCKETS,
    ClassificationConfig,
    ModelConfig,
    MonitoringConfig,
    RegressionConfig,
)
from sidecar.examples import MODEL_REPOSITORY
from sidecar.metrics_listener import MetricsListener
from sidecar.models import ModelManager
from sidecar.runtimes.fakes import SumRuntime
from tests.helpers import server_config


def classification(output: str, names: tuple[str, ...]) -> ModelConfig:
    return ModelConfig(
        monitoring=MonitoringConfig(
            task="classification",
            classification=ClassificationConfig(output=output, class_names=names),
        )
    )


def regression(*outputs: str) -> ModelConfig:
    return ModelConfig(
        monitoring=MonitoringConfig(task="regression", regression=RegressionConfig(outputs=outputs))
    )


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            classification("echo", ("a", "b", "c")),
            "model 'm': output 'echo' has 4 classes (FP32[-1, 4]) but "
            "monitoring.classification.class_names lists 3",
        ),
        (
            classification("scores", ("a", "b")),
            "model 'm': monitoring.classification.output 'scores' is not an output; "
            "outputs are: sum, echo",
        ),
        (
            regression("sum", "prediction"),
            "model 'm': monitoring.regression.outputs names 'prediction', not an output; "
            "outputs are: sum, echo",
        ),
    ],
)
def test_mismatch_fails_the_load(tmp_path: Path, config: ModelConfig, expected: str) -> None:
    registry = CollectorRegistry()
    listener = MetricsListener(
        SidecarMetrics(registry, latency_buckets=DEFAULT_LATENCY_BUCKETS, sidecar_version="0")
    )
    manager = ModelManager(server_config(tmp_path), tmp_path, [listener])
    model = asyncio.run(manager.add("m", "1", config, SumRuntime()))
    assert not model.ready
    assert model.error == expected
    assert manager.failures == {("m", "1"): expected}
    assert registry.get_sample_value("sidecar_model_load_failures_total", {"model": "m"}) == 1
    assert registry.get_sample_value("sidecar_model_ready", {"model": "m", "version": "1"}) == 0


def test_matching_config_loads(tmp_path: Path) -> None:
    manager = ModelManager(server_config(tmp_path), tmp_path)
    model = asyncio.run(
        manager.add("m", "1", classification("echo", ("a", "b", "c", "d")), SumRuntime())
    )
    assert model.ready and not manager.failures


def test_validate_names_the_model_and_the_mismatch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(MODEL_REPOSITORY / "digits", tmp_path / "digits")
    shutil.copytree(MODEL_REPOSITORY / "diabetes", tmp_path / "diabetes")
    (tmp_path / "digits" / "config.yaml").write_text(
        "monitoring:\n  task: classification\n  classification:\n"
        "    output: probabilities\n    class_names: [cat, dog]\n"
    )
    (tmp_path / "diabetes" / "config.yaml").write_text(
        "monitoring:\n  task: regression\n  regression:\n    outputs: [progression]\n"
    )
    assert main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert (
        "FAILED digits v1: model 'digits': output 'probabilities' has 10 classes "
        "(FP32[-1, 10]) but monitoring.classification.class_names lists 2"
    ) in out
    assert (
        "FAILED diabetes v1: model 'diabetes': monitoring.regression.outputs names "
        "'progression', not an output; outputs are: prediction"
    ) in out
