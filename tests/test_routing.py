"""Destination selection by the integrations object (SPEC §4), unit and end to end."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

import segment_mw
from segment_mw.client import Client
from segment_mw.routing import Router, is_enabled
from segment_mw.testing import CapturedEvents

from .sink import Sink


@pytest.mark.parametrize(
    ("integrations", "expected"),
    [
        (None, True),
        ({}, True),
        ({"All": True}, True),
        ({"Mixpanel": False}, True),
        ({"X": False}, False),
        ({"X": True}, True),
        ({"All": False}, False),
        ({"All": False, "X": True}, True),
        ({"All": False, "X": {"session_id": 123}}, True),  # an object means enabled
        ({"All": False, "X": {}}, True),
        ({"all": False}, False),  # All matches in any case
        ({"ALL": False, "X": True}, True),
        ({"aLl": False}, False),
        ({"All": True, "X": False}, False),
        ({"all": True, "X": False}, False),
        ({"x": False}, True),  # destination names are case-sensitive
        ({"All": False, "x": True}, False),
        ({"X ": False}, True),
        ({"Segment.io": False}, True),  # only concerns the Segment destination
        ({"X": None}, False),
    ],
)
def test_is_enabled_for_an_ordinary_destination(
    integrations: dict[str, Any] | None, expected: bool
) -> None:
    assert is_enabled(integrations, "X", "http") is expected
    assert is_enabled(integrations, "X", "jsonl") is expected


@pytest.mark.parametrize(
    ("integrations", "expected"),
    [
        (None, True),
        ({"All": False}, True),  # Segment applies All downstream, to its own destinations
        ({"all": False, "Mixpanel": True}, True),
        ({"Segment.io": False}, False),
        ({"Segment.io": True}, True),
        ({"Segment.io": {}}, True),
        ({"All": False, "Segment.io": False}, False),
        ({"Segment": False}, False),  # its own configured name
        ({"Segment": {"opt": 1}}, True),
        ({"segment": False}, True),
        ({"segment.io": False}, True),
    ],
)
def test_is_enabled_for_the_segment_destination(
    integrations: dict[str, Any] | None, expected: bool
) -> None:
    assert is_enabled(integrations, "Segment", "segment") is expected


def test_router_targets() -> None:
    router = Router({"Segment": "segment", "A": "http", "file": "jsonl"})
    assert router.targets(None) is None  # no object: everyone
    assert router.targets(b'{"All":false,"A":true}') == {"Segment", "A"}
    assert router.targets(b'{"Segment.io":false}') == {"A", "file"}
    assert router.targets(b'{"all":false}') == {"Segment"}
    assert router.targets(b'{"file":{"x":1},"A":false}') == {"Segment", "file"}
    # Garbage is treated as no object rather than dropping the message.
    assert router.targets(b"not json") == {"Segment", "A", "file"}
    assert router.targets(b"[1]") == {"Segment", "A", "file"}


def test_router_caches_per_object_and_stays_bounded() -> None:
    router = Router({"A": "http"}, max_cached=3)
    for i in range(10):
        assert router.targets(b'{"B%d":false}' % i) == {"A"}
        assert len(router._cache) <= 3
    assert router.targets(b'{"A":false}') == frozenset()


# -- end to end ---------------------------------------------------------------------------

CASES: list[tuple[str, dict[str, Any] | None, set[str]]] = [
    ("plain", None, {"Segment", "A", "B", "file"}),
    ("not A", {"A": False}, {"Segment", "B", "file"}),
    ("only B", {"All": False, "B": True}, {"Segment", "B"}),
    ("only file", {"all": False, "file": {"option": 1}}, {"Segment", "file"}),
    ("not Segment", {"Segment.io": False}, {"A", "B", "file"}),
    ("by own name", {"Segment": False, "a": False}, {"A", "B", "file"}),
    ("none of ours", {"All": False}, {"Segment"}),
    ("downstream", {"Facebook Pixel": False}, {"Segment", "A", "B", "file"}),
    ("Mixpanel back", {"Mixpanel": True, "B": False}, {"Segment", "A", "file"}),
]


def test_each_destination_gets_exactly_its_events(
    configure: Callable[..., Client],
    redis_settings: dict[str, Any],
    sink: Sink,
    segment_events: CapturedEvents,
    tmp_path: Path,
) -> None:
    path = tmp_path / "routed.jsonl"
    configure(
        **redis_settings,
        ENQUEUE_TIMEOUT=5.0,  # no spill: the order of arrival is asserted
        INTEGRATIONS={"Mixpanel": False},
        DESTINATIONS={
            "Segment": {"type": "segment", "write_key": "wk", "host": sink.url},
            "A": {"type": "http", "url": f"{sink.url}/hooks/a"},
            "B": {"type": "http", "url": f"{sink.url}/hooks/b"},
            "file": {"type": "jsonl", "path": str(path)},
        },
    )
    for name, integrations, _ in CASES:
        segment_mw.track(name, {"case": name}, user_id="u1", integrations=integrations)
    assert segment_mw.flush(10)

    received: dict[str, list[dict[str, Any]]] = {"Segment": [], "A": [], "B": []}
    by_path = {"/v1/batch": "Segment", "/hooks/a": "A", "/hooks/b": "B"}
    for request in sink.requests:
        received[by_path[request.path]].extend(request.body["batch"])
    received["file"] = [json.loads(line) for line in path.read_bytes().splitlines()]

    for destination, messages in received.items():
        expected = [name for name, _, targets in CASES if destination in targets]
        assert [m["event"] for m in messages] == expected, destination

    # Segment gets each message as emitted: the integrations object unchanged, merged
    # with the configured default, for Segment to apply to the destinations behind it.
    emitted = {m["event"]: m for m in segment_events}
    for message in received["Segment"]:
        assert message == emitted[message["event"]]
        own = dict(next(i for n, i, _ in CASES if n == message["event"]) or {})
        assert message["integrations"] == {"Mixpanel": False, **own}


def test_a_message_for_no_destination_is_still_acknowledged(
    configure: Callable[..., Client], tmp_path: Path
) -> None:
    path = tmp_path / "x.jsonl"
    client = configure(
        IN_PROCESS_FLUSHER=False, DESTINATIONS={"file": {"type": "jsonl", "path": str(path)}}
    )
    segment_mw.track("Skipped", user_id="u1", integrations={"file": False})
    segment_mw.track("Kept", user_id="u1")
    assert segment_mw.flush(10)
    assert [orjson.loads(line)["event"] for line in path.read_bytes().splitlines()] == ["Kept"]
    status = client.status()
    assert status.depth == 0
    assert status.destinations["file"].delivered == 1
