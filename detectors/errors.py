"""Exceptions raised by :mod:`detectors`.

The hierarchy is small on purpose::

    DetectorError                   base of everything raised here
    ├── InvalidInputError           an argument is unusable (empty, non-finite, bad option);
    │                               also a ``ValueError``
    ├── InvalidReferenceError       reference data cannot back a detector at all
    └── ShapeMismatchError          a window's shape does not match the reference's

Per-feature problems (a constant column, an all-NaN window column) are *not*
exceptions: they become a ``skipped_reason`` in the result, so one bad feature
never hides the verdict on the others.
"""

from __future__ import annotations

__all__ = [
    "DetectorError",
    "InvalidInputError",
    "InvalidReferenceError",
    "ShapeMismatchError",
]


class DetectorError(Exception):
    """Base class for every error raised by :mod:`detectors`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(DetectorError, ValueError):
    """An argument cannot be used: empty, non-finite where finite is required, bad option."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class InvalidReferenceError(DetectorError):
    """The reference data cannot back a detector (wrong rank, no rows, no usable feature)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class ShapeMismatchError(DetectorError):
    """A window's shape does not match what the reference was fitted on."""

    def __init__(self, message: str, *, expected: tuple[int, ...], got: tuple[int, ...]) -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got
