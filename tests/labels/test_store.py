"""The PredictionStore contract, run against each backend (memory, SQLite, real Redis)."""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidecar.labels.store import PredictionStore
from sidecar.labels.store_memory import MemoryStore
from sidecar.labels.store_redis import RedisStore
from sidecar.labels.store_sqlite import SqliteStore
from sidecar.labels.types import Found, Lookup, ShadowRow, StoredPrediction
from tests.labels.helpers import wait_for
from tests.labels.redis_server import RedisServer

BACKENDS = ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)]
REMEMBER = 0.5  # seconds a labelled/expired key is remembered (real seconds for Redis)
_prefixes = itertools.count()

StoreFactory = Callable[..., PredictionStore]


@pytest.fixture(params=BACKENDS)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """A factory of opened stores of one backend; all closed after the test."""
    made: list[PredictionStore] = []
    prefix = f"test{next(_prefixes)}:"

    def make(max_entries: int = 1000, remember: float = REMEMBER) -> PredictionStore:
        store: PredictionStore
        if request.param == "memory":
            store = MemoryStore(max_entries, remember)
        elif request.param == "sqlite":
            store = SqliteStore(tmp_path / "labels.db", max_entries, remember)
        else:
            server: RedisServer = request.getfixturevalue("redis_server")
            store = RedisStore(server.url, prefix, max_entries, remember, 2.0)
        store.open()
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def pred(
    request_id: str, row: int = 0, model: str = "m", value: float = 3.0, t: float = 1000.0,
    ttl: float = 60.0, version: str = "1",
) -> StoredPrediction:  # fmt: skip
    return StoredPrediction(request_id, row, model, version, value, t, t + ttl)


def found(store: PredictionStore, now: float, *lookups: Lookup) -> list[Found]:
    return [r.found for r in store.take(list(lookups), now)]


def test_take_matches_once_then_duplicate(make_store: StoreFactory) -> None:
    store = make_store()
    stored = pred("a", row=0, value=0.1 + 0.2, t=1000.123456789)
    store.put([stored, pred("a", row=1)], now=1000.2)
    first = store.take([Lookup("a", 0, "m")], now=1001.0)
    assert first[0].found is Found.MATCHED
    assert first[0].prediction == stored  # value and times round-trip exactly
    assert found(store, 1002.0, Lookup("a", 0, "m")) == [Found.DUPLICATE]
    assert found(store, 1002.0, Lookup("a", 1, "m"), Lookup("a", 1, "m")) == [
        Found.MATCHED,
        Found.DUPLICATE,
    ]


def test_unknown_bad_row_and_wrong_model(make_store: StoreFactory) -> None:
    store = make_store()
    store.put([pred("a", model="m"), pred("b", model="n")], now=1000.0)
    results = store.take(
        [Lookup("zzz", 0, "m"), Lookup("a", 4, "m"), Lookup("a", 0, "n"), Lookup("zzz", 4, "m")],
        now=1001.0,
    )
    assert [r.found for r in results] == [
        Found.UNKNOWN,
        Found.BAD_ROW,
        Found.WRONG_MODEL,
        Found.UNKNOWN,
    ]
    assert results[2].other_model == "m"
    # the wrong-model lookup left the prediction for its own model to take
    assert found(store, 1001.0, Lookup("a", 0, "m"), Lookup("b", 0, "n")) == [Found.MATCHED] * 2


def test_expiry_is_answered_and_counted_once(make_store: StoreFactory) -> None:
    store = make_store()
    store.put([pred("a", ttl=10.0), pred("b", ttl=10.0), pred("c", ttl=100.0)], now=1000.0)
    assert found(store, 1011.0, Lookup("a", 0, "m")) == [Found.EXPIRED]  # before any sweep
    swept = store.sweep(1011.0, ["m"])
    assert swept.expired == {"m": 2}
    assert swept.pending == {"m": 1}
    assert found(store, 1011.0, Lookup("a", 0, "m"), Lookup("b", 0, "m")) == [Found.EXPIRED] * 2
    again = store.sweep(1012.0, ["m"])
    assert again.expired.get("m", 0) == 0
    assert found(store, 1012.0, Lookup("c", 0, "m")) == [Found.MATCHED]
    assert store.sweep(1012.0, ["m"]).pending == {"m": 0}


