"""Fixtures of the exporter tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def empty_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with no models: servers that only serve fakes load nothing else."""
    return tmp_path_factory.mktemp("empty-repository")
