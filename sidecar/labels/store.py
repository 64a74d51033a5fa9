"""The prediction store: one interface, three backends (memory, SQLite, Redis).

A store maps (request id, row) to the prediction made for it and answers
label lookups atomically: a pending prediction is taken (marked labelled) by
exactly one lookup; later lookups of the same key are duplicates. Keys stay
known ``remember_seconds`` after they are labelled or expire, so late labels
are answered ``expired`` and repeated ones ``duplicate`` rather than
``unknown_id``. Every store is bounded by ``max_entries`` keys (the oldest
remembered keys go first, then the oldest pending predictions, counted as
evicted) and by the TTL of each prediction.

A shadow version's prediction of a row (``attach``) is kept *inside* the
entry of the primary's prediction under the same key: it adds no key, shares
the primary's TTL, bound and eviction, and is taken together with it. A
label taken before the shadow's prediction arrived is remembered with the
key, so a shadow prediction written later is returned with that label to be
counted then (docs/labels.md, "Shadow versions").

Stores are synchronous and not thread-safe: one ``StoreWorker`` thread owns a
store and calls it, so the event loop never waits on store I/O. Failures of the
backend surface as ``StoreError``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

from sidecar.config import LabelStoreConfig
from sidecar.labels.types import (
    AttachResult,
    Lookup,
    PutResult,
    ShadowRow,
    StoredPrediction,
    SweepResult,
    TakeResult,
)


class PredictionStore(Protocol):
    """Where predictions wait for their labels."""

    @property
    def backend(self) -> str:
        """``memory``, ``sqlite`` or ``redis`` (a metric label value)."""
        ...

    @property
    def scope(self) -> str:
        """``local`` when only this process holds the store (memory, SQLite), else which
        shared store it is, without credentials: the ``store`` label of
        ``sidecar_pending_predictions``, so that queries count a shared store once."""
        ...

    def open(self) -> None:
        """Connect, create the schema, load counts; raises StoreError."""
        ...

    def put(self, rows: Sequence[StoredPrediction], now: float) -> PutResult:
        """Store predictions (a key stored again is replaced); raises StoreError."""
        ...

    def attach(self, rows: Sequence[ShadowRow], now: float) -> AttachResult:
        """Keep shadow predictions beside their primary predictions; raises StoreError."""
        ...

    def take(self, lookups: Sequence[Lookup], now: float) -> list[TakeResult]:
        """Answer lookups in order, marking matched predictions labelled; raises StoreError.

        A matched prediction comes back with its shadow prediction, if one was attached.
        """
        ...

    def sweep(self, now: float, models: Collection[str]) -> SweepResult:
        """Expire predictions past their TTL, forget old keys, count what is pending."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...


def create_store(config: LabelStoreConfig) -> PredictionStore:
    """The backend ``config`` names; the store is not opened yet."""
    if config.backend == "sqlite":
        from sidecar.labels.store_sqlite import SqliteStore

        assert config.path is not None  # checked by the config
        return SqliteStore(config.path, config.max_entries, config.remember_seconds)
    if config.backend == "redis":
        from sidecar.labels.store_redis import RedisStore

        assert config.url is not None  # checked by the config
        return RedisStore(
            config.url,
            config.key_prefix,
            config.max_entries,
            config.remember_seconds,
            config.timeout_seconds,
        )
    from sidecar.labels.store_memory import MemoryStore

    return MemoryStore(config.max_entries, config.remember_seconds)
