"""Events of a request queued with its facts and made whole where they are delivered.

The request path records the request's facts once (scrubbed page parts, ip, raw user
agent, client hints, languages); every event about the request's visitor is queued with
them, and ``events.complete`` makes the context from them at delivery. What is delivered
must be what building the whole message on the request path gives, byte for byte where
the caller's values are concerned (a Decimal keeps its digits).
"""

from __future__ import annotations

import json
import random
import string
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

import segment_mw
from segment_mw import events
from segment_mw import scope as scope_mod
from segment_mw.capture import RequestInfo, capture
from segment_mw.config import load_settings
from segment_mw.request_context import context_from

BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 Chrome/124.0"
HEADERS = {
    "user-agent": BROWSER,
    "accept-language": "de-CH,de;q=0.9,en;q=0.8",
    "referer": "https://search.example/?q=shoes&token=s3cret",
    "sec-ch-ua": '"Chromium";v="124", "Google Chrome";v="124", "Not-A.Brand";v="99"',
    "sec-ch-ua-mobile": "?0",
    "sec-ch-ua-platform": '"macOS"',
}
QUERY = "utm_source=news&utm_campaign=spring&password=hunter2&ref=x"


def request_scope(headers: dict[str, str] | None = None, query: str = QUERY) -> Any:
    settings = load_settings({}, environ={})
    info = RequestInfo(
        "GET",
        "https",
        "shop.example",
        "/products/shoes/",
        query,
        headers=HEADERS if headers is None else headers,
        cookies={"ajs_anonymous_id": "anon-1"},
        peer="203.0.113.9",
    )
    return capture(info, settings).scope


def both_ways(type_: str, fields: dict[str, Any], **kw: Any) -> tuple[bytes, bytes]:
    """The body queued for a request's event, and the same message made whole right away."""
    scope = request_scope()
    deferred = events.build(type_, fields, anonymous_id="anon-1", request=scope, **kw)
    mid, ts = orjson.loads(events.complete(deferred.body))["messageId"], None
    whole = events.build(
        type_,
        fields,
        anonymous_id="anon-1",
        request=_Eager(scope),
        message_id=mid,
        timestamp=ts,
        **kw,
    )
    return deferred.body, whole.body


class _Eager:
    """The same request, offering no facts: its events are made whole on the request path."""

    facts_json = None

    def __init__(self, scope: Any) -> None:
        self.context = scope.context


@pytest.mark.parametrize("with_page", [False, True])
def test_a_completed_event_is_the_event_made_whole_on_the_request_path(with_page: bool) -> None:
    fields = (
        events.page_fields("Product", {"sku": "B-1"}, "Shop")
        if with_page
        else events.track_fields("Order Completed", {"revenue": Decimal("19.990"), "n": 2})
    )
    deferred, whole = both_ways("page" if with_page else "track", fields, with_page=with_page)
    assert deferred.startswith(events.DEFERRED)
    completed = events.complete(deferred)
    got, expected = orjson.loads(completed), orjson.loads(whole)
    expected["timestamp"] = got["timestamp"]  # made a moment apart
    assert got == expected
    assert list(got) == list(expected)  # the same layout, field by field
    assert list(got["context"]) == list(expected["context"])
    if with_page:
        assert got["properties"] == {**got["context"]["page"], "sku": "B-1"}
    else:
        assert b'"revenue":19.990' in completed  # the caller's bytes are never parsed again


def test_the_context_made_at_delivery_is_the_requests() -> None:
    context = orjson.loads(events.complete(both_ways("track", events.track_fields("E", {}))[0]))[
        "context"
    ]
    assert context["page"] == {
        "path": "/products/shoes/",
        "referrer": "https://search.example/?q=shoes",  # scrubbed on the request path
        "search": "?utm_source=news&utm_campaign=spring&ref=x",
        "title": "",
        "url": "https://shop.example/products/shoes/?utm_source=news&utm_campaign=spring&ref=x",
    }
    assert context["ip"] == "203.0.113.9"
    assert context["userAgent"] == BROWSER
    assert context["locale"] == "de-CH"
    assert context["campaign"] == {"source": "news", "name": "spring"}
    assert context["userAgentData"]["platform"] == "macOS"
    assert context["library"]["name"] == "segment_mw"