def test_remembered_keys_are_forgotten(make_store: StoreFactory) -> None:
    store = make_store()
    now = time.time()
    store.put([pred("a", t=now), pred("b", t=now, ttl=0.2)], now=now)
    assert found(store, now, Lookup("a", 0, "m")) == [Found.MATCHED]
    if isinstance(store, RedisStore):  # Redis forgets by its own key TTLs, in real time
        store.sweep(now + 0.3, ["m"])
        wait_for(
            "Redis to drop remembered keys",
            lambda: (
                found(store, time.time(), Lookup("a", 0, "m"), Lookup("b", 0, "m"))
                == [Found.UNKNOWN] * 2
            ),
            timeout=10,
        )
    else:
        store.sweep(now + 0.3, ["m"])  # b expires and is remembered from here
        assert found(store, now + 0.3, Lookup("a", 0, "m"), Lookup("b", 0, "m")) == [
            Found.DUPLICATE,
            Found.EXPIRED,
        ]
        store.sweep(now + 0.3 + REMEMBER, ["m"])
        assert (
            found(store, now + 1, Lookup("a", 0, "m"), Lookup("b", 0, "m")) == [Found.UNKNOWN] * 2
        )
        assert isinstance(store, MemoryStore | SqliteStore)
        assert len(store) == 0


def test_pending_counts_per_model(make_store: StoreFactory) -> None:
    store = make_store()
    store.put([pred(f"a{i}", model="m") for i in range(3)], now=1000.0)
    store.put([pred(f"b{i}", model="n") for i in range(2)], now=1000.0)
    assert store.sweep(1000.0, ["m", "n", "idle"]).pending == {"m": 3, "n": 2, "idle": 0}
    store.take([Lookup("a0", 0, "m")], now=1000.0)
    assert store.sweep(1000.0, ["m", "n"]).pending == {"m": 2, "n": 2}


def test_storing_a_key_again_replaces_it(make_store: StoreFactory) -> None:
    store = make_store()
    store.put([pred("a", value=1.0)], now=1000.0)
    store.put([pred("a", value=2.0, t=1001.0), pred("a", value=5.0, t=1001.0, row=1)], now=1001.0)
    assert store.sweep(1001.0, ["m"]).pending == {"m": 2}
    result = store.take([Lookup("a", 0, "m")], now=1002.0)[0]
    assert result.prediction is not None and result.prediction.value == 2.0


def test_bound_evicts_oldest_pending(make_store: StoreFactory) -> None:
    store = make_store(max_entries=5)
    evicted = 0
    for i in range(8):
        evicted += sum(store.put([pred(f"r{i}", t=1000.0 + i)], now=1000.0 + i).evicted.values())
        if isinstance(store, MemoryStore | SqliteStore):
            assert len(store) <= 5
    swept = store.sweep(1008.0, ["m"])
    evicted += sum(swept.evicted.values())
    assert evicted == 3
    assert swept.pending == {"m": 5}
    oldest, newest = Lookup("r0", 0, "m"), Lookup("r7", 0, "m")
    assert found(store, 1009.0, oldest, newest) == [Found.UNKNOWN, Found.MATCHED]


