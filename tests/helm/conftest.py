"""Fixtures of the chart tests: the real helm binary."""

from __future__ import annotations

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
