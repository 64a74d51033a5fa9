"""Prometheus exporters: metric families, collectors and the /metrics endpoint.

- ``exporters.metrics``: serving and model families on an injected registry;
  ``ModelMetrics`` holds one model version's label children (the hot path).
- ``exporters.outputs``: output distributions (classes, confidence,
  regression values, NaN/Inf) analysed off the request path.
- ``exporters.histogram``: a histogram that observes whole numpy arrays.
- ``exporters.gpu``: NVML and torch.cuda numbers, read at scrape time.
- ``exporters.http``: ``/metrics`` and ``/healthz`` on their own threads.

Nothing registers at import, and this package never imports ``sidecar``.
"""
