"""Fixtures of the chart tests: the real helm and promtool binaries."""

from __future__ import annotations

import shutil

import pytest

from tests.helm.chart import Helm, find_helm


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """Helm with throw-away config and cache directories; fails (never skips) without it."""
    try:
        binary = find_helm()
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    return Helm(binary, tmp_path_factory.mktemp("helm"))


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool from PATH; fails (never skips) without it."""
    found = shutil.which("promtool")
    if not found:
        pytest.fail(
            "promtool not found on PATH: the alert and dashboard tests need it. "
            "`bash scripts/test.sh` installs it (Debian package prometheus)."
        )
    return found
