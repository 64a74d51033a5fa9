"""The SQLite prediction store: pending predictions survive a restart.

One file, one writer process. The ``StoreWorker`` batches writes: every
``flush_interval_ms`` it writes all queued predictions in one transaction, so
a crash loses at most the predictions of the last flush interval plus the one
flush in progress (docs/labels.md). The database runs in WAL mode with
``synchronous=NORMAL``: a committed flush survives the process being killed;
an operating-system crash or power loss may also lose the last commits.

Schema: one row per (request id, row) with the prediction, its times and a
state (0 pending, 1 labelled, 2 expired). Partial indexes keep expiry
(pending by ``expires``) and forgetting (done by ``forget_at``) index scans.
Counts of rows and of pending predictions per model are kept in memory (read
once at open) so the bound and the gauge cost no table scans.

Schema version 2 added, on the same row, the shadow version's prediction
(``shadow_version``, ``shadow_value``: NULL until a shadow prediction of the
key is attached) and the label a prediction was taken with (``label``), so a
shadow prediction written after the label is counted with it. A version-1
file is upgraded in place at open (three ``ALTER TABLE ... ADD COLUMN``).
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from exporters.labels import LOCAL_STORE
from sidecar.labels.errors import StoreError
from sidecar.labels.types import (
    AttachResult,
    Found,
    Lookup,
    PutResult,
    ShadowRow,
    StoredPrediction,
    SweepResult,
    TakeResult,
)

PENDING, LABELED, EXPIRED = 0, 1, 2
SCHEMA_VERSION = 2
_CHUNK = 400  # keys per "IN (VALUES ...)" query: 800 parameters

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    request_id TEXT NOT NULL,
    row INTEGER NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    value REAL NOT NULL,
    time REAL NOT NULL,
    expires REAL NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    forget_at REAL,
    shadow_version TEXT,
    shadow_value REAL,
    label REAL,
    UNIQUE (request_id, row)
);
"""
#: Version 1 → 2: the shadow's prediction and the label, on the prediction's row.
_UPGRADE_1 = """
ALTER TABLE predictions ADD COLUMN shadow_version TEXT;
ALTER TABLE predictions ADD COLUMN shadow_value REAL;
ALTER TABLE predictions ADD COLUMN label REAL;
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS predictions_pending ON predictions (expires) WHERE state = 0;
CREATE INDEX IF NOT EXISTS predictions_done ON predictions (forget_at) WHERE state != 0;
"""


