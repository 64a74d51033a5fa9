"""The label options of sidecar.yaml and config.yaml: validated once, errors name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import ConfigError, ServerConfig, load_model_config, load_server_config


def server(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ServerConfig:
    path = tmp_path / "sidecar.yaml"
    path.write_text(text)
    return load_server_config(path, env=env or {})


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("labels: {backend: sqlite}", "labels: Value error, backend 'sqlite' needs 'path'"),
        ("labels: {backend: redis}", "labels: Value error, backend 'redis' needs 'url'"),
        ("labels: {backend: redis, url: 'http://x'}", "url must start with redis://"),
        ("labels: {backend: mongo}", "labels.backend: Input should be 'memory', 'sqlite' or"),
        ("labels: {ttl_seconds: 0}", "labels.ttl_seconds: Input should be greater than 0"),
        ("labels: {max_entries: 0}", "labels.max_entries"),
        ("labels: {delay_buckets: [5, 1]}", "buckets must be positive and strictly increasing"),
        ("labels: {flush_interval: 5}", "labels.flush_interval: Extra inputs are not permitted"),
    ],
)
def test_bad_store_settings_name_the_field(tmp_path: Path, yaml_text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        server(tmp_path, yaml_text)
    assert str(tmp_path / "sidecar.yaml") in err.value.message
    assert message in err.value.message


def test_store_settings_and_environment_overrides(tmp_path: Path) -> None:
    config = server(
        tmp_path,
        "labels: {backend: sqlite, path: /var/lib/l.db}",
        env={"SIDECAR_LABELS__FLUSH_INTERVAL_MS": "250", "SIDECAR_LABELS__TTL_SECONDS": "60"},
    )
    labels = config.labels
    assert (labels.backend, labels.path, labels.flush_interval_ms, labels.ttl_seconds) == (
        "sqlite", Path("/var/lib/l.db"), 250, 60.0,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("monitoring", "message"),
    [
        (
            "{task: regression, regression: {outputs: [y]}, labels: {min_value: 5, max_value: 1}}",
            "min_value must not exceed max_value",
        ),
        (
            "{task: regression, regression: {outputs: [y]}, labels: {output: z}}",
            "labels.output 'z' is not one of regression.outputs ['y']",
        ),
        ("{labels: {ttl_seconds: -1}}", "monitoring.labels.ttl_seconds"),
    ],
)
def test_bad_model_label_settings_name_the_field(
    tmp_path: Path, monitoring: str, message: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"monitoring: {monitoring}\n")
    with pytest.raises(ConfigError) as err:
        load_model_config(path)
    assert message in err.value.message
