"""Errors of the server, each knowing the gRPC status a client should see.

    SidecarError
    ├── ConfigError              invalid sidecar.yaml / config.yaml (start-up)
    ├── ModelLoadError           a model file that cannot be loaded (start-up)
    ├── MissingDependencyError   an optional backend that is not installed
    ├── BenchError               the load generator cannot run (server, model, data)
    └── RequestError             anything a client caused; carries a status
        ├── InvalidRequestError      INVALID_ARGUMENT
        ├── ModelNotFoundError       NOT_FOUND
        ├── ModelNotReadyError       UNAVAILABLE
        ├── UnavailableError         UNAVAILABLE (shutting down, overloaded)
        ├── ResourceExhaustedError   RESOURCE_EXHAUSTED (a limit was exceeded)
        ├── DeadlineExceededError    DEADLINE_EXCEEDED
        └── ModelExecutionError      INTERNAL (the model raised)

Status codes are named as strings (``grpc.StatusCode`` member names) so this
module stays free of grpc; the servicer maps them in one place.
"""

from __future__ import annotations

from typing import ClassVar

#: Longest piece of client-supplied text quoted back in an error message.
MAX_QUOTE = 64


def quote(value: object) -> str:
    """``repr`` of a client-supplied value, cut to ``MAX_QUOTE`` characters."""
    text = repr(value)
    if len(text) > MAX_QUOTE:
        text = text[: MAX_QUOTE - 3] + "..."
    return text


class SidecarError(Exception):
    """Base of every error this package raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(SidecarError):
    """A configuration file or value is invalid; names the file and field."""


class ModelLoadError(SidecarError):
    """A model could not be loaded; names the model, version and file."""


class MissingDependencyError(SidecarError):
    """An optional backend is needed but not installed; names the extra."""


class BenchError(SidecarError):
    """``inference-sidecar bench`` cannot go on: no server, unknown model, unusable data."""


class RequestError(SidecarError):
    """An error caused by one request; ``code`` is the gRPC status name.

    ``reason`` is set for refusals, requests that never reached the model: a
    short fixed word for counting (``too_many_rows``, ``concurrency_limit``,
    ``model_stalled``, ``deadline_passed``, ...), never client text. Failures
    after the model ran (INTERNAL, DEADLINE_EXCEEDED) are counted by code.
    """

    code: ClassVar[str] = "UNKNOWN"

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class InvalidRequestError(RequestError):
    """The request does not match the model (names, dtypes, shapes, bytes)."""

    code = "INVALID_ARGUMENT"


class ModelNotFoundError(RequestError):
    """No model (or version) of that name is in the repository."""

    code = "NOT_FOUND"


class ModelNotReadyError(RequestError):
    """The model exists but is not ready (failed to load, or unloading)."""

    code = "UNAVAILABLE"


class UnavailableError(RequestError):
    """The server cannot take the request now (shutting down, queue full)."""

    code = "UNAVAILABLE"

    def __init__(self, message: str, reason: str = "unavailable") -> None:
        super().__init__(message, reason)


class ResourceExhaustedError(RequestError):
    """A configured limit was exceeded; the message names the limit."""

    code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, reason: str = "too_large") -> None:
        super().__init__(message, reason)


class DeadlineExceededError(RequestError):
    """The request's deadline passed before the model answered."""

    code = "DEADLINE_EXCEEDED"


class ModelExecutionError(RequestError):
    """The model raised while running; the message carries its error."""

    code = "INTERNAL"
