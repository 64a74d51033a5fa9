"""Build the Grafana dashboards as code and write their JSON into the Helm chart.

    python -m exporters.dashboards.build           # rewrite the JSON files
    python -m exporters.dashboards.build --check   # exit 1 when they are stale

The chart ships each ``helm/inference-sidecar/files/dashboards/<name>.json`` as a
ConfigMap labelled for Grafana's dashboard sidecar. The JSON is generated here,
with grafana-foundation-sdk (a dev dependency), and committed; a test fails
when it differs from what this module builds. Queries use only metric names of
docs/metrics.md (tests/helm/metric_names.py lists those still pending).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "helm" / "inference-sidecar" / "files" / "dashboards"

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
#: Selectors of the template variables; families without `version` use MODEL.
SEL = 'model=~"$model", version=~"$version"'
MODEL = 'model=~"$model"'
RATE = "$__rate_interval"
#: Window of quality figures (accuracy, precision, recall): long enough to hold labels.
QUALITY_WINDOW = "1h"

Panel = Builder[model.Panel]

#: Query of the version variable. A shadow version (insight.shadow) is not served,
#: so it has no sidecar_model_ready series, but the label join scores it under its
#: own `version` and creates its sidecar_predictions_recorded_total series at zero
#: when the primary loads (classifiers and regressors alike). Grafana's Prometheus
#: data source takes any series selector as the first argument of label_values
#: (its metric_find_query.ts sends it as match[] to /api/v1/label/version/values,
#: or /api/v1/series on Prometheus without that API), so `__name__=~` lists both.
VERSION_VALUES = (
    'label_values({__name__=~"sidecar_model_ready|sidecar_predictions_recorded_total", '
    'model=~"$model"}, version)'
)


def _query(expr: str, legend: str = "", *, instant: bool = False) -> prometheus.Dataquery:
    query = prometheus.Dataquery().expr(expr).legend_format(legend or "__auto")
    if instant:
        query = query.instant().format(PromQueryFormat.TABLE)
    return query


def _series(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[prometheus.Dataquery],
    *,
    width: int = 8,
    stacked: bool = False,
    log: bool = False,
) -> Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(8)
        .fill_opacity(10)
        .line_width(1)
    )
    if stacked:
        panel = panel.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    if log:
        panel = panel.scale_distribution(
            common_builders.ScaleDistributionConfig().type(common.ScaleDistribution.LOG).log(10)
        )
    for query in queries:
        panel = panel.with_target(query)
    return panel


def _stat(title: str, description: str, unit: str, query: prometheus.Dataquery) -> Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(8)
        .height(8)
        .with_target(query)
    )


def _table(
    title: str,
    description: str,
    queries: Sequence[prometheus.Dataquery],
    transformations: Sequence[model.DataTransformerConfig],
    *,
    width: int = 12,
) -> Panel:
    panel = table.Panel().title(title).description(description).datasource(DATASOURCE)
    panel = panel.span(width).height(10)
    for query in queries:
        panel = panel.with_target(query)
    for transformation in transformations:
        panel = panel.with_transformation(transformation)
    return panel


def _quantile(
    q: float, histogram: str, selector: str, by: str = "model", window: str = RATE
) -> str:
    return (
        f"histogram_quantile({q}, sum by ({by}, le) "
        f"(rate({histogram}_bucket{{{selector}}}[{window}])))"
    )


def _variables(board: dash.Dashboard) -> dash.Dashboard:
    board = board.with_variable(
        dash.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
    )
    model_var = (
        dash.QueryVariable("model")
        .label("model")
        .datasource(DATASOURCE)
        .query("label_values(sidecar_model_ready, model)")
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )
    version_var = (
        dash.QueryVariable("version")
        .label("version")
        .datasource(DATASOURCE)
        .query(VERSION_VALUES)
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.NUMERICAL_DESC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )
    return board.with_variable(model_var).with_variable(version_var)


def _dashboard(uid: str, title: str, description: str) -> dash.Dashboard:
    board = (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["inference-sidecar"])
        .time("now-3h", "now")
        .refresh("30s")
        .timezone("browser")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .readonly()
    )
    return _variables(board)


def overview() -> dash.Dashboard:
    """Serving: traffic, errors, latency, throughput, batching, load."""
    board = _dashboard(
        "inference-sidecar-overview",
        "inference-sidecar / serving",
        "Requests, errors, latency, throughput and batching of the models an "
        "inference-sidecar serves (docs/metrics.md).",
    )
    requests = f"sidecar_inference_requests_total{{{SEL}}}"
    board = board.with_row(dash.Row("Traffic"))
    board = board.with_panel(
        _series(
            "Requests/s",
            "ModelInfer requests answered per second, by status code.",
            "reqps",
            [_query(f"sum by (model, code) (rate({requests}[{RATE}]))", "{{model}} {{code}}")],
        )
    )
    board = board.with_panel(
        _series(
            "Error ratio",
            "Share of requests answered with a status other than OK.",
            "percentunit",
            [
                _query(
                    f'sum by (model) (rate(sidecar_inference_requests_total{{{SEL}, code!="OK"}}'
                    f"[{RATE}])) / sum by (model) (rate({requests}[{RATE}]))",
                    "{{model}}",
                )
            ],
        )
    )
    board = board.with_panel(
        _stat(
            "Model versions ready",
            "1 when a model version is loaded and serving, per pod.",
            "none",
            _query(f"sidecar_model_ready{{{SEL}}}", "{{model}} v{{version}} {{pod}}"),
        )
    )
    board = board.with_row(dash.Row("Latency"))
    board = board.with_panel(
        _series(
            "Request latency p50 / p99",
            "Server-side end-to-end time of successful ModelInfer requests.",
            "s",
            [
                _query(_quantile(0.5, "sidecar_request_duration_seconds", SEL), "p50 {{model}}"),
                _query(_quantile(0.99, "sidecar_request_duration_seconds", SEL), "p99 {{model}}"),
            ],
            width=12,
        )
    )
    board = board.with_panel(
        _series(
            "Queue and compute p99",
            "Time waiting in the batcher, and model execution time per batch.",
            "s",
            [
                _query(_quantile(0.99, "sidecar_queue_duration_seconds", SEL), "queue {{model}}"),
                _query(
                    _quantile(0.99, "sidecar_compute_duration_seconds", SEL), "compute {{model}}"
                ),
            ],
            width=12,
        )
    )
    board = board.with_row(dash.Row("Throughput and load"))
    board = board.with_panel(
        _series(
            "Rows/s",
            "Rows (batch dimension) inferred per second.",
            "short",
            [
                _query(
                    f"sum by (model) (rate(sidecar_inference_samples_total{{{SEL}}}[{RATE}]))",
                    "{{model}}",
                )
            ],
            width=6,
        )
    )
    board = board.with_panel(
        _series(
            "Mean batch size",
            "Rows per executed batch.",
            "short",
            [
                _query(
                    f"sum by (model) (rate(sidecar_batch_size_sum{{{SEL}}}[{RATE}])) / "
                    f"sum by (model) (rate(sidecar_batch_size_count{{{SEL}}}[{RATE}]))",
                    "{{model}}",
                )
            ],
            width=6,
        )
    )
    board = board.with_panel(
        _series(
            "In flight",
            "Requests inside a model version now (queued or executing).",
            "short",
            [_query(f"sum by (model) (sidecar_inflight_requests{{{SEL}}})", "{{model}}")],
            width=6,
        )
    )
    board = board.with_panel(
        _series(
            "Queue depth",
            "Requests waiting in the batcher for a batch now (0 without batching); "
            "a signal to scale on.",
            "short",
            [_query(f"sum by (model) (sidecar_queue_depth{{{SEL}}})", "{{model}}")],
            width=6,
        )
    )
    board = board.with_row(dash.Row("Refusals and stalls"))
    board = board.with_panel(
        _series(
            "Refused/s",
            "Requests refused, by reason: limits (request_too_large: messages over "
            "grpc.max_message_bytes), full queue, stalled model, client deadline passed, "
            "shutdown (before the model ran), and answers over grpc.max_message_bytes "
            "(response_too_large, after it ran).",
            "reqps",
            [
                _query(
                    f"sum by (model, reason) (rate(sidecar_rejected_requests_total{{{MODEL}}}"
                    f"[{RATE}]))",
                    "{{model}} {{reason}}",
                )
            ],
            width=12,
        )
    )
    return board.with_panel(
        _series(
            "Model calls stalled / timed out / abandoned",
            "Overdue: calls past the model's timeout that have not returned now (above 0 the "
            "version is stalled and refuses requests; SidecarModelStalled). Timed out and "
            "abandoned (by reason: timeout, deadline, cancelled): calls per interval.",
            "short",
            [
                _query(
                    f"sum by (model, version) (sidecar_model_overdue_calls{{{SEL}}})",
                    "{{model}} v{{version}} overdue",
                ),
                _query(
                    "sum by (model, version) "
                    f"(increase(sidecar_model_timeouts_total{{{SEL}}}[{RATE}]))",
                    "{{model}} v{{version}} timed out",
                ),
                _query(
                    "sum by (model, version, reason) "
                    f"(increase(sidecar_model_calls_abandoned_total{{{SEL}}}[{RATE}]))",
                    "{{model}} v{{version}} abandoned: {{reason}}",
                ),
            ],
            width=12,
        )
    )


def _class_outcomes(outcomes: str) -> str:
    # by version too: a shadow version is scored on the same labels (docs/labels.md)
    return (
        f"sum by (model, version, class) (increase(sidecar_class_outcomes_total"
        f'{{{SEL}, outcome=~"{outcomes}"}}[{QUALITY_WINDOW}]))'
    )


def quality() -> dash.Dashboard:
    """Model quality: drift, outputs, delayed-label accuracy, GPU."""
    board = _dashboard(
        "inference-sidecar-quality",
        "inference-sidecar / model quality",
        "Drift, output distributions, accuracy from delayed labels and GPU use of the "
        "models an inference-sidecar serves (docs/metrics.md).",
    )
    board = board.with_row(dash.Row("Drift"))
    board = board.with_panel(
        _series(
            "Drift detected",
            "1 while the last evaluation found drift after multiple-testing correction.",
            "none",
            [
                _query(
                    f"max by (model, version, scope) (sidecar_drift_detected{{{SEL}}})",
                    "{{model}} v{{version}} {{scope}}",
                )
            ],
        )
    )
    board = board.with_panel(
        _series(
            "Drifted features",
            "Features flagged after correction in the last evaluation.",
            "short",
            [
                _query(
                    f"max by (model, version, scope) (sidecar_drift_features_drifted{{{SEL}}})",
                    "{{model}} v{{version}} {{scope}}",
                )
            ],
        )
    )
    board = board.with_panel(
        _series(
            "p-value per feature",
            "p-value of each feature's test in the last evaluation (lowest across pods).",
            "none",
            [
                _query(
                    f"min by (model, feature, test) (sidecar_drift_p_value{{{SEL}}})",
                    "{{model}} {{feature}} {{test}}",
                )
            ],
            log=True,
        )
    )
    board = board.with_panel(
        _series(
            "Fleet drift z-score per feature",
            "All replicas' rows of the last hour against the reference's bins: the "
            "chi-squared statistic as a z-score (about N(0, 1) without drift; "
            "SidecarFleetDrift fires above 4.75 with PSI >= 0.1). Recording rules of the chart.",
            "none",
            [
                _query(
                    f"max by (model, scope, feature) (sidecar:drift_fleet_chi2_z:1h{{{SEL}}})",
                    "{{model}} {{scope}} {{feature}}",
                )
            ],
        )
    )
    board = board.with_panel(
        _series(
            "Fleet PSI per feature",
            "Population stability index of all replicas' rows of the last hour against the "
            "reference (0.1: moderate change, 0.25: major).",
            "none",
            [
                _query(
                    f"max by (model, scope, feature) (sidecar:drift_fleet_psi:1h{{{SEL}}})",
                    "{{model}} {{scope}} {{feature}}",
                )
            ],
        )
    )
    board = board.with_panel(
        _series(
            "Drift evaluations",
            "Windows evaluated per hour, and windows skipped (too few rows at a flush, errors).",
            "short",
            [
                _query(
                    "sum by (model, scope) "
                    f"(increase(sidecar_drift_evaluations_total{{{SEL}}}[1h]))",
                    "{{model}} {{scope}} evaluated",
                ),
                _query(
                    "sum by (model, reason) "
                    f"(increase(sidecar_drift_windows_skipped_total{{{SEL}}}[1h]))",
                    "{{model}} skipped: {{reason}}",
                ),
            ],
        )
    )
    board = board.with_row(dash.Row("Outputs"))
    predictions = f"sidecar_predictions_total{{{SEL}}}"
    board = board.with_panel(
        _series(
            "Predicted classes",
            "Share of each predicted class.",
            "percentunit",
            [
                _query(
                    f"sum by (model, class) (rate({predictions}[{RATE}])) / ignoring (class) "
                    f"group_left sum by (model) (rate({predictions}[{RATE}]))",
                    "{{model}} {{class}}",
                )
            ],
            stacked=True,
        )
    )
    board = board.with_panel(
        _series(
            "Top-class confidence p10 / p50",
            "Probability of the predicted class.",
            "percentunit",
            [
                _query(_quantile(0.1, "sidecar_prediction_confidence", SEL), "p10 {{model}}"),
                _query(_quantile(0.5, "sidecar_prediction_confidence", SEL), "p50 {{model}}"),
            ],
        )
    )
    board = board.with_panel(
        _series(
            "Non-finite outputs",
            "NaN or Inf elements in outputs per interval.",
            "short",
            [
                _query(
                    f"sum by (model, output) (increase(sidecar_nonfinite_outputs_total{{{SEL}}}"
                    f"[{RATE}]))",
                    "{{model}} {{output}}",
                )
            ],
        )
    )
    board = board.with_row(dash.Row(f"Delayed labels (windows of {QUALITY_WINDOW})"))
    labeled = f"sidecar_labeled_predictions_total{{{SEL}}}"
    board = board.with_panel(
        _series(
            "Accuracy",
            "Share of labelled predictions that were right, per version: a shadow version "
            "(insight.shadow) is scored on the same labels under its own version.",
            "percentunit",
            [
                _query(
                    f"sum by (model, version) (increase(sidecar_labeled_predictions_total"
                    f'{{{SEL}, correct="true"}}[{QUALITY_WINDOW}])) / '
                    f"sum by (model, version) (increase({labeled}[{QUALITY_WINDOW}]))",
                    "{{model}} v{{version}}",
                )
            ],
        )
    )
    board = board.with_panel(
        _series(
            "Label delay p50 / p90",
            "Time from a prediction to its label.",
            "s",
            [
                _query(
                    _quantile(0.5, "sidecar_label_delay_seconds", MODEL, window=QUALITY_WINDOW),
                    "p50 {{model}}",
                ),
                _query(
                    _quantile(0.9, "sidecar_label_delay_seconds", MODEL, window=QUALITY_WINDOW),
                    "p90 {{model}}",
                ),
            ],
        )
    )
    board = board.with_panel(
        _series(
            "Pending predictions",
            "Predictions waiting for their label (a shared Redis store counted once), and "
            "labels received by outcome.",
            "short",
            [
                _query(
                    # A shared (Redis) store reports the same count on every replica:
                    # once per store; local stores (memory, SQLite) add up.
                    f'sum by (model) (sidecar_pending_predictions{{{MODEL}, store="local"}} '
                    "or max by (namespace, model, store) "
                    f'(sidecar_pending_predictions{{{MODEL}, store!="local"}}))',
                    "{{model}}",
                ),
                _query(
                    f"sum by (model, outcome) (increase(sidecar_labels_received_total{{{MODEL}}}"
                    f"[{RATE}]))",
                    "{{model}} labels {{outcome}}",
                ),
            ],
        )
    )
    tp = _class_outcomes("tp")
    board = board.with_panel(
        _table(
            "Precision, recall and F1 per class",
            f"Over the last {QUALITY_WINDOW}, per model version and class: precision "
            "tp/(tp+fp), recall tp/(tp+fn), F1 2tp/(2tp+fp+fn).",
            [
                _query(f"{tp} / {_class_outcomes('tp|fp')}", "precision", instant=True),
                _query(f"{tp} / {_class_outcomes('tp|fn')}", "recall", instant=True),
                _query(f"2 * {tp} / ({tp} + {_class_outcomes('tp|fp|fn')})", "F1", instant=True),
            ],
            [model.DataTransformerConfig(id_val="merge", options={})],
        )
    )
    # The "grouping to matrix" transformation takes one row field and one column field;
    # any other label is summed away before it. Grouping by (actual, predicted) alone
    # would add up the matrices of every model and version selected: with version
    # "All", a shadow version's predictions (scored on the same labels) on top of the
    # primary's. Repeating the panel per $version would still merge models under
    # model "All", so the query keeps model and version and prefixes them to the row
    # key, `actual` ("digits v1: seven"): one block of rows per model version, correct
    # for any selection, in one panel.
    confusion = (
        "sum by (model, version, actual, predicted) "
        f"(increase(sidecar_confusion_matrix_total{{{SEL}}}[{QUALITY_WINDOW}]))"
    )
    board = board.with_panel(
        _table(
            "Confusion matrix",
            f"Labelled predictions over the last {QUALITY_WINDOW}: a row per model version "
            "and actual class, a column per predicted class.",
            [
                _query(
                    f'label_join(label_join({confusion}, "actual", ": ", "version", "actual"), '
                    '"actual", " v", "model", "actual")',
                    instant=True,
                )
            ],
            [
                model.DataTransformerConfig(
                    id_val="groupingToMatrix",
                    options={
                        "rowField": "actual",
                        "columnField": "predicted",
                        "valueField": "Value",
                    },
                )
            ],
        )
    )
    board = board.with_row(dash.Row("GPU"))
    board = board.with_panel(
        _series(
            "GPU memory used",
            "Device memory in use (all processes) of each GPU of each pod.",
            "bytes",
            [
                _query("sidecar_gpu_memory_used_bytes", "{{pod}} gpu {{gpu}} used"),
                _query("sidecar_gpu_memory_total_bytes", "{{pod}} gpu {{gpu}} total"),
            ],
        )
    )
    board = board.with_panel(
        _series(
            "GPU utilisation",
            "Fraction of time a kernel ran.",
            "percentunit",
            [_query("sidecar_gpu_utilization_ratio", "{{pod}} gpu {{gpu}}")],
        )
    )
    return board.with_panel(
        _series(
            "GPU power",
            "Power draw of each GPU.",
            "watt",
            [_query("sidecar_gpu_power_watts", "{{pod}} gpu {{gpu}}")],
        )
    )


#: File name (without .json) → builder of each dashboard.
DASHBOARDS: dict[str, Callable[[], dash.Dashboard]] = {
    "overview": overview,
    "quality": quality,
}


def _finish(board: model.Dashboard) -> model.Dashboard:
    """Number the panels and their queries as Grafana expects (ids 1…, refIds A…)."""
    for number, panel in enumerate(board.panels or [], start=1):
        panel.id_val = number
        if isinstance(panel, model.Panel):
            if panel.options is None:
                panel.options = {}
            for index, target in enumerate(panel.targets or []):
                target.ref_id = chr(ord("A") + index)  # type: ignore[attr-defined]
    return board


def render() -> dict[str, str]:
    """Each dashboard's file name and JSON text."""
    return {
        f"{name}.json": json.dumps(
            _finish(build().build()), cls=JSONEncoder, indent=2, sort_keys=True
        )
        + "\n"
        for name, build in DASHBOARDS.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Write the dashboards, or with ``--check`` report stale ones (exit 1)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = OUT_DIR / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    known = set(render())
    extra = [p for p in OUT_DIR.glob("*.json") if p.name not in known]
    for path in stale + extra:
        print(f"{'stale' if args.check else 'wrote'}: {path.relative_to(ROOT)}")
    if extra:
        print("not built here, remove them: " + ", ".join(p.name for p in extra))
    return 1 if (args.check and stale) or extra else 0


if __name__ == "__main__":
    sys.exit(main())
