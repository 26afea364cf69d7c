"""The amplitude destination against Amplitude's own Python SDK, and its answers."""

from __future__ import annotations

import json

import pytest
from amplitude import Amplitude, BaseEvent, Config, EventOptions, Identify

from segment_mw import events
from segment_mw.config import load_settings
from segment_mw.errors import ConfigurationError

from .tools import CONTEXT, WHEN, body, make, send_one_request, stored, track

KEY = "amplitude-api-key-value"
ORDER = {"order_id": "o-1", "revenue": 42.5, "currency": "EUR"}
MS = int(WHEN.timestamp() * 1000)
# What we fill from the request's context, which the SDK leaves to the caller: we pass
# the same values to the SDK by hand, so these compare equal; only the campaign, which
# Segment's destination turns into user properties, is ours alone.
CLIENT = {"ip": "203.0.113.7", "language": "en-GB", "user_agent": CONTEXT["userAgent"]}
CAMPAIGN = {
    "$set": {
        "utm_campaign": "winter",
        "utm_source": "newsletter",
        "utm_medium": "email",
        "referrer": "https://search.example/?q=shoes",
    },
    "$setOnce": {
        "initial_utm_campaign": "winter",
        "initial_utm_source": "newsletter",
        "initial_utm_medium": "email",
        "initial_referrer": "https://search.example/?q=shoes",
    },
}


def sdk_events(sink, calls) -> dict:
    sink.answer = b'{"code": 200, "events_ingested": 1}'
    client = Amplitude(
        KEY, Config(server_url=f"{sink.url}/2/httpapi", flush_interval_millis=60_000)
    )
    try:
        for call in calls:
            call(client)
        for future in client.flush():
            future.result(timeout=30)
    finally:
        client.shutdown()
    payloads = [body(r) for r in sink.requests]
    assert all(p["api_key"] == KEY for p in payloads)
    return [e for p in payloads for e in p["events"]]


def ours(sink, bodies) -> list[dict]:
    request = send_one_request("amplitude", sink, bodies, api_key=KEY)
    # Deliberate: gzipped, which HTTP V2 takes (the SDK sends plain JSON).
    assert request.headers["Content-Encoding"] == "gzip"
    payload = body(request)
    assert payload["api_key"] == KEY
    return payload["events"]


def compare(sdk: dict, mine: dict) -> None:
    # Deliberate: library names the library that sent it.
    assert sdk["library"].startswith("amplitude-python/")
    assert mine["library"].startswith("segment_mw/")
    theirs = {k: v for k, v in sdk.items() if k != "library"}
    for key, value in theirs.items():
        if key == "user_properties":
            continue
        assert mine[key] == value, key
    assert set(mine) - set(theirs) - {"library"} <= {"user_properties"}
    # The SDK's user properties, if any, are all there; the campaign's are added.
    for op, values in sdk.get("user_properties", {}).items():
        for key, value in values.items():
            assert mine["user_properties"][op][key] == value, (op, key)


def ids(mid: str) -> dict:
    return {"user_id": "u-1", "device_id": "anon-1", "time": MS, "insert_id": mid, **CLIENT}


def test_track_page_identify_group_match_the_sdk(sink, sinks):
    mid = [events.new_message_id() for _ in range(4)]
    sdk = sdk_events(
        sink,
        [
            lambda c: c.track(
                BaseEvent("Order Completed", event_properties=ORDER, revenue=42.5, **ids(mid[0]))
            ),
            lambda c: c.track(
                BaseEvent(
                    "Viewed Checkout Page", event_properties={"name": "Checkout"}, **ids(mid[1])
                )
            ),
            lambda c: c.identify(Identify().set("plan", "pro"), EventOptions(**ids(mid[2]))),
            lambda c: c.set_group("[Segment] Group", "g-9", EventOptions(**ids(mid[3]))),
        ],
    )
    seg = {"user_id": "u-1", "anonymous_id": "anon-1", "timestamp": WHEN}
    mine = ours(
        sinks(),
        [
            track("Order Completed", ORDER, message_id=mid[0], **seg),
            stored("page", events.page_fields("Checkout", {}, None), message_id=mid[1], **seg),
            stored("identify", events.identify_fields({"plan": "pro"}), message_id=mid[2], **seg),
            stored("group", events.group_fields("g-9", {}), message_id=mid[3], **seg),
        ],
    )
    assert len(sdk) == len(mine) == 4
    for theirs, ours_ in zip(sdk, mine, strict=True):
        compare(theirs, ours_)
        assert ours_["user_properties"]["$setOnce"] == CAMPAIGN["$setOnce"]
        for key, value in CAMPAIGN["$set"].items():
            assert ours_["user_properties"]["$set"][key] == value


