"""The Dockerfile agrees with the chart, the server and the repository.

There is no Docker daemon in CI, so the image is not built here. What can go
wrong without building is checked instead: the user the image runs as is the
chart's runAsUser, the ports it exposes are the chart's and the server's
defaults, its entrypoint is a real command of the server, everything it COPYs
exists and is in the build context (.dockerignore), and the files the installed
package needs at run time (the bundled example models the chart's `bundled`
source serves) are in the wheel the image installs.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from sidecar.cli import build_parser
from sidecar.config import ServerConfig
from tests.helm.chart import CHART, ROOT, Helm, container, pod_spec

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int


def instructions() -> list[Instruction]:
    """The Dockerfile's instructions (continuation lines joined, comments dropped),
    each with the index of its build stage."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    stage = -1
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        found.append(Instruction(keyword, " ".join(args.split()), stage))
    return found


def final_stage() -> list[Instruction]:
    every = instructions()
    last = max(i.stage for i in every)
    return [i for i in every if i.stage == last]


def one_of(stage: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} in the final stage, got {found}"
    return found[0]


def chart_values() -> dict[str, object]:
    values: dict[str, object] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def test_multi_stage_on_slim_python_311() -> None:
    every = instructions()
    froms = [i for i in every if i.keyword == "FROM"]
    assert len(froms) >= 2, "build and run stages"
    args = {
        i.args.split("=", 1)[0]: i.args.split("=", 1)[1]
        for i in every
        if i.keyword == "ARG" and "=" in i.args
    }
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base
    assert froms[-1].args == "${PYTHON_IMAGE}"
    # the run stage takes only the virtual environment from the build stage
    copies = [i.args for i in final_stage() if i.keyword == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv"]
    assert not [i for i in final_stage() if i.keyword == "RUN" and "pip" in i.args]


def test_runs_as_the_chart_user() -> None:
    values = chart_values()
    security = values["securityContext"]
    assert isinstance(security, dict)
    user = one_of(final_stage(), "USER").args
    assert user == f"{security['runAsUser']}:{security['runAsGroup']}"
    assert int(user.split(":")[0]) != 0
    pod_security = values["podSecurityContext"]
    assert isinstance(pod_security, dict)
    assert pod_security["fsGroup"] == security["runAsGroup"]
    # the user exists in the image (a name for tools that look one up), with those ids
    runs = " ".join(i.args for i in final_stage() if i.keyword == "RUN")
    assert f"--gid {security['runAsGroup']} sidecar" in runs
    assert f"--uid {security['runAsUser']} --gid {security['runAsGroup']}" in runs


def test_exposes_the_chart_and_server_default_ports() -> None:
    values = chart_values()
    config = values["config"]
    assert isinstance(config, dict)
    exposed = {int(p) for p in one_of(final_stage(), "EXPOSE").args.split()}
    defaults = ServerConfig()
    assert exposed == {config["grpc"]["port"], config["metrics"]["port"]}
    assert exposed == {defaults.grpc.port, defaults.metrics.port}


def test_entrypoint_is_the_servers_serve_command(helm: Helm) -> None:
    entrypoint = json.loads(one_of(final_stage(), "ENTRYPOINT").args)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    program, *args = entrypoint
    assert program in project["scripts"]
    assert args == ["serve"]
    parsed = build_parser().parse_args([*args, "--config", "/etc/sidecar/sidecar.yaml"])
    assert parsed.command == "serve"
    # the chart runs the same program and subcommand (its command/args replace these)
    server = container(pod_spec(helm.template()), "server")
    assert server["command"] == [program]
    assert server["args"][: len(args)] == args


def test_chart_default_image_is_this_version() -> None:
    """`docker build -t inference-sidecar:<version> .` is the chart's default image."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    values = chart_values()
    image = values["image"]
    assert isinstance(image, dict)
    assert chart["appVersion"] == version
    assert image["tag"] == "" and image["digest"] == ""  # the tag defaults to appVersion
    default = f"{image['repository']}:{version}"
    assert f"docker build -t {default} ." in DOCKERFILE.read_text()
    assert f"docker build -t {default} ." in (ROOT / "docs" / "operations.md").read_text()


def _ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per .dockerignore line, in order (Docker's matching: `*` and
    `?` within one path element, `**` across elements; a pattern excludes the paths it
    matches and everything below them; the last matching line wins)."""
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        glob = line.removeprefix("!").strip("/")
        regex = ""
        i = 0
        while i < len(glob):
            if glob.startswith("**/", i):
                regex += "(.*/)?"
                i += 3
            elif glob.startswith("**", i):
                regex += ".*"
                i += 2
            elif glob[i] == "*":
                regex += "[^/]*"
                i += 1
            elif glob[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(glob[i])
                i += 1
        patterns.append((negated, re.compile(regex + "(/.*)?")))
    return patterns


def in_context(path: str) -> bool:
    """True when ``path`` (relative to the repository root) is sent to the builder."""
    included = True
    for negated, pattern in _ignore_patterns():
        if pattern.fullmatch(path):
            included = negated
    return included


def _tracked() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
    )
    return out.stdout.split()


def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    sources: list[str] = []
    for instruction in instructions():
        if instruction.keyword != "COPY" or instruction.args.startswith("--from="):
            continue
        *paths, _destination = shlex.split(instruction.args)
        sources += paths
    assert sources
    tracked = _tracked()
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: not in the repository"
        files = [f for f in tracked if f == source or f.startswith(source.rstrip("/") + "/")]
        assert files, f"COPY {source}: no tracked file"
        left_out = [f for f in files if not in_context(f)]
        assert not left_out, f".dockerignore leaves out what COPY {source} needs: {left_out[:5]}"


def test_build_context_leaves_out_what_the_image_does_not_need() -> None:
    for path in (
        "tests/helpers.py",
        "benchmarks/README.md",
        "helm/inference-sidecar/values.yaml",
        ".git/HEAD",
        ".tools/helm/helm",
        "sidecar/__pycache__/cli.cpython-311.pyc",
        "docs/operations.md",
    ):
        assert not in_context(path), path
    assert in_context("sidecar/examples/models/digits/1/model.onnx")


@pytest.mark.slow
def test_the_wheel_the_image_installs_holds_the_bundled_models(tmp_path: Path) -> None:
    """The image installs the package (not the source tree): everything the server reads
    from its package at run time must be in the wheel."""
    subprocess.run(
        [
            sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
            "--wheel-dir", str(tmp_path), str(ROOT),
        ],
        check=True, capture_output=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    [wheel] = tmp_path.glob("inference_sidecar-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    needed = {f for f in _tracked() if f.startswith("sidecar/examples/models/")}
    assert needed and all(in_context(f) for f in needed)
    assert needed <= names, sorted(needed - names)[:5]
    assert "sidecar/proto/grpc_service.proto" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "inference-sidecar = sidecar.cli:main" in text


_NO_TORCH = """
import importlib.util
import sys

class NoTorch:  # as in an image built without the torch extra: import torch fails ...
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoTorch())
_find_spec = importlib.util.find_spec
# ... and find_spec finds nothing
importlib.util.find_spec = lambda name, package=None: (
    None if name.split(".")[0] == "torch" else _find_spec(name, package)
)
"""


@pytest.mark.slow
def test_image_without_torch_keeps_only_bundled_models_it_can_load(tmp_path: Path) -> None:
    """The build step that prunes the bundled repository, run as the Dockerfile runs it
    but against a copy and with torch made unimportable: the torch examples go, the
    rest stay, and `inference-sidecar validate` (the step after it) loads them all."""
    runs = [i.args for i in instructions() if i.keyword == "RUN" and "MODEL_REPOSITORY" in i.args]
    assert len(runs) == 1, runs
    command = shlex.split(runs[0])
    assert command[:2] == ["python", "-c"] and command[3:] == [
        "&&",
        "inference-sidecar",
        "validate",
    ]
    prune = command[2]
    repository = tmp_path / "models"
    shutil.copytree(ROOT / "sidecar" / "examples" / "models", repository)
    script = (
        _NO_TORCH
        + "assert importlib.util.find_spec('torch') is None\n"
        + "import sidecar.examples\n"
        + f"sidecar.examples.MODEL_REPOSITORY = __import__('pathlib').Path({str(repository)!r})\n"
        + f"exec({prune!r})\n"
        + "from sidecar.cli import main\n"
        + f"sys.exit(main(['validate', {str(repository)!r}]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    torch_models = {
        d.name
        for d in (ROOT / "sidecar" / "examples" / "models").iterdir()
        if any(d.glob("*/model.pt*"))
    }
    assert torch_models, "the examples have torch models: the pruning is tested on something"
    kept = {d.name for d in repository.iterdir()}
    assert kept == {"digits", "diabetes"}
    assert not kept & torch_models
    assert sorted(line.split()[1] for line in proc.stdout.splitlines()) == sorted(kept)
