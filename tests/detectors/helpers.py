"""Helpers shared by the detector tests."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def quietly(fn: Callable[[], T]) -> T:
    """Call a scipy reference implementation, ignoring its own warnings.

    The code under test runs with warnings as errors; scipy's reference
    implementations may warn on edge cases we compare against (e.g. its exact
    KS falling back to asymptotics), which is not what these tests check.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()
