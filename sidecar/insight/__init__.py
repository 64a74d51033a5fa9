"""Model insight: is the model itself behaving — inside, on odd inputs, across versions?

- ``activations``: taps on chosen layers of torch.export models; mean, std,
  zero and non-finite fractions, max abs on sampled batches (docs/insight.md);
  ``layer_drift``: drift of the per-row layer means against reference inputs.
- ``anomaly``: a per-row Mahalanobis score against reference data.
- ``shadow``: sampled requests also run on another version, off the request path.
- ``hub.Insight``: wires the three into a server (listener, model hook,
  response annotator and background service in one object).
- ``convert`` / ``compare``: the migration checks behind ``inference-sidecar
  convert`` and ``inference-sidecar compare``.

Importing this package imports nothing heavy; torch and onnx load on use.
"""
