"""LabelJoiner: every kind of label gets its own outcome and only configured metric labels."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry

from exporters.labels import OUTCOMES, LabelMetrics
from sidecar.config import MonitoringConfig
from sidecar.labels.errors import StoreError
from sidecar.labels.join import Label, LabelJoiner, ModelSpec
from sidecar.labels.types import StoredPrediction
from tests.labels.fakes import FlakyStore
from tests.labels.helpers import label_values, sample

CLASSES = ("cat", "dog", "eel")
NOW = 50_000.0


def make(max_row: int = 99) -> tuple[LabelJoiner, FlakyStore, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = LabelMetrics(registry, (1.0, 10.0, 100.0), (0.5, 1.0, 2.0), "flaky")
    store = FlakyStore()
    joiner = LabelJoiner(store, metrics, max_row=max_row, clock=lambda: NOW)
    classify = MonitoringConfig.model_validate(
        {
            "task": "classification",
            "classification": {"output": "p", "class_names": list(CLASSES)},
        }
    )
    regress = MonitoringConfig.model_validate(
        {
            "task": "regression",
            "regression": {"outputs": ["y"]},
            "labels": {"min_value": 0.0, "max_value": 10.0},
        }
    )
    for name, monitoring in (("clf", classify), ("reg", regress)):
        spec = ModelSpec.from_config(name, monitoring, 3600.0)
        assert spec is not None
        joiner.register(spec)
        metrics.prepare_model(name, "1", spec.class_names)
    joiner.known("plain")  # a configured model that takes no labels
    return joiner, store, registry


def put(store: FlakyStore, request_id: str, model: str, value: float, row: int = 0) -> None:
    made = NOW - 42.0
    store.put([StoredPrediction(request_id, row, model, "1", value, made, made + 3600)], made)


def test_spec_from_config() -> None:
    none = MonitoringConfig()
    assert ModelSpec.from_config("m", none, 10.0) is None
    off = MonitoringConfig.model_validate(
        {
            "task": "regression",
            "regression": {"outputs": ["a", "b"]},
            "labels": {"enabled": False},
        }
    )
    assert ModelSpec.from_config("m", off, 10.0) is None
    second = MonitoringConfig.model_validate(
        {
            "task": "regression",
            "regression": {"outputs": ["a", "b"]},
            "labels": {"output": "b", "ttl_seconds": 5},
        }
    )
    spec = ModelSpec.from_config("m", second, 10.0)
    assert spec is not None and spec.output == "b" and spec.ttl_seconds == 5.0


@pytest.mark.parametrize(
    ("classes", "setting", "exported"),
    [(3, None, True), (50, None, True), (51, None, False), (51, True, True), (3, False, False)],
)
def test_confusion_matrix_by_default_only_for_few_classes(
    classes: int, setting: bool | None, exported: bool
) -> None:
    monitoring = MonitoringConfig.model_validate(
        {
            "task": "classification",
            "classification": {"output": "p", "class_names": [f"c{i}" for i in range(classes)]},
            "labels": {"confusion_matrix": setting},
        }
    )
    spec = ModelSpec.from_config("m", monitoring, 10.0)
    assert spec is not None and spec.confusion_matrix is exported


def test_classification_match_counts_the_pair() -> None:
    joiner, store, registry = make()
    put(store, "r1", "clf", 1.0)  # predicted dog
    put(store, "r2", "clf", 2.0)  # predicted eel
    outcomes = joiner.join(
        [
            Label("r1", "clf", 0, "class_name", "cat"),
            Label("r2", "clf", 0, "class_index", 2),
        ]
    )
    assert [o.outcome for o in outcomes] == ["matched", "matched"]
    assert sample(registry, "sidecar_labeled_predictions_total", model="clf", version="1",
                  correct="true") == 1  # fmt: skip
    assert sample(registry, "sidecar_labeled_predictions_total", model="clf", version="1",
                  correct="false") == 1  # fmt: skip
    confusion = {"model": "clf", "version": "1", "actual": "cat", "predicted": "dog"}
    assert sample(registry, "sidecar_confusion_matrix_total", **confusion) == 1
    outcome = "sidecar_class_outcomes_total"
    assert (
        sample(registry, outcome, model="clf", version="1", **{"class": "cat"}, outcome="fn") == 1
    )
    assert (
        sample(registry, outcome, model="clf", version="1", **{"class": "dog"}, outcome="fp") == 1
    )
    assert (
        sample(registry, outcome, model="clf", version="1", **{"class": "eel"}, outcome="tp") == 1
    )
    assert sample(registry, "sidecar_label_delay_seconds_sum", model="clf") == 84.0
    assert sample(registry, "sidecar_labels_received_total", model="clf", outcome="matched") == 2


def test_regression_match_counts_the_error() -> None:
    joiner, store, registry = make()
    put(store, "r1", "reg", 2.5)
    put(store, "r2", "reg", 4.0)
    assert [o.outcome for o in joiner.join([
        Label("r1", "reg", 0, "number", 1.0), Label("r2", "reg", 0, "number", 7.0),
    ])] == ["matched", "matched"]  # fmt: skip
    assert sample(registry, "sidecar_label_squared_error_total", model="reg", version="1") == 11.25
    assert sample(registry, "sidecar_label_absolute_error_sum", model="reg", version="1") == 4.5
    assert sample(registry, "sidecar_label_absolute_error_count", model="reg", version="1") == 2
    assert sample(registry, "sidecar_label_absolute_error_bucket", model="reg", version="1",
                  le="2.0") == 1  # fmt: skip


BAD = [
    (Label("", "clf", 0, "class_name", "cat"), "request_id is empty"),
    (Label("r1", "nope", 0, "class_name", "cat"), "takes no labels here"),
    (Label("r1", "plain", 0, "class_name", "cat"), "takes no labels here"),
    (Label("r1", "clf", 0, "class_name", "cow"), "not a class of model"),
    (Label("r1", "clf", 0, "class_index", 3), "out of range"),
    (Label("r1", "clf", 0, "class_index", -1), "out of range"),
    (Label("r1", "clf", 0, "number", 1.0), "is a classifier"),
    (Label("r1", "clf", 0, None, None), "got no value"),
    (Label("r1", "clf", 100, "class_name", "cat"), "max_batch_rows = 100"),
    (Label("r1", "clf", 5, "class_name", "cat"), "has no row 5"),
    (Label("r1", "reg", 0, "number", 1.0), "was predicted by model 'clf', not 'reg'"),
    (Label("r9", "reg", 0, "number", math.nan), "finite"),
    (Label("r9", "reg", 0, "number", math.inf), "finite"),
    (Label("r9", "reg", 0, "number", 11.0), "above max_value"),
    (Label("r9", "reg", 0, "number", -1.0), "below min_value"),
    (Label("r9", "reg", 0, "class_name", "cat"), "is a regressor"),
]


@pytest.mark.parametrize(("label", "why"), BAD, ids=[why for _, why in BAD])
def test_bad_label_is_invalid_alone(label: Label, why: str) -> None:
    joiner, store, registry = make()
    put(store, "r1", "clf", 0.0)
    put(store, "r9", "reg", 1.0)
    outcomes = joiner.join([label, Label("r1", "clf", 0, "class_name", "cat")])
    assert outcomes[0].outcome == "invalid"
    assert why in outcomes[0].detail
    assert outcomes[1].outcome == "matched"  # the rest of the batch is unaffected
    model = label.model if label.model in ("clf", "reg", "plain") else ""
    assert sample(registry, "sidecar_labels_received_total", model=model, outcome="invalid") == 1


def test_unknown_expired_and_duplicate() -> None:
    joiner, store, registry = make()
    made = NOW - 100
    store.put([StoredPrediction("old", 0, "clf", "1", 0.0, made, made + 10)], made)
    put(store, "r1", "clf", 0.0)
    batch = [
        Label("never", "clf", 0, "class_name", "cat"),
        Label("old", "clf", 0, "class_name", "cat"),
        Label("r1", "clf", 0, "class_name", "cat"),
        Label("r1", "clf", 0, "class_name", "dog"),
    ]
    assert [o.outcome for o in joiner.join(batch)] == [
        "unknown_id",
        "expired",
        "matched",
        "duplicate",
    ]
    for outcome in ("unknown_id", "expired", "matched", "duplicate"):
        assert sample(registry, "sidecar_labels_received_total", model="clf", outcome=outcome) == 1


def test_junk_never_makes_new_label_values() -> None:
    joiner, store, registry = make()
    put(store, "r1", "clf", 1.0)
    junk = [Label("r1", f"model-{i}", i, "class_name", f"class-{i}") for i in range(50)]
    junk += [Label("r1", "clf", 0, "class_name", f"class-{i}") for i in range(50)]
    assert {o.outcome for o in joiner.join(junk)} == {"invalid"}
    assert label_values(registry, "sidecar_labels_received_total", "model") == {
        "clf", "reg", "",
    }  # fmt: skip
    assert label_values(registry, "sidecar_labels_received_total", "outcome") == set(OUTCOMES)
    assert label_values(registry, "sidecar_class_outcomes_total", "class") == set(CLASSES)
    assert sample(registry, "sidecar_labels_received_total", model="", outcome="invalid") == 50


def test_a_store_failure_counts_nothing() -> None:
    joiner, store, registry = make()
    put(store, "r1", "clf", 1.0)
    store.broken = True
    with pytest.raises(StoreError):
        joiner.join([Label("r1", "clf", 0, "class_name", "cat"), Label("", "clf", 0, None, None)])
    for outcome in OUTCOMES:
        assert sample(registry, "sidecar_labels_received_total", model="clf", outcome=outcome) == 0
    store.broken = False  # the retry is counted once
    assert [o.outcome for o in joiner.join([Label("r1", "clf", 0, "class_name", "cat")])] == [
        "matched"
    ]
