"""The posthog destination against PostHog's own Python SDK, and its answers."""

from __future__ import annotations

import datetime as dt

import pytest
from posthog import Posthog
from posthog import request as posthog_request

from segment_mw import events

from .tools import CONTEXT, WHEN, body, make, send_one_request, stored, track

KEY = "phc_test_project_key"
ORDER = {"order_id": "o-1", "total": 42.5, "currency": "EUR", "coupon": "WINTER"}
# Properties PostHog's SDK adds of its own that we set differently, on purpose:
#  $lib / $lib_version name the library that sent the event (ours: segment_mw);
#  $geoip_disable: the SDK turns GeoIP off because a server's address is not the user's;
#  we send the user's own address as $ip (from context.ip), so GeoIP is right and stays on;
#  $python_*, $os*, $is_server describe the machine sending the event, not the user's:
#  PostHog would show the worker's OS as the user's.
SDK_ONLY = {
    "$lib",
    "$lib_version",
    "$geoip_disable",
    "$python_runtime",
    "$python_version",
    "$os",
    "$os_version",
    "$os_distro",
    "$is_server",
}
# What we add from the request's context (the SDK knows no request): these are the
# properties posthog-js sets for the same page view.
FROM_CONTEXT = {
    "$ip": "203.0.113.7",
    "$raw_user_agent": CONTEXT["userAgent"],
    "$browser_language": "en-GB",
    "$current_url": "https://shop.example/checkout",
    "$pathname": "/checkout",
    "$referrer": "https://search.example/?q=shoes",
    "utm_campaign": "winter",
    "utm_source": "newsletter",
    "utm_medium": "email",
}


def sdk_events(sink, calls) -> list[dict]:
    # The SDK keeps one module-wide HTTP session: a connection it kept alive to an earlier
    # test's sink, on a port the system now gave this one, would be reused, and the SDK
    # drops an event whose request fails (sync mode has no retries).
    posthog_request._session.close()
    client = Posthog(KEY, host=sink.url, sync_mode=True, max_retries=0)
    try:
        for call in calls:
            call(client)
    finally:
        client.shutdown()
    sent = [body(r) for r in sink.requests]
    assert all(b["api_key"] == KEY for b in sent)
    return [e for b in sent for e in b["batch"]]


def ours(sink, bodies) -> list[dict]:
    request = send_one_request("posthog", sink, bodies, api_key=KEY)
    assert request.headers["Content-Encoding"] == "gzip"
    payload = body(request)
    assert payload["api_key"] == KEY
    return payload["batch"]


def same_time(a: str, b: str) -> None:
    assert dt.datetime.fromisoformat(a) == dt.datetime.fromisoformat(b)


def compare(sdk: dict, mine: dict, extra: dict) -> None:
    """Field by field: names, ids, dedupe key, time, and every property the SDK sent."""
    for key in ("event", "distinct_id", "uuid"):
        assert mine[key] == sdk[key], key
    same_time(mine["timestamp"], sdk["timestamp"])
    sdk_props = {k: v for k, v in sdk["properties"].items() if k not in SDK_ONLY}
    for key, value in sdk_props.items():
        assert mine["properties"][key] == value, key
    assert mine["properties"]["$lib"] == "segment_mw"
    unexpected = set(mine["properties"]) - set(sdk_props) - {"$lib", "$lib_version"}
    assert unexpected == set(extra), unexpected
    for key, value in extra.items():
        assert mine["properties"][key] == value, key


