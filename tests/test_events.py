"""The six calls build spec-exact messages (SPEC §1, §2, §4) and reject invalid ones."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import segment_mw
from segment_mw.client import Client
from segment_mw.testing import CapturedEvents

LIBRARY = {"name": "segment_mw", "version": segment_mw.__version__}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")
ENVELOPE = {"type", "messageId", "timestamp", "context", "integrations", "channel"}


@pytest.fixture
def client(configure: Callable[..., Client], tmp_path: Path) -> Client:
    return configure(
        DESTINATIONS={"file": {"type": "jsonl", "path": str(tmp_path / "events.jsonl")}},
        IN_PROCESS_FLUSHER=False,
    )


def only(events: CapturedEvents) -> dict[str, Any]:
    assert len(events) == 1, events
    return events[0]


def check_envelope(message: dict[str, Any], type_: str, message_id: str) -> None:
    assert message["type"] == type_
    assert message["messageId"] == message_id
    assert uuid.UUID(message_id).version == 4
    assert len(message_id) <= 100
    assert TIMESTAMP.match(message["timestamp"]), message["timestamp"]
    assert message["context"] == {"library": LIBRARY}
    assert message["integrations"] == {}
    assert message["channel"] == "server"


# -- the six types ------------------------------------------------------------------------


def test_track(client: Client, segment_events: CapturedEvents) -> None:
    mid = segment_mw.track("Order Completed", {"order_id": "o1", "revenue": 12}, user_id="u1")
    message = only(segment_events)
    check_envelope(message, "track", mid)
    assert set(message) == ENVELOPE | {"event", "properties", "userId"}
    assert message["event"] == "Order Completed"
    assert message["properties"] == {"order_id": "o1", "revenue": 12}
    assert message["userId"] == "u1"
    assert "anonymousId" not in message


def test_page(client: Client, segment_events: CapturedEvents) -> None:
    mid = segment_mw.page(
        "Pricing", {"path": "/pricing"}, category="Docs", anonymous_id="a1", user_id="u1"
    )
    message = only(segment_events)
    check_envelope(message, "page", mid)
    assert set(message) == ENVELOPE | {"name", "category", "properties", "userId", "anonymousId"}
    assert (message["name"], message["category"]) == ("Pricing", "Docs")
    assert message["properties"] == {"path": "/pricing"}
    assert (message["userId"], message["anonymousId"]) == ("u1", "a1")


def test_page_without_name_or_category(client: Client, segment_events: CapturedEvents) -> None:
    segment_mw.page(anonymous_id="a1")
    message = only(segment_events)
    assert set(message) == ENVELOPE | {"properties", "anonymousId"}
    assert message["properties"] == {}


def test_screen(client: Client, segment_events: CapturedEvents) -> None:
    mid = segment_mw.screen("Home", {"tab": "feed"}, category="Main", user_id="u1")
    message = only(segment_events)
    check_envelope(message, "screen", mid)
    assert set(message) == ENVELOPE | {"name", "category", "properties", "userId"}
    assert (message["name"], message["category"], message["properties"]) == (
        "Home",
        "Main",
        {"tab": "feed"},
    )


def test_identify(client: Client, segment_events: CapturedEvents) -> None:
    mid = segment_mw.identify("u1", {"email": "a@example.com", "plan": "pro"})
    message = only(segment_events)
    check_envelope(message, "identify", mid)
    assert set(message) == ENVELOPE | {"traits", "userId"}
    assert message["traits"] == {"email": "a@example.com", "plan": "pro"}
    assert message["userId"] == "u1"


def test_group(client: Client, segment_events: CapturedEvents) -> None:
    mid = segment_mw.group("g1", {"name": "Acme"}, user_id="u1")
    message = only(segment_events)
    check_envelope(message, "group", mid)
    assert set(message) == ENVELOPE | {"groupId", "traits", "userId"}
    assert (message["groupId"], message["traits"], message["userId"]) == (
        "g1",
        {"name": "Acme"},
        "u1",
    )


def test_alias(client: Client, segment_events: CapturedEvents) -> None:
    mid = segment_mw.alias("anon-1", "u1")
    message = only(segment_events)
    check_envelope(message, "alias", mid)
    assert set(message) == ENVELOPE | {"previousId", "userId"}
    assert (message["previousId"], message["userId"]) == ("anon-1", "u1")


def test_properties_and_traits_default_to_empty_objects(
    client: Client, segment_events: CapturedEvents
) -> None:
    segment_mw.track("Signed Up", user_id="u1")
    segment_mw.identify("u1")
    segment_mw.group("g1", user_id="u1")
    segment_mw.screen(user_id="u1")
    assert segment_events[0]["properties"] == {}
    assert segment_events[1]["traits"] == {}
    assert segment_events[2]["traits"] == {}
    assert segment_events[3]["properties"] == {}


# -- messageId ----------------------------------------------------------------------------


def test_message_ids_are_fresh_uuid4s(client: Client, segment_events: CapturedEvents) -> None:
    ids = [segment_mw.track("Clicked", user_id="u1") for _ in range(20)]
    assert len(set(ids)) == 20
    assert [e["messageId"] for e in segment_events] == ids
    assert all(uuid.UUID(i).version == 4 for i in ids)


def test_caller_message_id_is_kept(client: Client, segment_events: CapturedEvents) -> None:
    custom = "charge-ch_123-" + "x" * 86  # exactly 100 characters
    assert len(custom) == 100
    assert segment_mw.track("Charged", user_id="u1", message_id=custom) == custom
    assert segment_events[0]["messageId"] == custom


@pytest.mark.parametrize("bad", ["", "x" * 101, 123])
def test_bad_message_id_is_rejected(client: Client, bad: Any) -> None:
    with pytest.raises(segment_mw.InvalidEvent, match="messageId"):
        segment_mw.track("Charged", user_id="u1", message_id=bad)


# -- timestamp ----------------------------------------------------------------------------


def test_default_timestamp_is_now_in_utc_milliseconds(
    client: Client, segment_events: CapturedEvents
) -> None:
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    segment_mw.track("Clicked", user_id="u1")
    after = dt.datetime.now(dt.timezone.utc)
    stamp = segment_events[0]["timestamp"]
    assert TIMESTAMP.match(stamp)
    assert before <= dt.datetime.fromisoformat(stamp) <= after


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (dt.datetime(2024, 5, 1, 12, 30, 45, 123456), "2024-05-01T12:30:45.123+00:00"),
        (
            dt.datetime(2024, 5, 1, 14, 30, 45, 999999, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "2024-05-01T12:30:45.999+00:00",
        ),
        (
            dt.datetime(2024, 1, 1, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
            "2024-01-01T05:30:00.000+00:00",
        ),
        (dt.date(2024, 5, 1), "2024-05-01T00:00:00.000+00:00"),
        ("2024-05-01T12:30:45Z", "2024-05-01T12:30:45.000+00:00"),
        ("2024-05-01T12:30:45.5+01:00", "2024-05-01T11:30:45.500+00:00"),
        ("2024-05-01T12:30:45", "2024-05-01T12:30:45.000+00:00"),
    ],
)
def test_timestamp_is_utc_iso8601_with_milliseconds(
    client: Client, segment_events: CapturedEvents, given: Any, expected: str
) -> None:
    segment_mw.track("Charged", user_id="u1", timestamp=given)
    assert segment_events[0]["timestamp"] == expected


@pytest.mark.parametrize("bad", ["yesterday", "2024-13-01T00:00:00", 1714566645, 12.5])
def test_bad_timestamp_is_rejected(client: Client, bad: Any) -> None:
    with pytest.raises(segment_mw.InvalidEvent, match="timestamp"):
        segment_mw.track("Charged", user_id="u1", timestamp=bad)


# -- context, identity, integrations -------------------------------------------------------


def test_library_context_is_always_ours(client: Client, segment_events: CapturedEvents) -> None:
    segment_mw.track("Clicked", user_id="u1", context={"library": {"name": "other"}})
    assert segment_events[0]["context"]["library"] == LIBRARY


def test_caller_context_is_deep_merged_over_the_scope(
    client: Client, segment_events: CapturedEvents
) -> None:
    scope_context = {
        "ip": "203.0.113.9",
        "locale": "en-US",
        "page": {"path": "/checkout", "url": "https://shop.example/checkout"},
        "campaign": {"name": "spring", "source": "newsletter"},
    }
    scope = segment_mw.Scope(user_id="u-scope", anonymous_id="a-scope", context=scope_context)
    with segment_mw.bound(scope):
        segment_mw.track(
            "Order Completed",
            context={"campaign": {"source": "override", "term": "shoes"}, "locale": "de-DE"},
        )
    assert segment_events[0]["context"] == {
        "ip": "203.0.113.9",
        "locale": "de-DE",
        "page": {"path": "/checkout", "url": "https://shop.example/checkout"},
        "campaign": {"name": "spring", "source": "override", "term": "shoes"},
        "library": LIBRARY,
    }
    # The scope's own context is not changed by the merge.
    assert scope.context == {
        "ip": "203.0.113.9",
        "locale": "en-US",
        "page": {"path": "/checkout", "url": "https://shop.example/checkout"},
        "campaign": {"name": "spring", "source": "newsletter"},
    }
    assert scope.emitted == 1


@pytest.mark.parametrize(
    "call",
    [
        lambda: segment_mw.track("Clicked"),
        lambda: segment_mw.page("Home"),
        lambda: segment_mw.screen("Home"),
        lambda: segment_mw.identify(traits={"plan": "pro"}),
        lambda: segment_mw.group("g1"),
    ],
    ids=["track", "page", "screen", "identify", "group"],
)
def test_identity_comes_from_the_bound_scope(
    client: Client, segment_events: CapturedEvents, call: Callable[[], str]
) -> None:
    with segment_mw.bound(segment_mw.Scope(user_id="u-scope", anonymous_id="a-scope")):
        call()
    message = only(segment_events)
    assert (message["userId"], message["anonymousId"]) == ("u-scope", "a-scope")


def test_an_event_about_someone_else_takes_nothing_from_the_scope(
    client: Client, segment_events: CapturedEvents
) -> None:
    request = segment_mw.Scope(
        user_id="u-scope", anonymous_id="a-scope", context={"ip": "203.0.113.9"}
    )
    with segment_mw.bound(request):
        segment_mw.track("Clicked", user_id="u-explicit")  # another user
        segment_mw.track("Clicked", anonymous_id="a-explicit")  # another browser
        segment_mw.identify("u-explicit", anonymous_id="a-explicit")
        segment_mw.track("Clicked", user_id="u-scope")  # the request's own user
    ids = [(e.get("userId"), e.get("anonymousId"), e["context"].get("ip")) for e in segment_events]
    assert ids == [
        ("u-explicit", None, None),
        (None, "a-explicit", None),
        ("u-explicit", "a-explicit", None),
        ("u-scope", "a-scope", "203.0.113.9"),
    ]


def test_an_anonymous_scope_naming_a_user_keeps_its_anonymous_id(
    client: Client, segment_events: CapturedEvents
) -> None:
    # A sign-up: the link between the two ids is what merges the visitor's history.
    request = segment_mw.Scope(anonymous_id="a-scope", context={"ip": "203.0.113.9"})
    with segment_mw.bound(request):
        segment_mw.identify("u-new", {"plan": "pro"})
    [event] = segment_events
    assert (event["userId"], event["anonymousId"]) == ("u-new", "a-scope")
    assert event["context"]["ip"] == "203.0.113.9"


def test_scope_with_only_an_anonymous_id(client: Client, segment_events: CapturedEvents) -> None:
    with segment_mw.bound(segment_mw.Scope(anonymous_id="a-scope")):
        segment_mw.page("Home")
    message = only(segment_events)
    assert message["anonymousId"] == "a-scope"
    assert "userId" not in message


def test_integer_ids_are_stringified(client: Client, segment_events: CapturedEvents) -> None:
    segment_mw.track("Clicked", user_id=42)
    segment_mw.identify(42, anonymous_id=7)
    segment_mw.group(9001, user_id=42)
    segment_mw.alias(17, 42)
    assert segment_events[0]["userId"] == "42"
    assert (segment_events[1]["userId"], segment_events[1]["anonymousId"]) == ("42", "7")
    assert segment_events[2]["groupId"] == "9001"
    assert (segment_events[3]["previousId"], segment_events[3]["userId"]) == ("17", "42")


def test_default_integrations_are_merged_under_the_events(
    configure: Callable[..., Client], segment_events: CapturedEvents
) -> None:
    default = {"All": True, "Mixpanel": False, "Amplitude": {"session_id": 1}}
    configure(INTEGRATIONS=default, IN_PROCESS_FLUSHER=False)
    segment_mw.track("A", user_id="u1")
    segment_mw.track("B", user_id="u1", integrations={"Mixpanel": True, "Facebook Pixel": False})
    segment_mw.track("C", user_id="u1", integrations={"all": False, "Amplitude": True})
    assert segment_events[0]["integrations"] == default
    assert segment_events[1]["integrations"] == {
        "All": True,
        "Mixpanel": True,
        "Amplitude": {"session_id": 1},
        "Facebook Pixel": False,
    }
    # The event's "all" (any case) replaces the default's "All" instead of sitting beside it.
    assert segment_events[2]["integrations"] == {"Mixpanel": False, "all": False, "Amplitude": True}
    # The routing copy kept beside the body is the same object.
    assert [json.loads(e.integrations or b"{}") for e in segment_events.entries] == [
        e["integrations"] for e in segment_events
    ]


def test_empty_integrations_are_not_stored_for_routing(
    client: Client, segment_events: CapturedEvents
) -> None:
    segment_mw.track("A", user_id="u1")
    segment_mw.track("B", user_id="u1", integrations={"X": False})
    assert segment_events.entries[0].integrations is None
    assert json.loads(segment_events.entries[1].integrations or b"") == {"X": False}


def test_opted_out_scope_builds_but_queues_nothing(
    client: Client, segment_events: CapturedEvents
) -> None:
    with segment_mw.bound(segment_mw.Scope(user_id="u1", opted_out=True)):
        mid = segment_mw.track("Clicked")
    assert uuid.UUID(mid).version == 4
    assert len(segment_events) == 0
    assert client.status().depth == 0


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: segment_mw.track("Clicked"), "userId or anonymousId"),
        (lambda: segment_mw.track("Clicked", user_id="", anonymous_id=""), "userId or anonym"),
        (lambda: segment_mw.page("Home"), "userId or anonymousId"),
        (lambda: segment_mw.identify(traits={"a": 1}), "userId or anonymousId"),
        (lambda: segment_mw.track("", user_id="u1"), "event"),
        (lambda: segment_mw.track("   ", user_id="u1"), "event"),
        (lambda: segment_mw.track(None, user_id="u1"), "event"),  # type: ignore[arg-type]
        (lambda: segment_mw.track(42, user_id="u1"), "event"),  # type: ignore[arg-type]
        (lambda: segment_mw.group(None, user_id="u1"), "groupId"),
        (lambda: segment_mw.group("", user_id="u1"), "groupId"),
        (lambda: segment_mw.alias(None, "u1"), "previousId"),
        (lambda: segment_mw.alias("", "u1"), "previousId"),
        (lambda: segment_mw.alias("anon", None), "userId"),
        (lambda: segment_mw.page(42, user_id="u1"), "name"),  # type: ignore[arg-type]
        (lambda: segment_mw.page("Home", category=3, user_id="u1"), "category"),  # type: ignore[arg-type]
        (lambda: segment_mw.screen(["x"], user_id="u1"), "name"),  # type: ignore[arg-type]
        (lambda: segment_mw.screen("S", category=1.5, user_id="u1"), "category"),  # type: ignore[arg-type]
        (lambda: segment_mw.track("E", [1, 2], user_id="u1"), "properties"),  # type: ignore[arg-type]
        (lambda: segment_mw.track("E", "a=1", user_id="u1"), "properties"),  # type: ignore[arg-type]
        (lambda: segment_mw.page("P", ["x"], user_id="u1"), "properties"),  # type: ignore[arg-type]
        (lambda: segment_mw.screen("S", ["x"], user_id="u1"), "properties"),  # type: ignore[arg-type]
        (lambda: segment_mw.identify("u1", ["x"]), "traits"),  # type: ignore[arg-type]
        (lambda: segment_mw.group("g", "x", user_id="u1"), "traits"),  # type: ignore[arg-type]
        (lambda: segment_mw.track("E", user_id="u1", context=["x"]), "context"),  # type: ignore[arg-type]
        (lambda: segment_mw.track("E", user_id="u1", integrations=[1]), "integrations"),  # type: ignore[arg-type]
        (lambda: segment_mw.track("E", user_id=True), "userId"),
        (lambda: segment_mw.track("E", user_id=["u"]), "userId"),
        (lambda: segment_mw.track("E", anonymous_id=object()), "anonymousId"),
    ],
)
def test_invalid_calls_raise_invalid_event_naming_the_field(
    client: Client, segment_events: CapturedEvents, call: Callable[[], str], field: str
) -> None:
    with pytest.raises(segment_mw.InvalidEvent, match=re.escape(field)) as info:
        call()
    assert isinstance(info.value, ValueError)
    assert len(segment_events) == 0
    assert client.status().depth == 0


# -- byte for byte to a jsonl file ---------------------------------------------------------


def test_every_type_reaches_jsonl_byte_for_byte(
    configure: Callable[..., Client],
    redis_settings: dict[str, Any],
    segment_events: CapturedEvents,
    tmp_path: Path,
) -> None:
    path = tmp_path / "out" / "events.jsonl"
    configure(
        **redis_settings,
        ENQUEUE_TIMEOUT=5.0,  # no spill: the order of arrival is asserted
        DESTINATIONS={"file": {"type": "jsonl", "path": str(path)}},
        INTEGRATIONS={"Mixpanel": False},
    )
    with segment_mw.bound(segment_mw.Scope(anonymous_id="a1", context={"ip": "192.0.2.1"})):
        segment_mw.track("Order Completed", {"total": 10, "note": "ünïcødé ✓"}, user_id="u1")
        segment_mw.page("Home", {"title": "Welcome"}, category="Main")
        segment_mw.screen("Feed", {"tab": 1})
        segment_mw.identify("u1", {"name": "Ada"})
        segment_mw.group("g1", {"name": "Acme"}, user_id="u1")
        segment_mw.alias("a1", "u1", integrations={"Mixpanel": True})
    assert segment_mw.flush(10)
    lines = path.read_bytes().splitlines()
    assert lines == [entry.body for entry in segment_events.entries]
    assert [json.loads(line)["type"] for line in lines] == [
        "track",
        "page",
        "screen",
        "identify",
        "group",
        "alias",
    ]
    assert "ünïcødé ✓".encode() in lines[0]


@pytest.mark.parametrize("level", ["info", "WARNING", 15])
def test_every_type_reaches_a_log_destination(
    configure: Callable[..., Client],
    segment_events: CapturedEvents,
    caplog: pytest.LogCaptureFixture,
    level: str | int,
) -> None:
    configure(
        IN_PROCESS_FLUSHER=False,
        DESTINATIONS={"debug": {"type": "log", "logger": "app.analytics", "level": level}},
    )
    caplog.set_level(1, logger="app.analytics")
    segment_mw.track("Signed Up", user_id="u1")
    segment_mw.alias("a1", "u1")
    assert segment_mw.flush(10)
    records = [r for r in caplog.records if r.name == "app.analytics"]
    assert [r.getMessage().encode() for r in records] == [e.body for e in segment_events.entries]
    expected = {"info": 20, "WARNING": 30, 15: 15}[level]
    assert {r.levelno for r in records} == {expected}


def test_empty_scope_ids_do_not_count_as_ids(
    client: Client, segment_events: CapturedEvents
) -> None:
    nobody = segment_mw.Scope(user_id="", anonymous_id="")
    with (
        segment_mw.bound(nobody),
        pytest.raises(segment_mw.InvalidEvent, match="userId or anonymousId"),
    ):
        segment_mw.track("Clicked")
    with segment_mw.bound(segment_mw.Scope(user_id="", anonymous_id="a1")):
        segment_mw.track("Clicked")
    message = only(segment_events)
    assert message["anonymousId"] == "a1"
    assert "userId" not in message


def test_integer_scope_ids_are_stringified(client: Client, segment_events: CapturedEvents) -> None:
    with segment_mw.bound(segment_mw.Scope(user_id=42)):  # type: ignore[arg-type]
        segment_mw.track("Clicked")
    assert only(segment_events)["userId"] == "42"


def test_message_ids_are_uuid4_strings_and_a_forked_child_makes_its_own() -> None:
    from segment_mw.events import new_message_id

    ids = [new_message_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    for mid in ids[:100]:
        parsed = uuid.UUID(mid)
        assert (str(parsed), parsed.version, parsed.variant) == (mid, 4, uuid.RFC_4122)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the generator it inherited must not go on in step with ours
        try:
            os.write(write, " ".join(new_message_id() for _ in range(100)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    parent = [new_message_id() for _ in range(100)]
    assert len(child) == 100
    assert not set(child) & set(parent)