class SqliteStore:
    """Predictions in a SQLite file (WAL mode)."""

    backend = "sqlite"

    scope = LOCAL_STORE

    def __init__(self, path: Path, max_entries: int, remember_seconds: float) -> None:
        self._path = path
        self._max = max_entries
        self._remember = remember_seconds
        self._db: sqlite3.Connection | None = None
        self._total = 0
        self._pending: Counter[str] = Counter()

    def __len__(self) -> int:
        """Rows in the table (pending plus remembered keys)."""
        return self._total

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"sqlite store {self._path}: not open")
        return self._db

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        db = self._conn
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreError(f"sqlite store {self._path}: {what} failed: {exc}") from exc

    def open(self) -> None:
        """Open (creating) the file, check its schema version, load counts."""
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"sqlite store {self._path}: cannot open: {exc}") from exc
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, SCHEMA_VERSION):
                raise StoreError(
                    f"sqlite store {self._path}: schema version {version}, this server "
                    f"knows 1 to {SCHEMA_VERSION}; use another file"
                )
            if version == 1:
                db.executescript(f"BEGIN IMMEDIATE; {_UPGRADE_1} COMMIT;")
            db.executescript(_SCHEMA + _INDEXES)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._total = db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
            self._pending = Counter(
                dict(
                    db.execute(
                        "SELECT model, COUNT(*) FROM predictions WHERE state = 0 GROUP BY model"
                    ).fetchall()
                )
            )
        except sqlite3.Error as exc:
            db.close()
            raise StoreError(f"sqlite store {self._path}: cannot open: {exc}") from exc
        except StoreError:
            db.close()
            raise
        self._db = db

    def close(self) -> None:
        """Close the connection (everything committed is on disk)."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def put(self, rows: Sequence[StoredPrediction], now: float) -> PutResult:
        """Write the rows in one transaction, replacing keys stored before."""
        latest = {(r.request_id, r.row): r for r in rows}  # a key twice: the last wins
        keys = list(latest)
        pending = Counter(r.model for r in latest.values())
        total = len(latest)
        evicted: Counter[str] = Counter()
        with self._transaction("write") as db:
            for model, state in self._select(db, "p.model, p.state", keys):
                total -= 1
                if state == PENDING:
                    pending[model] -= 1
            db.executemany(
                "INSERT OR REPLACE INTO predictions "
                "(request_id, row, model, version, value, time, expires, state, forget_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 0, NULL)",
                (r[:7] for r in latest.values()),
            )
            deleted = 0
            over = self._total + total - self._max
            if over > 0:
                deleted = db.execute(
                    "DELETE FROM predictions WHERE rowid IN (SELECT rowid FROM predictions "
                    "WHERE state != 0 ORDER BY forget_at LIMIT ?)",
                    (over,),
                ).rowcount
                over -= deleted
            if over > 0:
                for (model,) in db.execute(
                    "DELETE FROM predictions WHERE rowid IN (SELECT rowid FROM predictions "
                    "WHERE state = 0 ORDER BY expires LIMIT ?) RETURNING model",
                    (over,),
                ).fetchall():
                    evicted[model] += 1
        self._total += total - deleted - evicted.total()
        self._pending.update(pending)
        self._pending.subtract(evicted)
        return PutResult(dict(evicted))

    def take(self, lookups: Sequence[Lookup], now: float) -> list[TakeResult]:
        """Answer lookups in one transaction; matched rows become state 1 (labelled).

        Rows are read in chunks (an indexed join against the keys), answered in
        order in Python (a key twice in one batch: matched, then duplicate), and
        the matched ones updated with one executemany.
        """
        keys = list(dict.fromkeys((lk.request_id, lk.row) for lk in lookups))
        results: list[TakeResult] = []
        taken: Counter[str] = Counter()
        with self._transaction("read") as db:
            rows = {
                (found[1], found[2]): list(found)
                for found in self._select(
                    db,
                    "p.rowid, p.request_id, p.row, p.model, p.version, p.value, p.time, "
                    "p.expires, p.state, p.shadow_version, p.shadow_value",
                    keys,
                )
            }
            misses = list(
                dict.fromkeys((rid, 0) for rid, row in keys if row and (rid, row) not in rows)
            )
            known = {found[0] for found in self._select(db, "p.request_id", misses)}
            updates: list[tuple[float, float | None, int]] = []
            for lookup in lookups:
                found = rows.get((lookup.request_id, lookup.row))
                if found is None:
                    bad = lookup.row > 0 and lookup.request_id in known
                    results.append(TakeResult(Found.BAD_ROW if bad else Found.UNKNOWN))
                    continue
                rowid, _, _, model, version, value, made, expires, state, sv, sx = found
                if model != lookup.model:
                    results.append(TakeResult(Found.WRONG_MODEL, other_model=model))
                elif state == LABELED:
                    results.append(TakeResult(Found.DUPLICATE))
                elif state == EXPIRED or expires <= now:
                    results.append(TakeResult(Found.EXPIRED))
                else:
                    found[8] = LABELED
                    actual = None if math.isnan(lookup.actual) else lookup.actual
                    updates.append((now + self._remember, actual, rowid))
                    taken[model] += 1
                    prediction = StoredPrediction(
                        lookup.request_id,
                        lookup.row,
                        model,
                        version,
                        value,
                        made,
                        expires,
                        sv or "",
                        math.nan if sx is None else sx,
                    )
                    results.append(TakeResult(Found.MATCHED, prediction))
            db.executemany(
                "UPDATE predictions SET state = 1, forget_at = ?, label = ? WHERE rowid = ?",
                updates,
            )
        self._pending.subtract(taken)
        return results

    def attach(self, rows: Sequence[ShadowRow], now: float) -> AttachResult:
        """Write shadow predictions onto their primaries' rows, in one transaction.

        A pending primary of the same model and version takes the shadow's
        prediction; a labelled one without a shadow yet takes it too and the
        row comes back with the stored label, to be counted now.
        """
        keys = list(dict.fromkeys((r.request_id, r.row) for r in rows))
        attached: list[ShadowRow] = []
        labelled: list[tuple[ShadowRow, float]] = []
        orphaned: Counter[str] = Counter()
        updates: list[tuple[str, float, int]] = []
        with self._transaction("write") as db:
            primaries = {
                (rid, row): (rowid, model, version, state, sv, label)
                for rowid, rid, row, model, version, state, sv, label in self._select(
                    db,
                    "p.rowid, p.request_id, p.row, p.model, p.version, p.state, "
                    "p.shadow_version, p.label",
                    keys,
                )
            }
            for shadow in rows:
                key = (shadow.request_id, shadow.row)
                found = primaries.get(key)
                if found is None or found[1] != shadow.model or found[2] != shadow.version:
                    orphaned[shadow.model] += 1
                    continue
                rowid, _, _, state, sv, label = found
                if state == PENDING:
                    attached.append(shadow)
                elif state == LABELED and sv is None and label is not None:
                    labelled.append((shadow, label))
                else:
                    orphaned[shadow.model] += 1
                    continue
                primaries[key] = (rowid, shadow.model, shadow.version, state, "+", label)
                updates.append((shadow.shadow_version, shadow.value, rowid))
            db.executemany(
                "UPDATE predictions SET shadow_version = ?, shadow_value = ? WHERE rowid = ?",
                updates,
            )
        return AttachResult(attached, labelled, dict(orphaned))

    @staticmethod
    def _select(
        db: sqlite3.Connection, columns: str, keys: Sequence[tuple[str, int]]
    ) -> Iterator[tuple[Any, ...]]:
        """Rows of ``predictions`` (as ``p``) whose (request_id, row) is one of ``keys``."""
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            marks = ",".join("(?,?)" for _ in chunk)
            yield from db.execute(
                f"SELECT {columns} FROM (VALUES {marks}) AS k "  # noqa: S608 - marks and our columns
                "JOIN predictions AS p ON p.request_id = k.column1 AND p.row = k.column2",
                [v for key in chunk for v in key],
            )

    def sweep(self, now: float, models: Collection[str]) -> SweepResult:
        """Mark pending rows past their TTL expired; delete rows past remember_seconds."""
        expired: Counter[str] = Counter()
        with self._transaction("sweep") as db:
            for (model,) in db.execute(
                "UPDATE predictions SET state = 2, forget_at = ? "
                "WHERE state = 0 AND expires <= ? RETURNING model",
                (now + self._remember, now),
            ).fetchall():
                expired[model] += 1
            forgotten = db.execute(
                "DELETE FROM predictions WHERE state != 0 AND forget_at <= ?", (now,)
            ).rowcount
        self._total -= forgotten
        self._pending.subtract(expired)
        counts = {model: self._pending.get(model, 0) for model in models}
        counts.update({m: n for m, n in self._pending.items() if n})
        return SweepResult(dict(expired), {}, counts)
