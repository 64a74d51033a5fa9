"""The in-memory prediction store (the default): bounded, O(1) per prediction.

Pending predictions live in one insertion-ordered dict per model (insertion
order is expiry order, because a model has one TTL); labelled and expired keys
move to one ordered dict of remembered keys, in the order they were labelled
or expired, which is the order they are forgotten in. Expiry and forgetting
pop from the fronts; the bound evicts remembered keys first, then the oldest
pending prediction of any model (a look at each model's front: O(models)).
A shadow prediction replaces its pending primary entry by one that carries
both (same key, same place in the order); a remembered key keeps the label
it was taken with, so a shadow prediction that comes after the label is
counted once.

Entries are kept as plain tuples of strings and numbers (``tuple(prediction)``,
``_Done``'s fields), not as named tuples: CPython's garbage collector stops
tracking such tuples after their first collection, so up to ``max_entries``
held predictions add nothing to every full collection's walk (with named tuples
a million entries made each one take a large fraction of a second, on whichever
thread triggered it, usually the event loop's).
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Collection, Sequence
from typing import Final, NamedTuple

from exporters.labels import LOCAL_STORE
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

_Key = tuple[str, int]
#: A pending prediction: the fields of a StoredPrediction, in its order, as a plain tuple.
_Row = tuple[str, int, str, str, float, float, float, str, float]
_MODEL: Final = 2
_VERSION: Final = 3
_TIME: Final = 5
_EXPIRES: Final = 6
_SHADOW_VERSION: Final = 7


class _Done(NamedTuple):
    """A remembered key (stored as a plain tuple of these fields: see the module docstring)."""

    model: str
    labelled: bool  # True: DUPLICATE (it was labelled); False: EXPIRED
    forget_at: float
    version: str  # the version that made the prediction
    actual: float  # the label it was taken with (NaN when it expired)
    shadowed: bool  # a shadow prediction of the key was counted with (or after) the label

    @property
    def found(self) -> Found:
        return Found.DUPLICATE if self.labelled else Found.EXPIRED


_DoneRow = tuple[str, bool, float, str, float, bool]


class MemoryStore:
    """Predictions in this process's memory; lost on restart."""

    backend = "memory"

    scope = LOCAL_STORE

    def __init__(self, max_entries: int, remember_seconds: float) -> None:
        self._max = max_entries
        self._remember = remember_seconds
        self._pending: dict[str, OrderedDict[_Key, _Row]] = {}
        self._pending_total = 0
        self._done: OrderedDict[_Key, _DoneRow] = OrderedDict()

    def __len__(self) -> int:
        """Keys held: pending predictions plus remembered keys (never above max_entries)."""
        return self._pending_total + len(self._done)

    def open(self) -> None:
        """Nothing to open."""

    def close(self) -> None:
        """Drop everything."""
        self._pending.clear()
        self._done.clear()
        self._pending_total = 0

    def _remember_key(self, key: _Key, done: _Done) -> None:
        self._done[key] = tuple(done)  # type: ignore[assignment]

    def put(self, rows: Sequence[StoredPrediction], now: float) -> PutResult:
        """Store each row; evict to stay within max_entries."""
        evicted: Counter[str] = Counter()
        done, every = self._done, self._pending
        pending: OrderedDict[_Key, _Row] | None = None
        model = None
        for row in rows:
            key = (row.request_id, row.row)
            if done and done.pop(key, None) is not None:  # a key stored again is replaced
                pass
            else:
                for held in every.values():
                    if held.pop(key, None) is not None:
                        self._pending_total -= 1
                        break
            if row.model != model or pending is None:
                model = row.model
                pending = every.get(model)
                if pending is None:
                    pending = every[model] = OrderedDict()
            pending[key] = tuple(row)  # type: ignore[assignment]
            self._pending_total += 1
            while self._pending_total + len(done) > self._max:
                self._evict_one(evicted)
        return PutResult(dict(evicted))

    def _evict_one(self, evicted: Counter[str]) -> None:
        if self._done:
            self._done.popitem(last=False)
            return
        oldest: OrderedDict[_Key, _Row] | None = None
        oldest_time = 0.0
        for pending in self._pending.values():
            if pending:
                first = next(iter(pending.values()))
                if oldest is None or first[_TIME] < oldest_time:
                    oldest, oldest_time = pending, first[_TIME]
        assert oldest is not None  # len(self) > max_entries >= 1
        _, row = oldest.popitem(last=False)
        self._pending_total -= 1
        evicted[row[_MODEL]] += 1

    def attach(self, rows: Sequence[ShadowRow], now: float) -> AttachResult:
        """Put each shadow prediction into its primary's entry, or return it with its label."""
        attached: list[ShadowRow] = []
        labelled: list[tuple[ShadowRow, float]] = []
        orphaned: Counter[str] = Counter()
        for row in rows:
            key = (row.request_id, row.row)
            pending = self._pending.get(row.model)
            primary = pending.get(key) if pending is not None else None
            if pending is not None and primary is not None and primary[_VERSION] == row.version:
                pending[key] = (*primary[:_SHADOW_VERSION], row.shadow_version, row.value)
                attached.append(row)
                continue
            remembered = self._done.get(key)
            done = _Done._make(remembered) if remembered is not None else None
            if (
                done is not None
                and done.labelled
                and done.model == row.model
                and done.version == row.version
                and not done.shadowed
                and not math.isnan(done.actual)
            ):
                self._remember_key(key, done._replace(shadowed=True))  # keeps its place
                labelled.append((row, done.actual))
                continue
            orphaned[row.model] += 1
        return AttachResult(attached, labelled, dict(orphaned))

    def _find_pending(self, key: _Key) -> _Row | None:
        for pending in self._pending.values():
            row = pending.get(key)
            if row is not None:
                return row
        return None

    def take(self, lookups: Sequence[Lookup], now: float) -> list[TakeResult]:
        """Answer each lookup in order; a matched prediction becomes a remembered key."""
        results: list[TakeResult] = []
        for lookup in lookups:
            key = (lookup.request_id, lookup.row)
            remembered = self._done.get(key)
            if remembered is not None:
                done = _Done._make(remembered)
                if done.model != lookup.model:
                    results.append(TakeResult(Found.WRONG_MODEL, other_model=done.model))
                else:
                    results.append(TakeResult(done.found))
                continue
            pending = self._pending.get(lookup.model)
            held = pending.get(key) if pending is not None else None
            if held is None or pending is None:
                other = self._find_pending(key)
                if other is not None:
                    results.append(TakeResult(Found.WRONG_MODEL, other_model=other[_MODEL]))
                elif lookup.row > 0 and self._known((lookup.request_id, 0)):
                    results.append(TakeResult(Found.BAD_ROW))
                else:
                    results.append(TakeResult(Found.UNKNOWN))
                continue
            row = StoredPrediction._make(held)
            if row.expires <= now:  # the next sweep moves and counts it
                results.append(TakeResult(Found.EXPIRED))
                continue
            del pending[key]
            self._pending_total -= 1
            self._remember_key(
                key,
                _Done(
                    row.model,
                    True,
                    now + self._remember,
                    row.version,
                    lookup.actual,
                    bool(row.shadow_version),
                ),
            )
            results.append(TakeResult(Found.MATCHED, row))
        return results

    def _known(self, key: _Key) -> bool:
        return key in self._done or self._find_pending(key) is not None

    def sweep(self, now: float, models: Collection[str]) -> SweepResult:
        """Expire pending predictions past their TTL, forget keys past remember_seconds."""
        expired: Counter[str] = Counter()
        for model, pending in self._pending.items():
            while pending:
                key, row = next(iter(pending.items()))
                if row[_EXPIRES] > now:
                    break
                del pending[key]
                self._pending_total -= 1
                self._remember_key(
                    key, _Done(model, False, now + self._remember, row[_VERSION], math.nan, False)
                )
                expired[model] += 1
        while self._done:
            key, remembered = next(iter(self._done.items()))
            if _Done._make(remembered).forget_at > now:
                break
            del self._done[key]
        counts = {model: len(self._pending.get(model, ())) for model in models}
        counts.update({model: len(p) for model, p in self._pending.items()})
        return SweepResult(dict(expired), {}, counts)
