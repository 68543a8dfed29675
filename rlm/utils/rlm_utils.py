"""Small helpers shared by the loop and the logger."""

from __future__ import annotations

from typing import Any


def filter_sensitive_keys(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``kwargs`` without the entries whose name mentions both "api" and "key"."""
    return {
        name: value
        for name, value in kwargs.items()
        if not ("api" in name.lower() and "key" in name.lower())
    }


__all__ = ["filter_sensitive_keys"]
