"""``inference-sidecar labels send FILE.csv`` against a real server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sidecar.app import AppParts
from sidecar.cli import main
from tests.helpers import ServerThread, running_server, server_config
from tests.labels.helpers import Client, label_parts, registry_of, sample

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def served(labels_repo: Path) -> Iterator[tuple[ServerThread, AppParts]]:
    config = server_config(labels_repo)
    parts = label_parts(config)
    with running_server(config, parts) as srv:
        yield srv, parts


def test_send_reports_every_line(
    served: tuple[ServerThread, AppParts], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, parts = served
    with Client(server.address) as client:
        digits_id, _ = client.infer("digits", np.zeros((3, 64)))
        diabetes_id, _ = client.infer("diabetes", np.zeros((1, 10)))
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "request_id,model,row,class_name,class_index,value\n"
        f"{digits_id},digits,0,three,,\n"  # line 2
        f"{digits_id},digits,1,,7,\n"
        f"{digits_id},digits,2,zero,,\n"
        f"{diabetes_id},diabetes,,,,151.5\n"  # line 5: row defaults to 0
        f"{digits_id},digits,0,three,,\n"  # line 6: duplicate
        f"{digits_id},digits,0,,,\n"  # line 7: no value, not sent
        f"{digits_id},digits,x,one,,\n"  # line 8: bad row, not sent
        "nobody,digits,0,one,,\n"  # line 9: unknown id
        f"{digits_id},digits,0,eleven,,\n"  # line 10: not a class
    )
    before = sample(registry_of(parts), "sidecar_labels_received_total", model="digits",
                    outcome="matched")  # fmt: skip
    code = main(["labels", "send", str(csv), "--address", server.address, "--batch-size", "3"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "7 labels sent: matched 4, unknown_id 1, expired 0, duplicate 1, invalid 1" in out
    assert "2 unreadable lines not sent" in out
    assert f"{csv}:6: duplicate:" in err
    assert f"{csv}:7: not sent: fill exactly one of" in err
    assert f"{csv}:8: not sent: row must be a whole number" in err
    assert f"{csv}:9: unknown_id:" in err
    assert f"{csv}:10: invalid: class 'eleven' is not a class" in err
    after = sample(registry_of(parts), "sidecar_labels_received_total", model="digits",
                   outcome="matched")  # fmt: skip
    assert after - before == 3


def test_send_all_matched_exits_zero_from_the_console_script(
    served: tuple[ServerThread, AppParts], tmp_path: Path
) -> None:
    server, _ = served
    with Client(server.address) as client:
        request_id, _ = client.infer("digits", np.zeros((2, 64)))
    csv = tmp_path / "ok.csv"
    csv.write_text(
        f"model,request_id,row,class_index\ndigits,{request_id},0,1\ndigits,{request_id},1,2\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "labels", "send", str(csv), "--address",
         server.address],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "2 labels sent: matched 2," in done.stdout


def test_bad_header_and_missing_file_are_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("id,label\nabc,1\n")
    assert main(["labels", "send", str(csv), "--address", "127.0.0.1:1"]) == 2
    assert "the header must name request_id, model" in capsys.readouterr().err
    assert main(["labels", "send", str(tmp_path / "none.csv")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_unreachable_server_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "one.csv"
    csv.write_text("request_id,model,class_name\nabc,digits,one\n")
    code = main(["labels", "send", str(csv), "--address", "127.0.0.1:1", "--timeout", "2"])
    assert code == 2
    assert "sending labels to 127.0.0.1:1 failed at line 2 (UNAVAILABLE" in capsys.readouterr().err
