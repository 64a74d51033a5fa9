"""Fixtures of the label tests: a model repository with the digits and diabetes examples, Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.labels.helpers import copy_models
from tests.labels.redis_server import RedisServer


@pytest.fixture(scope="session")
def labels_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Copies of the bundled digits classifier and diabetes regressor (no torch needed)."""
    return copy_models(tmp_path_factory.mktemp("labels") / "models")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free port for the module's tests."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server
