"""Fixtures of the exporter tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sidecar.examples import MODEL_REPOSITORY


@pytest.fixture(scope="session")
def empty_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with no models: servers that only serve fakes load nothing else."""
    return tmp_path_factory.mktemp("empty-repository")


def copy_examples(target: Path, *names: str) -> Path:
    """A model repository at ``target`` holding copies of some bundled example models."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copytree(MODEL_REPOSITORY / name, target / name)
    return target


@pytest.fixture(scope="module")
def digits_and_diabetes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ONNX digits classifier and diabetes regressor, nothing slower to load."""
    return copy_examples(tmp_path_factory.mktemp("repository"), "digits", "diabetes")
