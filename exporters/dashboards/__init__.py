"""Grafana dashboards built as code (``python -m exporters.dashboards.build``)."""
