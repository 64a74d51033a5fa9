"""``inference-sidecar bench`` against real servers on loopback, in-process and as a command."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sidecar.app import build_server
from sidecar.bench import (
    BenchOptions,
    BenchReport,
    Progress,
    format_report,
    parse_concurrency,
    parse_shape,
    report_json,
    run_bench,
)
from sidecar.config import ModelConfig
from sidecar.errors import BenchError
from sidecar.runtimes.fakes import FailingRuntime
from tests.batching.fakes import WideSumRuntime
from tests.helpers import ServerThread, free_port, running_server, server_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def digits_repo(tmp_path_factory: pytest.TempPathFactory, examples_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(examples_dir / "digits", root / "digits")
    return root


@pytest.fixture(scope="module")
def server(digits_repo: Path) -> Iterator[ServerThread]:
    fakes: list[tuple[str, Any, ModelConfig | None]] = [
        ("failing", FailingRuntime(), None),
        ("wide", WideSumRuntime(), None),
    ]
    with running_server(server_config(digits_repo), fakes=fakes) as thread:
        yield thread


def bench(**fields: Any) -> BenchReport:
    fields.setdefault("warmup", 0)
    if "duration" not in fields:
        fields.setdefault("requests", 40)
        fields["duration"] = None
    options = BenchOptions(**fields)

    async def main() -> BenchReport:
        return await asyncio.wait_for(run_bench(options), 60)

    return asyncio.run(main())


# --------------------------------------------------------------------------- in-process


def test_count_mode_sends_exactly_that_many_requests_per_level(server: ServerThread) -> None:
    report = bench(target=server.address, model="digits", concurrency=(1, 4), requests=30)
    assert [level.concurrency for level in report.levels] == [1, 4]
    for level in report.levels:
        assert level.ok == 30
        assert level.errors == {}
        assert level.rows == 30
        lat = level.latency_ms
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert level.requests_per_second > 0
    assert report.inputs == {"input": [1, 64]}
    assert not report.interrupted and not report.stopped


def test_duration_mode_runs_for_about_that_long(server: ServerThread) -> None:
    started = time.monotonic()
    report = bench(target=server.address, model="digits", concurrency=(2,), duration=1.0)
    elapsed = time.monotonic() - started
    level = report.levels[0]
    assert level.ok > 0
    assert 1.0 <= level.seconds < 3.0
    assert elapsed < 10
    assert level.rows_per_second == pytest.approx(level.requests_per_second)


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("contents", ["raw", "typed"])
def test_batch_size_contents_and_streaming(
    server: ServerThread, streaming: bool, contents: str
) -> None:
    report = bench(
        target=server.address,
        model="digits",
        concurrency=(3,),
        requests=24,
        batch_size=8,
        contents=contents,
        streaming=streaming,
    )
    level = report.levels[0]
    assert (level.ok, level.errors) == (24, {})
    assert level.rows == 24 * 8
    assert report.inputs == {"input": [8, 64]}


@pytest.mark.parametrize("streaming", [False, True])
def test_errors_are_counted_by_code_with_a_sample_message(
    server: ServerThread, streaming: bool
) -> None:
    report = bench(
        target=server.address, model="failing", concurrency=(2,), requests=10, streaming=streaming
    )
    level = report.levels[0]
    code = "STREAM_ERROR" if streaming else "INTERNAL"
    assert level.ok == 0
    assert level.errors == {code: 10}
    assert "model exploded" in level.error_samples[code]
    text = format_report(report)
    assert f"{code} × 10" in text
    assert json.loads(report_json(report))["levels"][0]["latency_ms"]["p50"] is None


def test_input_data_from_npy_file(server: ServerThread, examples_dir: Path) -> None:
    data = examples_dir / "digits" / "holdout_features.npy"
    report = bench(
        target=server.address,
        model="digits",
        concurrency=(2,),
        requests=20,
        batch_size=5,
        data=data,
    )
    assert (report.levels[0].ok, report.levels[0].errors) == (20, {})


def test_input_data_of_the_wrong_shape_is_refused(server: ServerThread, tmp_path: Path) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, np.zeros((10, 63), dtype=np.float32))
    with pytest.raises(BenchError, match=r"'input' has shape \[10, 63\]; expected \[rows, 64\]"):
        bench(target=server.address, model="digits", data=path)


def test_dynamic_dimensions_need_a_shape(server: ServerThread) -> None:
    with pytest.raises(BenchError, match=r"--shape x:D1,D2"):
        bench(target=server.address, model="wide")
    report = bench(target=server.address, model="wide", requests=5, shapes={"x": (2, 7)})
    assert report.inputs == {"x": [2, 7]}
    assert (report.levels[0].ok, report.levels[0].rows) == (5, 10)


def test_unknown_model_stops_at_once_naming_the_models(server: ServerThread) -> None:
    with pytest.raises(BenchError, match=r"model 'nope' not found on .*models: digits"):
        bench(target=server.address, model="nope")


def test_server_that_goes_away_mid_run_stops_the_run(digits_repo: Path) -> None:
    thread = ServerThread(build_server(server_config(digits_repo)))
    thread.call(thread.server.start())
    options = BenchOptions(
        target=thread.address, model="digits", concurrency=(2,), duration=30, warmup=0
    )

    class StopServerOnceBusy(Progress):
        """Stops the server (in a thread) once 10 requests were answered."""

        stopping: asyncio.Future[None] | None = None

        def update(self, level: Any, measured: float, elapsed: float) -> None:
            if self.stopping is None and len(level.latencies) >= 10:
                self.stopping = asyncio.get_running_loop().run_in_executor(None, thread.close)

    async def main(progress: StopServerOnceBusy) -> BenchReport:
        try:
            return await asyncio.wait_for(run_bench(options, progress=progress), 25)
        finally:
            if progress.stopping is not None:
                await progress.stopping

    with open(os.devnull, "w") as devnull:
        progress = StopServerOnceBusy(devnull, options)
        try:
            started = time.monotonic()
            report = asyncio.run(main(progress))
        finally:
            if progress.stopping is None:
                thread.close()
    assert time.monotonic() - started < 25
    assert "stopped answering" in report.stopped
    assert report.levels[0].ok >= 10
    assert report.levels[0].errors.get("UNAVAILABLE", 0) >= 1


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "levels"),
    [("16", (16,)), ("1,4,16", (1, 4, 16)), ("1:4", (1, 2, 3, 4)), ("2:10:4", (2, 6, 10))],
)
def test_parse_concurrency(text: str, levels: tuple[int, ...]) -> None:
    assert parse_concurrency(text) == levels


@pytest.mark.parametrize("text", ["", "0", "a", "4:1", "1:2:3:4", "1,-2", "1:8:0"])
def test_parse_concurrency_refuses_nonsense(text: str) -> None:
    with pytest.raises(BenchError, match="concurrency"):
        parse_concurrency(text)


def test_parse_shape() -> None:
    assert parse_shape("x:2,7") == ("x", (2, 7))
    assert parse_shape("a:b:3") == ("a:b", (3,))
    for bad in ("x", "x:", ":3", "x:0", "x:a"):
        with pytest.raises(BenchError, match="--shape"):
            parse_shape(bad)


def test_options_refuse_duration_and_count_together() -> None:
    with pytest.raises(BenchError, match="either a duration or a request count"):
        BenchOptions(target="t", model="m", duration=1.0, requests=5)


# --------------------------------------------------------------------------- the command


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sidecar.cli", "bench", *args]


def test_command_prints_a_table_and_json(server: ServerThread) -> None:
    common = ["-u", server.address, "-m", "digits", "-n", "20", "-c", "1,2", "--warmup", "0"]
    table = subprocess.run(command(*common), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"model digits at {server.address}: input [1, 64], raw contents")
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["concurrency"])
    assert lines[header].split() == [
        "concurrency", "requests", "req/s", "rows/s", "p50", "ms", "p90", "ms", "p99", "ms",
        "max", "ms", "errors",
    ]  # fmt: skip
    assert [line.split()[:2] for line in lines[header + 1 : header + 3]] == [
        ["1", "20"],
        ["2", "20"],
    ]
    assert table.stderr == ""  # no progress bar when stderr is not a terminal

    as_json = subprocess.run(
        command(*common, "--json", "--progress"), cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert [level["ok"] for level in data["levels"]] == [20, 20]
    assert data["options"]["concurrency"] == [1, 2]
    assert data["levels"][0]["requests_per_second"] > 0
    assert "concurrency    1 [" in as_json.stderr
    assert "100%" in as_json.stderr


def test_command_with_no_server_stops_at_once() -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    result = subprocess.run(
        command("-u", f"127.0.0.1:{port}", "-m", "digits", "-d", "30"),
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert time.monotonic() - started < 30
    assert result.returncode == 2
    assert f"cannot reach an inference server at 127.0.0.1:{port} (is it running?)" in (
        result.stderr
    )


def test_command_with_unknown_model_stops_at_once(server: ServerThread) -> None:
    result = subprocess.run(
        command("-u", server.address, "-m", "nope", "-d", "30"),
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "inference-sidecar: error: model 'nope' not found" in result.stderr


def test_ctrl_c_prints_partial_results(server: ServerThread) -> None:
    process = subprocess.Popen(
        command("-u", server.address, "-m", "digits", "-d", "60", "-c", "2", "--warmup", "0",
                "--progress"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        seen = b""
        deadline = time.monotonic() + 60
        while b" ok " not in seen:  # the progress bar shows answered requests
            assert time.monotonic() < deadline, seen
            chunk = os.read(process.stderr.fileno(), 4096)
            assert chunk, "bench exited before showing progress"
            seen += chunk
        process.send_signal(signal.SIGINT)
        stdout, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 130
    text = stdout.decode()
    assert "interrupted: partial results" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("2 "))
    assert int(row.split()[1]) > 0
    assert "(interrupted)" in row
