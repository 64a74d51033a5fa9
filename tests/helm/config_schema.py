"""The part of the chart's values.schema.json that mirrors sidecar/config.py.

The chart's ``config`` value is the server's ``sidecar.yaml`` and each entry of
``models`` a model's ``config.yaml``, so their schemas come from the pydantic
models themselves, kept under ``$defs.sidecarConfig`` of values.schema.json.
test_chart_schema.py fails when that part is stale; rewrite it with

    python -m tests.helm.config_schema

The rest of values.schema.json (the chart's own values) is written by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from sidecar.config import ModelConfig, ServerConfig

CHART = Path(__file__).resolve().parents[2] / "helm" / "inference-sidecar"
SCHEMA_FILE = CHART / "values.schema.json"
KEY = "sidecarConfig"
REF = f"#/$defs/{KEY}/$defs/{{model}}"

#: The server's device setting (sidecar.config checks it with this pattern).
DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"
#: Set by the chart (the repository is mounted at /models), not a value.
CHART_OWNED = ("model_repository",)


def _clean(node: Any) -> Any:
    """Drop the keywords that only repeat the server's code: titles and defaults."""
    if isinstance(node, list):
        return [_clean(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "default"):
            continue
        if key in ("properties", "$defs"):
            out[key] = {name: _clean(sub) for name, sub in value.items()}
        else:
            out[key] = _clean(value)
    return out


def _string_branch(prop: dict[str, Any]) -> dict[str, Any]:
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") == "string":
            return dict(branch)
    raise AssertionError(f"no string in {prop}")


def generate() -> dict[str, Any]:
    """``$defs.sidecarConfig``: ServerConfig, ModelConfig and their sections."""
    server = ServerConfig.model_json_schema(ref_template=REF)
    model = ModelConfig.model_json_schema(ref_template=REF)
    defs: dict[str, Any] = {}
    for schema in (server, model):
        for name, sub in schema.pop("$defs", {}).items():
            assert defs.get(name, sub) == sub, f"two different sections named {name}"
            defs[name] = sub
    defs["ServerConfig"] = server
    defs["ModelConfig"] = model
    defs = _clean(defs)

    for name in CHART_OWNED:
        del defs["ServerConfig"]["properties"][name]
    # Ports are fixed in a pod: the Service, the probes and Prometheus use them.
    for section in ("GrpcConfig", "MetricsConfig"):
        port = defs[section]["properties"]["port"]
        port["minimum"] = 1
        port["description"] = "a fixed port: the Service, the probes and Prometheus use it"
    health = defs["GrpcConfig"]["properties"]["health_port"]
    for branch in health["anyOf"]:
        if branch.get("type") == "integer":
            branch["minimum"] = 1
    health["description"] = (
        "a fixed plaintext port serving only grpc.health.v1: the chart points the probes "
        "at it (required with grpc.tls, since the probes cannot speak TLS)"
    )
    for section in ("ServerConfig", "ModelConfig"):
        prop = defs[section]["properties"]["device"]
        if "anyOf" in prop:
            prop["anyOf"] = [
                {**b, "pattern": DEVICE_PATTERN} if b.get("type") == "string" else b
                for b in prop["anyOf"]
            ]
        else:
            prop["pattern"] = DEVICE_PATTERN
        assert _string_branch(prop)["pattern"] == DEVICE_PATTERN
    return {
        "description": "Generated from sidecar/config.py by python -m tests.helm.config_schema",
        "$defs": dict(sorted(defs.items())),
    }


def write(path: Path = SCHEMA_FILE) -> None:
    """Replace the generated part of values.schema.json, keeping the rest."""
    schema = json.loads(path.read_text())
    schema.setdefault("$defs", {})[KEY] = generate()
    path.write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_FILE)
