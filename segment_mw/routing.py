"""Destination selection by Segment's ``integrations`` object (SPEC §4).

``All`` (matched case-insensitively) sets the default, destination names match exactly,
an object value means enabled with options, and ``"Segment.io": false`` keeps a message
from Segment. A Segment destination is only turned off by its own name or ``Segment.io``:
``All: false`` is applied by Segment itself to the destinations behind it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

SEGMENT_KEY = "Segment.io"


def _enabled(value: Any) -> bool:
    return value is not False and value is not None and value != 0


def is_enabled(integrations: Mapping[str, Any] | None, name: str, kind: str) -> bool:
    """Whether a destination ``name`` of type ``kind`` receives a message."""
    if not integrations:
        return True
    if kind == "segment":
        if name in integrations and not _enabled(integrations[name]):
            return False
        return _enabled(integrations.get(SEGMENT_KEY, True))
    if name in integrations:
        return _enabled(integrations[name])
    for key, value in integrations.items():
        if key.lower() == "all":
            return _enabled(value)
    return True


class Router:
    """Routes messages by their serialised integrations object, parsing each distinct one once."""

    def __init__(self, destinations: Mapping[str, str], max_cached: int = 4096) -> None:
        self.kinds = dict(destinations)  # name -> type
        self._cache: dict[bytes, frozenset[str]] = {}
        self._max_cached = max_cached

    def targets(self, integrations: bytes | None) -> frozenset[str] | None:
        """The destination names a message goes to; None means all of them."""
        if integrations is None:
            return None
        found = self._cache.get(integrations)
        if found is None:
            try:
                parsed = orjson.loads(integrations)
            except orjson.JSONDecodeError:
                parsed = {}
            if not isinstance(parsed, dict):
                parsed = {}
            found = frozenset(n for n, k in self.kinds.items() if is_enabled(parsed, n, k))
            if len(self._cache) >= self._max_cached:
                self._cache.clear()
            self._cache[integrations] = found
        return found