def test_a_400_naming_bad_events_dead_letters_them_and_resends_the_rest(sink):
    dest = make("amplitude", sink.url, api_key=KEY)
    answer = {
        "code": 400,
        "error": "Invalid field values on some events",
        "events_with_invalid_fields": {"time": [1]},
    }
    sink.fail(400, body=json.dumps(answer).encode())
    outcome = dest.send([track(n, user_id="user-1", timestamp=WHEN) for n in "ABC"])
    assert outcome.ok
    assert [i for i, _ in outcome.refused] == [1]
    assert outcome.pending == ()
    (request,) = sink.requests  # the second request, with the two good events
    assert [e["event_type"] for e in body(request)["events"]] == ["A", "C"]


def test_a_429_dead_letters_over_quota_users_and_retries_the_throttled(sink):
    dest = make("amplitude", sink.url, api_key=KEY)
    answer = {
        "code": 429,
        "error": "Too many requests for some devices and users",
        "eps_threshold": 30,
        "throttled_devices": {"dev-2": 31},
        "throttled_events": [1],
        "exceeded_daily_quota_users": {"user-3": 500000},
    }
    sink.fail(429, body=json.dumps(answer).encode())
    outcome = dest.send(
        [
            track("A", user_id="user-1", anonymous_id="dev-1", timestamp=WHEN),
            track("B", user_id="user-2", anonymous_id="dev-2", timestamp=WHEN),
            track("C", user_id="user-3", anonymous_id="dev-3", timestamp=WHEN),
        ]
    )
    assert outcome.ok
    assert [i for i, _ in outcome.refused] == [2]
    assert "daily" in outcome.refused[0][1]
    assert outcome.pending == (0, 1)
    assert outcome.retry_after == 30.0  # Amplitude's pause for throttled devices


@pytest.mark.parametrize(
    ("status", "retry", "split"), [(413, False, True), (503, True, False), (429, True, False)]
)
def test_answers(sink, status, retry, split):
    dest = make("amplitude", sink.url, api_key=KEY)
    sink.fail(status, body=f'{{"code": {status}, "error": "no {KEY}"}}'.encode())
    outcome = dest.send([track("A", user_id="user-1"), track("B", user_id="user-1")])
    assert not outcome.ok
    assert (outcome.retry, outcome.split) == (retry, split)
    assert KEY not in (outcome.error or "") + repr(dest) + repr(dest.options)


def test_invalid_api_key_is_rejected_without_splitting(sink):
    dest = make("amplitude", sink.url, api_key=KEY)
    sink.fail(400, body=b'{"code": 400, "error": "Invalid API key: xyz"}')
    outcome = dest.send([track("A", user_id="user-1"), track("B", user_id="user-1")])
    assert (outcome.ok, outcome.retry, outcome.split) == (False, False, False)


def test_region_and_options():
    def settings(**options):
        return load_settings(
            {"QUEUE_URL": "memory://", "DESTINATIONS": {"A": {"type": "amplitude", **options}}},
            environ={},
        )

    from segment_mw.destinations import make_destination

    eu = make_destination(settings(api_key=KEY, region="EU").destinations[0])
    assert eu.url == "https://api.eu.amplitude.com/2/httpapi"
    us = make_destination(settings(api_key=KEY).destinations[0])
    assert us.url == "https://api2.amplitude.com/2/httpapi"
    with pytest.raises(ConfigurationError, match="region"):
        settings(api_key=KEY, region="mars")
    with pytest.raises(ConfigurationError, match="api_key"):
        settings()
    with pytest.raises(ConfigurationError, match="min_id_length"):
        settings(api_key=KEY, min_id_length=0)
