"""Errors of the insight tools (convert, compare) that are not model-load errors.

    SidecarError (sidecar.errors)
    └── InsightError              a convert / compare run that cannot proceed
        ├── ConversionError       the exporter or quantiser failed
        ├── DataFileError         a data file that cannot be read as an array
        └── DataMismatchError     a data file does not fit a model's inputs

Problems found while a model loads (unknown layer names, a bad reference file)
are ``sidecar.errors.ModelLoadError``, with the ``InsightError`` message inside
where there was one: they fail that model's load like any other configuration
problem.
"""

from __future__ import annotations

from sidecar.errors import SidecarError


class InsightError(SidecarError):
    """A convert or compare run that cannot proceed; the message says why."""


class ConversionError(InsightError):
    """Exporting to ONNX or quantising failed; names the model and the step."""


class DataFileError(InsightError):
    """A data file that cannot be read as an array; names the file and why."""


class DataMismatchError(InsightError):
    """A data or labels file does not fit a model; names the file, the model and both shapes."""