def test_remembered_keys_go_before_pending_ones(tmp_path: Path) -> None:
    for store in (MemoryStore(4, 100.0), SqliteStore(tmp_path / "b.db", 4, 100.0)):
        store.open()
        store.put([pred(f"r{i}", t=1000.0 + i) for i in range(4)], now=1000.0)
        store.take([Lookup("r1", 0, "m")], now=1005.0)  # r1 becomes a remembered key
        result = store.put([pred("new", t=1006.0)], now=1006.0)
        assert result.evicted == {}  # the remembered key made room, no pending one
        assert len(store) == 4
        assert found(store, 1007.0, Lookup("r0", 0, "m"), Lookup("r1", 0, "m")) == [
            Found.MATCHED,
            Found.UNKNOWN,
        ]
        store.close()


def test_sqlite_keeps_predictions_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "labels.db"
    store = SqliteStore(path, 1000, 60.0)
    store.open()
    store.put([pred(f"r{i}", model="m" if i % 2 else "n") for i in range(10)], now=1000.0)
    store.take([Lookup("r1", 0, "m")], now=1001.0)
    store.close()
    again = SqliteStore(path, 1000, 60.0)
    again.open()
    assert len(again) == 10
    assert again.sweep(1001.0, ["m", "n"]).pending == {"m": 4, "n": 5}
    assert found(again, 1001.0, Lookup("r1", 0, "m"), Lookup("r3", 0, "m")) == [
        Found.DUPLICATE,
        Found.MATCHED,
    ]
    again.close()


def test_sqlite_refuses_an_unknown_schema_version(tmp_path: Path) -> None:
    import sqlite3

    from sidecar.labels.errors import StoreError

    path = tmp_path / "future.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=99")
    store = SqliteStore(path, 10, 1.0)
    with pytest.raises(StoreError, match="schema version 99"):
        store.open()


