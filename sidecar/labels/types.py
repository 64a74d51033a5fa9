"""Values that cross the label modules: stored predictions, lookups and their results."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import NamedTuple


class StoredPrediction(NamedTuple):
    """One row of one request, as the store keeps it until its label comes."""

    request_id: str
    row: int
    model: str
    version: str
    value: float  # predicted class index (classification) or predicted value (regression)
    time: float  # wall-clock seconds when the prediction was made
    expires: float  # wall-clock seconds when it stops waiting for a label
    shadow_version: str = ""  # the shadow version whose prediction rides along ("": none)
    shadow_value: float = math.nan  # the shadow version's prediction of the same row


class ShadowRow(NamedTuple):
    """The shadow version's prediction of one row, to be kept beside the primary's."""

    request_id: str
    row: int
    model: str
    version: str  # the primary version that answered the request
    shadow_version: str
    value: float  # predicted class index (classification) or predicted value (regression)


class Lookup(NamedTuple):
    """A label's key and the model it claims: what the store is asked to take."""

    request_id: str
    row: int
    model: str
    actual: float = math.nan  # the label (class index or value), kept for a late shadow


class Found(enum.Enum):
    """What the store found for one lookup."""

    MATCHED = "matched"  # pending and not expired: now marked labelled
    UNKNOWN = "unknown"  # no such key (never stored, evicted, or forgotten)
    EXPIRED = "expired"  # the prediction's TTL passed before the label came
    DUPLICATE = "duplicate"  # already labelled
    WRONG_MODEL = "wrong_model"  # the key belongs to another model: left untouched
    BAD_ROW = "bad_row"  # the request exists (row 0) but has no such row


@dataclass(frozen=True, slots=True)
class TakeResult:
    """The answer to one Lookup; ``prediction`` is set when MATCHED."""

    found: Found
    prediction: StoredPrediction | None = None
    other_model: str = ""  # WRONG_MODEL: the model that made the prediction


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one expiry pass did, per model."""

    expired: dict[str, int]  # pending predictions that reached their TTL
    evicted: dict[str, int]  # pending predictions dropped to keep the bound
    pending: dict[str, int]  # pending predictions left, per model


@dataclass(frozen=True, slots=True)
class PutResult:
    """What one write did besides storing: pending predictions evicted for room."""

    evicted: dict[str, int]


@dataclass(frozen=True, slots=True)
class AttachResult:
    """What one write of shadow predictions did.

    ``attached``: kept beside their primary prediction, which still waits for
    its label. ``labelled``: the primary's label came before the shadow's
    prediction was written; each is returned with that label to be counted
    now. ``orphaned``: no primary prediction of the same model and version
    was waiting or labelled under the key (it was never kept, was evicted,
    expired or forgotten, or the request id was reused): not kept, per model.
    """

    attached: list[ShadowRow]
    labelled: list[tuple[ShadowRow, float]]
    orphaned: dict[str, int]
