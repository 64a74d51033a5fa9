"""SQLite store: predictions survive a SIGKILL once flushed; labels after the restart match."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from tests.labels.helpers import Client, class_label, wait_for
from tests.labels.process import ServerProcess

pytestmark = pytest.mark.slow


def rows_in(path: Path) -> int:
    if not path.exists():
        return 0
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])
        except sqlite3.OperationalError:  # the server has not made the table yet
            return 0


def test_predictions_survive_sigkill_and_restart(labels_repo: Path, tmp_path: Path) -> None:
    database = tmp_path / "state" / "labels.db"
    labels = {"backend": "sqlite", "path": str(database), "flush_interval_ms": 50}
    server = ServerProcess(tmp_path / "server", labels_repo, labels)
    x = np.load(labels_repo / "digits" / "holdout_features.npy")[:30]
    y = np.load(labels_repo / "digits" / "holdout_labels.npy")[:30].astype(int)
    with server:
        with Client(server.address) as client:
            ids = [client.infer("digits", x[i : i + 10])[0] for i in (0, 10, 20)]
            early = [class_label(ids[0], "digits", int(y[r]), row=r) for r in range(5)]
            assert client.outcomes(early) == ["matched"] * 5
        # predictions are on disk once a flush interval has passed: poll the file
        wait_for("30 rows in the database", lambda: rows_in(database) == 30)
        server.kill()
        server.start().wait_ready()
        with Client(server.address) as client:
            labels_after = [
                class_label(ids[i // 10], "digits", int(y[i]), row=i % 10) for i in range(30)
            ]
            outcomes = client.outcomes(labels_after)
    assert outcomes == ["duplicate"] * 5 + ["matched"] * 25