def test_sqlite_upgrades_a_version_1_file_in_place(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as db:  # the schema servers before shadow scoring wrote
        db.executescript(
            "CREATE TABLE predictions (request_id TEXT NOT NULL, row INTEGER NOT NULL, "
            "model TEXT NOT NULL, version TEXT NOT NULL, value REAL NOT NULL, time REAL NOT NULL, "
            "expires REAL NOT NULL, state INTEGER NOT NULL DEFAULT 0, forget_at REAL, "
            "UNIQUE (request_id, row));"
            "INSERT INTO predictions VALUES ('old', 0, 'm', '1', 2.0, 1000.0, 1060.0, 0, NULL);"
            "PRAGMA user_version=1;"
        )
    store = SqliteStore(path, 10, 1.0)
    store.open()
    try:
        assert store.attach([shadow("old", value=8.0)], now=1001.0).attached == [
            shadow("old", value=8.0)
        ]
        (taken,) = store.take([Lookup("old", 0, "m", 2.0)], now=1001.0)
        assert taken.prediction is not None
        assert (taken.prediction.value, taken.prediction.shadow_value) == (2.0, 8.0)
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2


@pytest.mark.redis
def test_redis_take_is_atomic_across_clients(redis_server: RedisServer) -> None:
    prefix = f"atomic{next(_prefixes)}:"
    stores = [RedisStore(redis_server.url, prefix, 10_000, 60.0, 5.0) for _ in range(2)]
    for store in stores:
        store.open()
    now = time.time()
    keys = [f"req{i}" for i in range(300)]
    stores[0].put([pred(k, t=now) for k in keys], now=now)
    matched: list[int] = [0, 0, 0, 0]
    barrier = threading.Barrier(4)

    def race(slot: int) -> None:
        store = stores[slot % 2]
        barrier.wait()
        for start in range(0, len(keys), 50):
            lookups = [Lookup(k, 0, "m") for k in keys[start : start + 50]]
            matched[slot] += sum(r.found is Found.MATCHED for r in store.take(lookups, now))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(matched) == len(keys)
    assert stores[1].sweep(now, ["m"]).pending == {"m": 0}
    for store in stores:
        store.close()


def shadow(
    request_id: str, row: int = 0, model: str = "m", value: float = 5.0, version: str = "1",
    shadow_version: str = "2",
) -> ShadowRow:  # fmt: skip
    return ShadowRow(request_id, row, model, version, shadow_version, value)


def test_shadow_prediction_rides_on_its_pending_primary(make_store: StoreFactory) -> None:
    store = make_store(max_entries=4)
    store.put([pred("a", row=0, value=1.0), pred("a", row=1, value=2.0)], now=1000.0)
    result = store.attach([shadow("a", row=1, value=7.0)], now=1000.1)
    assert (result.attached, result.labelled, result.orphaned) == (
        [shadow("a", 1, value=7.0)],
        [],
        {},
    )
    taken = store.take([Lookup("a", 0, "m", 0.0), Lookup("a", 1, "m", 2.0)], now=1001.0)
    assert [r.found for r in taken] == [Found.MATCHED, Found.MATCHED]
    first, second = (r.prediction for r in taken)
    assert first is not None and second is not None
    assert (first.shadow_version, math.isnan(first.shadow_value)) == ("", True)
    assert (second.version, second.value, second.shadow_version, second.shadow_value) == (
        "1", 2.0, "2", 7.0,
    )  # fmt: skip
    # the shadow added no key: two more predictions fit the bound of 4 without eviction
    evicted = store.put([pred("b", row=0), pred("c", row=0)], now=1001.0)
    assert evicted.evicted == {}
    assert found(store, 1001.5, Lookup("b", 0, "m", 3.0)) == [Found.MATCHED]


def test_shadow_after_the_label_comes_back_with_it_once(make_store: StoreFactory) -> None:
    store = make_store()
    store.put([pred("a", row=0, value=1.0)], now=1000.0)
    assert found(store, 1001.0, Lookup("a", 0, "m", 4.0)) == [Found.MATCHED]
    late = store.attach([shadow("a", value=4.0)], now=1001.1)
    assert (late.attached, late.labelled, late.orphaned) == (
        [],
        [(shadow("a", value=4.0), 4.0)],
        {},
    )
    again = store.attach([shadow("a", value=4.0)], now=1001.2)
    assert (again.labelled, again.orphaned) == ([], {"m": 1})  # counted once
    assert found(store, 1001.3, Lookup("a", 0, "m", 4.0)) == [Found.DUPLICATE]


def test_shadow_without_its_primary_is_not_kept(make_store: StoreFactory) -> None:
    store = make_store()
    store.put([pred("a", ttl=1.0), pred("b", version="3"), pred("c", model="other")], now=1000.0)
    store.sweep(1002.0, ["m", "other"])  # a expires
    result = store.attach(
        [shadow("a"), shadow("b"), shadow("c"), shadow("never"), shadow("b", row=1)], now=1002.0
    )
    assert (result.attached, result.labelled) == ([], [])
    assert result.orphaned == {"m": 5}
    # the primaries are untouched: b still matches, without a shadow
    (taken,) = store.take([Lookup("b", 0, "m", 3.0)], now=1002.5)
    assert taken.found is Found.MATCHED and taken.prediction is not None
    assert taken.prediction.shadow_version == ""


def test_held_predictions_cost_the_garbage_collector_nothing() -> None:
    """A million held predictions must not lengthen every full collection: the memory store
    keeps plain tuples of strings and numbers, which CPython stops tracking."""
    import gc

    store = MemoryStore(100_000, REMEMBER)
    gc.collect()
    before = len(gc.get_objects())
    for start in range(0, 20_000, 1000):  # what the writer hands over, batch after batch
        store.put([pred(f"r{i}", t=1000.0 + i) for i in range(start, start + 1000)], 1000.0)
    taken = store.take([Lookup(f"r{i}", 0, "m", 1.0) for i in range(5000)], 1000.0)
    assert [r.found for r in taken] == [Found.MATCHED] * 5000  # 5,000 remembered keys now
    assert taken[7].prediction == pred("r7", t=1007.0)  # handed out as StoredPrediction
    del taken
    gc.collect()
    assert len(store) == 20_000
    assert len(gc.get_objects()) - before < 1000  # not one tracked object per entry
