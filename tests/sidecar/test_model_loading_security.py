"""Loading a model never runs someone else's code.

Paths that leave the repository, files anyone can replace, pickled modules,
and TorchScript / torch.export archives carrying a malicious pickle are all
refused, and the pickle's payload never runs.
"""

from __future__ import annotations

import asyncio
import io
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest

from sidecar.examples import MODEL_REPOSITORY
from sidecar.models import ModelManager, scan_repository
from tests.helpers import server_config


def copy_model(name: str, repo: Path, as_name: str | None = None) -> Path:
    target = repo / (as_name or name)
    shutil.copytree(MODEL_REPOSITORY / name, target)
    return target


def problems(repo: Path) -> dict[str, str]:
    return dict(scan_repository(repo).problems)


def load(repo: Path) -> ModelManager:
    models = ModelManager(server_config(repo, device="cpu"), repo)
    asyncio.run(models.load_all())
    return models


def test_symlinks_out_of_the_repository_are_refused(tmp_path: Path) -> None:
    outside, repo = tmp_path / "outside", tmp_path / "repo"
    outside.mkdir()
    repo.mkdir()
    copy_model("digits", outside)
    (repo / "linked_model").symlink_to(outside / "digits")
    version_link = copy_model("diabetes", repo, "linked_version")
    shutil.rmtree(version_link / "1")
    (version_link / "1").symlink_to(outside / "digits" / "1")
    file_link = copy_model("diabetes", repo, "linked_file")
    (file_link / "1" / "model.onnx").unlink()
    (file_link / "1" / "model.onnx").symlink_to(outside / "digits" / "1" / "model.onnx")
    copy_model("digits", repo)  # a normal model beside them still loads
    found = problems(repo)
    for name in ("linked_model", "linked_version", "linked_file"):
        assert "resolves outside the repository" in found[name], found
    assert [s.name for s in scan_repository(repo).sources] == ["digits"]


@pytest.mark.parametrize("where", ["file", "version_dir", "model_dir"])
def test_files_anyone_can_replace_are_refused(tmp_path: Path, where: str) -> None:
    model = copy_model("digits", tmp_path)
    target = {
        "file": model / "1" / "model.onnx",
        "version_dir": model / "1",
        "model_dir": model,
    }[where]
    target.chmod(target.stat().st_mode | 0o002)
    assert "writable by any user" in problems(tmp_path)["digits"]
    if where != "file":  # a sticky directory (like /tmp) is fine
        target.chmod(target.stat().st_mode | 0o1000)
        assert problems(tmp_path) == {}


class Payload:
    """Unpickling this creates a marker file: proof that untrusted code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def rewrite(source: Path, target: Path, entry: str, data: bytes) -> None:
    """A copy of the zip archive ``source`` with ``entry`` replaced (or added)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for item in zin.infolist():
            if item.filename != entry:
                zout.writestr(item, zin.read(item.filename))
        zout.writestr(entry, data)


def test_malicious_torch_archives_are_refused_without_running_the_payload(
    tmp_path: Path,
) -> None:
    torch = pytest.importorskip("torch")
    marker = tmp_path / "PAYLOAD_RAN"
    raw_pickle = pickle.dumps(Payload(marker), protocol=2)
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    torch_saved = buffer.getvalue()
    repo = tmp_path / "repo"

    # 1. A pickled nn.Module saved as model.pt (torch.save, not TorchScript).
    pickled = copy_model("digits_torch", repo, "pickled_module")
    torch.save(torch.nn.Linear(64, 10), pickled / "1" / "model.pt")
    # 2. TorchScript whose data.pkl is a malicious pickle.
    script = copy_model("digits_torch", repo, "evil_script")
    source = MODEL_REPOSITORY / "digits_torch" / "1" / "model.pt"
    rewrite(source, script / "1" / "model.pt", "model/data.pkl", raw_pickle)
    # 3. torch.export archive whose sample inputs are a malicious torch.save pickle:
    #    torch.export.load retries these with weights_only=False when the safe load fails.
    export = copy_model("digits_export", repo, "evil_sample_inputs")
    source = MODEL_REPOSITORY / "digits_export" / "1" / "model.pt2"
    rewrite(source, export / "1" / "model.pt2", "model/data/sample_inputs/model.pt", torch_saved)
    # 4. torch.export archive carrying an "opaque object" constant (plain pickle.loads).
    opaque = copy_model("digits_export", repo, "evil_constant")
    entry = "model/data/constants/opaque_obj_0"
    rewrite(source, opaque / "1" / "model.pt2", entry, raw_pickle)
    copy_model("digits_export", repo)  # the genuine archive still loads

    models = load(repo)
    assert not marker.exists(), "a pickle payload ran while loading models"
    failures = {name: error for (name, _), error in models.failures.items()}
    assert set(failures) == {
        "pickled_module",
        "evil_script",
        "evil_sample_inputs",
        "evil_constant",
    }, failures
    assert "holds pickled Python objects" in failures["evil_constant"]
    assert models.is_ready("digits_export")
    assert os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] == "1"
