"""docs/configuration.md documents every option of the config tree."""

from __future__ import annotations

from sidecar import configdoc


def test_configuration_reference_is_fresh() -> None:
    assert configdoc.main(["--check"]) == 0, "run: python -m sidecar.configdoc"


def test_every_option_has_a_description() -> None:
    undocumented = [line for line in configdoc.render().splitlines() if line.endswith("|  |")]
    assert undocumented == []
