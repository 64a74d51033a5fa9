"""Store cost per row of put, attach (a shadow's prediction) and take, per backend.

docs/labels.md, "Bounds and cost". Each run writes ``--batch`` primary
predictions, attaches a shadow prediction to each, then takes each with a
label, and times the three store calls; the medians over ``--runs`` runs are
printed per row. The Redis figures need ``redis-server`` on PATH (a throwaway
server on a free loopback port is started).

    python benchmarks/label_store_shadow.py --batch 1000 --runs 7
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sidecar.labels.store import PredictionStore  # noqa: E402
from sidecar.labels.store_memory import MemoryStore  # noqa: E402
from sidecar.labels.store_sqlite import SqliteStore  # noqa: E402
from sidecar.labels.types import Lookup, ShadowRow, StoredPrediction  # noqa: E402


def measure(store: PredictionStore, batch: int, runs: int) -> dict[str, float]:
    """Median seconds per row of put, attach and take."""
    times: dict[str, list[float]] = {"put": [], "attach": [], "take": []}
    for run in range(runs):
        ids = [f"{run}-{i}" for i in range(batch)]
        rows = [StoredPrediction(rid, 0, "m", "1", 3.0, 1000.0, 1e12) for rid in ids]
        shadows = [ShadowRow(rid, 0, "m", "1", "2", 4.0) for rid in ids]
        lookups = [Lookup(rid, 0, "m", 3.0) for rid in ids]
        started = time.perf_counter()
        store.put(rows, 1000.0)
        times["put"].append(time.perf_counter() - started)
        started = time.perf_counter()
        attached = store.attach(shadows, 1000.0)
        times["attach"].append(time.perf_counter() - started)
        started = time.perf_counter()
        taken = store.take(lookups, 1000.0)
        times["take"].append(time.perf_counter() - started)
        assert len(attached.attached) == batch
        assert all(r.prediction is not None and r.prediction.shadow_version for r in taken)
    return {op: statistics.median(t) / batch for op, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--batch", type=int, default=1000, help="rows per store call")
    parser.add_argument("--runs", type=int, default=7, help="runs (the median is printed)")
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis store")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        stores: list[tuple[str, PredictionStore]] = [
            ("memory", MemoryStore(10**7, 3600.0)),
            ("sqlite", SqliteStore(tmp / "bench.db", 10**7, 3600.0)),
        ]
        if not args.no_redis:
            from sidecar.labels.store_redis import RedisStore
            from tests.labels.redis_server import RedisServer

            server = stack.enter_context(RedisServer(tmp / "redis"))
            stores.append(("redis", RedisStore(server.url, "bench:", 10**7, 3600.0, 2.0)))
        for name, store in stores:
            store.open()
            try:
                cost = measure(store, args.batch, args.runs)
            finally:
                store.close()
            print(
                f"{name}: per row, median of {args.runs} calls of {args.batch} rows: "
                + ", ".join(f"{op} {s * 1e6:.1f} µs" for op, s in cost.items())
            )


if __name__ == "__main__":
    main()
