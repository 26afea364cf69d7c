"""A pytest plugin (registered by entry point): fixtures that capture the events a test emits.

``segment_events`` records every message emitted while the test runs, parsed back from the
exact bytes that were queued, so tests of an app can assert on what it tracks::

    def test_checkout(client, segment_events):
        client.post("/checkout/")
        assert segment_events.of_type("track")[0]["event"] == "Order Completed"
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from .client import get_client
from .events import Entry, complete


class CapturedEvents(list[dict[str, Any]]):
    """The messages emitted during a test, oldest first, as dicts."""

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[Entry] = []

    def __call__(self, entry: Entry) -> None:
        self.entries.append(entry)
        # Parsed from the message as it will be delivered: an event of a request is queued
        # with the request's facts, and made whole only where it is delivered.
        self.append(orjson.loads(complete(entry.body)))

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self if e["type"] == type_]

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self if e.get("event") == event or e.get("name") == event]


@pytest.fixture
def segment_events() -> Iterator[CapturedEvents]:
    """Capture the messages emitted through the current client during the test."""
    captured = CapturedEvents()
    client = get_client()
    client.listeners.append(captured)
    try:
        yield captured
    finally:
        if captured in client.listeners:
            client.listeners.remove(captured)
