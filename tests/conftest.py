"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.examples import MODEL_REPOSITORY
from tests.helpers import ServerThread, running_server, server_config


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    """The bundled example model repository."""
    return MODEL_REPOSITORY


@pytest.fixture(scope="module")
def example_server() -> Iterator[ServerThread]:
    """A real server on loopback serving the bundled examples."""
    with running_server(server_config(MODEL_REPOSITORY)) as thread:
        yield thread
