"""Errors of the label join.

    SidecarError (sidecar.errors)
    ├── StoreError                     the prediction store failed (I/O, connection)
    └── RequestError
        └── UnavailableError
            └── StoreUnavailableError  a label call found the store down (UNAVAILABLE)

Store backends wrap their library's exceptions (sqlite3, redis) in
``StoreError`` so the worker handles one type; a label call that hits one is
answered UNAVAILABLE so the client retries, and no label of it is counted.
"""

from __future__ import annotations

from sidecar.errors import SidecarError, UnavailableError


class StoreError(SidecarError):
    """The prediction store could not complete an operation; names the backend."""


class StoreUnavailableError(UnavailableError):
    """Labels cannot be joined now because the store failed; the client should retry."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="label_store_unavailable")