def test_track_page_group_alias_match_the_sdk(sink, sinks):
    mid = [events.new_message_id() for _ in range(4)]
    ids = {"user_id": "u-1", "anonymous_id": "anon-1", "timestamp": WHEN}
    sdk = sdk_events(
        sink,
        [
            lambda c: c.capture(
                "Order Completed", distinct_id="u-1", properties=ORDER, timestamp=WHEN, uuid=mid[0]
            ),
            lambda c: c.capture(
                "$pageview",
                distinct_id="u-1",
                properties={
                    "$current_url": "https://shop.example/checkout",
                    "title": "Checkout",
                    "name": "Checkout",
                },
                timestamp=WHEN,
                uuid=mid[1],
            ),
            lambda c: c.group_identify(
                "company", "g-9", {"plan": "pro"}, timestamp=WHEN, uuid=mid[2], distinct_id="u-1"
            ),
            lambda c: c.alias("anon-1", "u-1", timestamp=WHEN, uuid=mid[3]),
        ],
    )
    other = sinks()
    mine = ours(
        other,
        [
            track("Order Completed", ORDER, message_id=mid[0], **ids),
            stored("page", events.page_fields("Checkout", {}, None), message_id=mid[1], **ids),
            stored("group", events.group_fields("g-9", {"plan": "pro"}), message_id=mid[2], **ids),
            stored(
                "alias",
                events.alias_fields("anon-1", "u-1"),
                message_id=mid[3],
                user_id="u-1",
                timestamp=WHEN,
            ),
        ],
    )
    assert len(sdk) == len(mine) == 4
    compare(sdk[0], mine[0], FROM_CONTEXT)
    # A page's own fields come from the page call (and context.page): the SDK was given
    # $current_url and title by hand, as an app using it would.
    page_extra = {k: v for k, v in FROM_CONTEXT.items() if k != "$current_url"}
    compare(sdk[1], mine[1], page_extra)
    # $groupidentify and $create_alias carry only the request's client fields, not page ones.
    client_only = {k: FROM_CONTEXT[k] for k in ("$ip", "$raw_user_agent", "$browser_language")}
    compare(sdk[2], mine[2], client_only)
    compare(sdk[3], mine[3], client_only)


def test_identify_is_identify_with_set_and_the_anonymous_id(sink, sinks):
    mid = events.new_message_id()
    traits = {"email": "ada@example.com", "plan": "pro"}
    (sdk,) = sdk_events(
        sink, [lambda c: c.set(distinct_id="u-1", properties=traits, timestamp=WHEN, uuid=mid)]
    )
    (mine,) = ours(
        sinks(),
        [
            stored(
                "identify",
                events.identify_fields(traits),
                user_id="u-1",
                anonymous_id="anon-1",
                timestamp=WHEN,
                message_id=mid,
            )
        ],
    )
    # Deliberate: the SDK (7.x) has no identify() any more and sends "$set" with the traits
    # at the top level; we send "$identify", PostHog's event for a login, which also merges
    # the anonymous person into the user ($anon_distinct_id) as Segment's destination does.
    assert sdk["event"] == "$set"
    assert mine["event"] == "$identify"
    assert mine["properties"]["$set"] == sdk["$set"] == traits
    assert mine["properties"]["$anon_distinct_id"] == "anon-1"
    assert mine["distinct_id"] == sdk["distinct_id"] == "u-1"
    assert mine["uuid"] == sdk["uuid"] == mid
    same_time(mine["timestamp"], sdk["timestamp"])


def test_a_message_id_that_is_no_uuid_gives_the_same_uuid_every_time(sinks):
    first, second = sinks(), sinks()
    message = track("Signed Up", user_id="u-1", message_id="order-o-1-confirmation")
    for target in (first, second):
        ours(target, [message])
    uuids = {body(s.requests[0])["batch"][0]["uuid"] for s in (first, second)}
    assert len(uuids) == 1
    assert len(uuids.pop()) == 36


@pytest.mark.parametrize(
    ("status", "retry", "split"),
    [
        (503, True, False),
        (429, True, False),
        (400, False, True),
        (413, False, True),
        (401, False, False),
    ],
)
def test_answers(sink, status, retry, split):
    dest = make("posthog", sink.url, api_key=KEY)
    sink.fail(status, body=f'{{"detail": "refused {KEY}"}}'.encode(), headers={"Retry-After": "7"})
    outcome = dest.send([track("A", user_id="u"), track("B", user_id="u")])
    dest.close()
    assert not outcome.ok
    assert (outcome.retry, outcome.split) == (retry, split)
    assert outcome.error.startswith(f"HTTP {status}")
    assert KEY not in outcome.error
    if status == 429:
        assert outcome.retry_after == 7.0
    assert KEY not in repr(dest) + repr(dest.options)


def test_unreadable_message_is_refused_alone(sink):
    dest = make("posthog", sink.url, api_key=KEY)
    outcome = dest.send([b"{not json", track("A", user_id="u")])
    dest.close()
    assert outcome.ok
    assert outcome.refused == ((0, "not a JSON message"),)
    assert [e["event"] for e in body(sink.requests[0])["batch"]] == ["A"]
