"""values.schema.json agrees with sidecar/config.py, and the validator it uses is real."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import kubernetes_validate
import pytest
from pydantic import ValidationError

from sidecar.config import ModelConfig, ServerConfig
from tests.helm import config_schema
from tests.helm.chart import KUBERNETES_VERSION


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(config_schema.SCHEMA_FILE.read_text())
    return schema


def test_config_schema_is_generated_from_the_server_config() -> None:
    stored = _schema()["$defs"][config_schema.KEY]
    assert stored == config_schema.generate(), (
        "values.schema.json is stale against sidecar/config.py: "
        "run `python -m tests.helm.config_schema` and commit the result"
    )


def test_every_server_setting_is_a_value() -> None:
    """A field added to ServerConfig or ModelConfig shows up in the chart's schema."""
    defs = _schema()["$defs"][config_schema.KEY]["$defs"]
    server = set(ServerConfig.model_json_schema()["properties"])
    assert set(defs["ServerConfig"]["properties"]) == server - set(config_schema.CHART_OWNED)
    assert set(defs["ModelConfig"]["properties"]) == set(
        ModelConfig.model_json_schema()["properties"]
    )
    schema = _schema()
    assert schema["properties"]["config"]["$ref"].endswith("/ServerConfig")
    assert schema["properties"]["models"]["additionalProperties"]["$ref"].endswith("/ModelConfig")


@pytest.mark.parametrize(
    "device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "gpu", "cuda:", "cuda:x", "CPU", ""]
)
def test_device_pattern_accepts_what_the_server_accepts(device: str) -> None:
    try:
        ServerConfig(device=device)
        accepted = True
    except ValidationError:
        accepted = False
    assert bool(re.match(config_schema.DEVICE_PATTERN, device)) is accepted


def test_generation_keeps_the_hand_written_part(tmp_path: Any) -> None:
    path = tmp_path / "values.schema.json"
    original = _schema()
    stale = copy.deepcopy(original)
    stale["$defs"][config_schema.KEY] = {"$defs": {}}
    path.write_text(json.dumps(stale))
    config_schema.write(path)
    assert json.loads(path.read_text()) == original


def test_kubernetes_validate_rejects_a_bad_manifest() -> None:
    """The validator the chart tests trust does reject what Kubernetes would."""
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i", "ports": [{}]}]},
            },
        },
    }
    with pytest.raises(kubernetes_validate.ValidationError, match="containerPort"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    container = deployment["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    container["ports"] = [{"containerPort": 80}]
    kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    container["livenessProbe"] = {"grpc": {"port": 8001}, "periodSecond": 5}
    with pytest.raises(kubernetes_validate.ValidationError, match="periodSecond"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