def test_secrets_never_reach_the_queue() -> None:
    body = events.build(
        "track", events.track_fields("E", {}), anonymous_id="a", request=request_scope()
    ).body
    assert b"hunter2" not in body
    assert b"s3cret" not in body


def test_an_event_with_a_context_of_its_own_is_made_whole_at_once() -> None:
    entry = events.build(
        "track",
        events.track_fields("E", {}),
        anonymous_id="a",
        context={"traits": {"plan": "pro"}},
        request=request_scope(),
    )
    message = orjson.loads(entry.body)
    assert message["context"]["traits"] == {"plan": "pro"}
    assert message["context"]["page"]["path"] == "/products/shoes/"


def test_page_properties_that_override_the_page_fields_are_made_whole_at_once() -> None:
    entry = events.build(
        "page",
        events.page_fields("P", {"title": "Mine"}, None),
        anonymous_id="a",
        request=request_scope(),
        with_page=True,
    )
    assert not entry.body.startswith(events.DEFERRED)
    assert orjson.loads(entry.body)["properties"]["title"] == "Mine"


def junk(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.printable) for _ in range(n))


@pytest.mark.parametrize("seed", range(25))
def test_completing_never_adds_more_than_the_bound(seed: int) -> None:
    # Attacker-sized and awkward requests: escapes, many brands, a long query; from large
    # (made whole at once, or refused) down to small enough to be queued with its facts.
    rng = random.Random(seed)
    escapes = ["%00", "%22", "%5C", "%E2%80%A8", "+"]  # "%00" (3 bytes) is written "\\u0000"
    deferred = 0
    for scale in (1.0, 0.3, 0.1, 0.03):

        def n(top: int, scale: float = scale) -> int:
            return rng.randint(0, max(1, int(top * scale)))

        brands = ", ".join(f'"{junk(rng, 8)}";v="{rng.randint(1, 99)}"' for _ in range(n(40)))
        headers = {
            "user-agent": junk(rng, 1 + n(3000)),
            "accept-language": junk(rng, n(3000)),
            "referer": "https://x.example/" + junk(rng, n(2000)),
            "sec-ch-ua": brands,
            "sec-ch-ua-full-version-list": brands,
            "sec-ch-ua-platform": junk(rng, 50),
        }
        query = "&".join(
            f"utm_{junk(rng, 5)}={junk(rng, 30)}{''.join(rng.choices(escapes, k=n(400)))}"
            for _ in range(n(60))
        )
        scope = request_scope(headers, query)
        for with_page in (False, True):
            try:
                entry = events.build(
                    "page",
                    events.page_fields("P", {}, None),
                    anonymous_id="a",
                    request=scope,
                    with_page=with_page,
                )
            except segment_mw.InvalidEvent:
                continue  # too large made whole, so refused at the call: what must happen
            if entry.body.startswith(events.DEFERRED):
                deferred += 1
                added = len(events.complete(entry.body)) - len(entry.body)
                assert added <= events._added_at_most(scope.facts_json, with_page)
    assert deferred  # the bound was put to the test


@pytest.mark.parametrize("with_page", [False, True])
def test_a_campaign_of_escapes_stays_within_the_bound(with_page: bool) -> None:
    # The worst a fact grows by: "%00" in a utm value, 3 bytes queued, "\\u0000" (6 bytes)
    # in the campaign, beside the query's own copies in search and url (and the page's).
    scope = request_scope({"user-agent": BROWSER}, "utm_x=" + "%00" * 1000)
    entry = events.build(
        "page",
        events.page_fields("P", {}, None),
        anonymous_id="a",
        request=scope,
        with_page=with_page,
    )
    assert entry.body.startswith(events.DEFERRED)
    added = len(events.complete(entry.body)) - len(entry.body)
    assert added <= events._added_at_most(scope.facts_json, with_page)


def test_a_query_that_completing_would_make_too_large_is_refused_at_the_call() -> None:
    scope = request_scope({"user-agent": BROWSER}, "utm_x=" + "%00" * 2300)
    with pytest.raises(segment_mw.InvalidEvent, match="the limit is 32768"):
        events.build(
            "page",
            events.page_fields("P", {}, None),
            anonymous_id="a",
            request=scope,
            with_page=True,
        )


def test_facts_of_an_unknown_shape_are_an_invalid_event_not_a_crash() -> None:
    body = events.build(
        "track", events.track_fields("E", {}), anonymous_id="a", request=request_scope()
    ).body
    malformed = body[: body.rindex(b"\x00") + 1] + b'{"lang": ["en"], "hints": 3}'
    with pytest.raises(segment_mw.InvalidEvent, match="malformed"):
        events.complete(malformed)


def test_an_event_that_cannot_be_completed_is_dead_lettered_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "events.jsonl"
    client = segment_mw.configure(
        {
            "QUEUE_URL": "memory://",
            "IN_PROCESS_FLUSHER": False,  # flush() below reads all four at once
            "DESTINATIONS": {"file": {"type": "jsonl", "path": str(out)}},
        }
    )
    good = events.build(
        "track", events.track_fields("Good", {}), anonymous_id="a", request=request_scope()
    )
    broken = events.Entry(
        good.body[: good.body.rindex(b"\x00")] + b"\x00{not json", None, "x", "track"
    )
    after = events.build(
        "track", events.track_fields("After", {}), anonymous_id="a", request=request_scope()
    )
    whole = events.build("track", events.track_fields("Whole", {}), anonymous_id="a")
    for entry in (good, broken, after, whole):  # one read: those after the broken one too
        client.producer.submit(entry)
    assert client.flush(10) is True
    delivered = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["event"] for e in delivered] == ["Good", "After", "Whole"]
    assert [e["messageId"] for e in delivered] == [
        good.message_id,
        after.message_id,
        whole.message_id,
    ]
    assert delivered[1]["context"]["page"] == delivered[0]["context"]["page"]  # made whole
    status = client.status().destinations["file"]
    assert (status.delivered, status.dead) == (3, 1)
    assert client.queue.replay("file") == 1  # the one dead-lettered is the broken one
    assert [r.body for r in client.queue.read_new("file", "check", 10)] == [broken.body]
    assert any("request facts are not JSON" in r.getMessage() for r in caplog.records)


def test_a_scope_computes_its_context_once_and_shows_the_title() -> None:
    scope = request_scope()
    first = scope.context
    assert scope.context is first
    scope.set_title("Blue Shoes")
    assert scope.context["page"]["title"] == "Blue Shoes"
    assert context_from(scope.facts)["page"]["title"] == "Blue Shoes"
    assert orjson.loads(scope.facts_json)["title"] == "Blue Shoes"


def test_complete_in_worker_off_makes_every_event_whole_on_the_request_path() -> None:
    # For a rolling deploy (or a rollback) with workers that predate the layout.
    client = segment_mw.configure({"QUEUE_URL": "memory://", "COMPLETE_IN_WORKER": False})
    captured: list[events.Entry] = []
    client.listeners.append(captured.append)
    with scope_mod.bound(request_scope()):
        segment_mw.track("Whole", {"revenue": Decimal("1.50")})
    (entry,) = captured
    assert not entry.body.startswith(events.DEFERRED)
    assert orjson.loads(entry.body)["context"]["page"]["path"] == "/products/shoes/"
    assert b'"revenue":1.50' in entry.body


def test_complete_in_worker_is_a_switch_the_environment_can_turn() -> None:
    assert load_settings({}, environ={}).complete_in_worker is True
    off = {"SEGMENT_MW_COMPLETE_IN_WORKER": "0"}
    assert load_settings({}, environ=off).complete_in_worker is False


def test_complete_in_worker_takes_only_a_switch() -> None:
    with pytest.raises(segment_mw.ConfigurationError, match="COMPLETE_IN_WORKER"):
        load_settings({"COMPLETE_IN_WORKER": "no"}, environ={})
    with pytest.raises(segment_mw.ConfigurationError, match="SEGMENT_MW_COMPLETE_IN_WORKER"):
        load_settings({}, environ={"SEGMENT_MW_COMPLETE_IN_WORKER": "maybe"})
