"""The ga4 destination against the Measurement Protocol's documented schema and rules.

GA4 has no official Python SDK for the Measurement Protocol, and its endpoint answers 2xx
to anything: every request is checked against tests/data/ga4 (a JSON schema and rules
written from the protocol's reference and the validation server's documented checks).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jsonschema
import pytest

from segment_mw import events, metrics
from segment_mw.destinations import Outcome, spec
from segment_mw.destinations.ga4 import ECOMMERCE

from .tools import CONTEXT, body, make, stored, track

DATA = Path(__file__).resolve().parents[1] / "data" / "ga4"
SCHEMA = json.loads((DATA / "measurement_protocol.schema.json").read_text())
RULES = json.loads((DATA / "rules.json").read_text())
SECRET = "mp-api-secret-value"
MEASUREMENT = "G-TEST12345"
_now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
NOW = _now.replace(microsecond=_now.microsecond // 1000 * 1000)  # as stored: milliseconds
NOW_MICROS = int(NOW.timestamp() * 1_000_000)
BROWSER = {
    **CONTEXT,
    "googleAnalytics": {
        "clientId": "1234567890.1700000000",
        "sessionIds": {"TEST12345": "1700000500", "OTHER1234": "1"},
    },
}
ORDER = {
    "order_id": "o-1",
    "total": 27.5,
    "revenue": 25,
    "shipping": 3,
    "tax": 2,
    "coupon": "WINTER",
    "currency": "EUR",
    "products": [
        {
            "product_id": "p-1",
            "sku": "SKU-1",
            "name": "Sock",
            "price": 12.5,
            "quantity": 2,
            "brand": "Acme",
            "category": "Clothing",
            "variant": "red",
            "position": 1,
        },
        {"sku": "SKU-2", "name": "Hat", "price": "2.50"},
        {"note": "no id nor name: GA4 drops such an item"},
    ],
}


def ga4(sink, **options):
    return make("ga4", sink.url, measurement_id=MEASUREMENT, api_secret=SECRET, **options)


def sent(sink) -> list[dict]:
    """Every request's body, each checked against the protocol's schema and rules."""
    out = []
    for request in sink.requests:
        assert len(request.raw) <= RULES["max_request_bytes"]
        url = urlsplit(request.path)
        assert url.path == RULES["path"]
        query = parse_qs(url.query)
        assert query == {"measurement_id": [MEASUREMENT], "api_secret": [SECRET]}
        payload = body(request)
        jsonschema.validate(payload, SCHEMA)
        for event in payload["events"]:
            age = time.time() - event["timestamp_micros"] / 1e6
            assert age <= RULES["max_backdate_seconds"]
        out.append(payload)
    return out


def test_order_completed_is_a_purchase_that_joins_the_browser_session(sink):
    dest = ga4(sink)
    mid = events.new_message_id()
    message = track(
        "Order Completed",
        ORDER,
        user_id="u-1",
        anonymous_id="anon-1",
        timestamp=NOW,
        message_id=mid,
        context=BROWSER,
    )
    assert dest.send([message]) == Outcome.partial({})
    (payload,) = sent(sink)
    assert payload["client_id"] == "1234567890.1700000000"  # the _ga cookie's, not anon-1
    assert payload["user_id"] == "u-1"
    assert payload["ip_override"] == "203.0.113.7"
    (event,) = payload["events"]
    assert event["name"] == "purchase"
    assert event["timestamp_micros"] == NOW_MICROS
    params = event["params"]
    assert params["transaction_id"] == "o-1"  # GA4 dedupes purchases on it
    assert params["value"] == 27.5  # total, as Segment's GA4 destination maps it
    assert params["currency"] == "EUR"
    assert (params["shipping"], params["tax"], params["coupon"]) == (3, 2, "WINTER")
    assert params["items"] == [
        {
            "item_id": "p-1",
            "item_name": "Sock",
            "item_brand": "Acme",
            "item_category": "Clothing",
            "item_variant": "red",
            "price": 12.5,
            "quantity": 2,
            "index": 1,
        },
        {"item_id": "SKU-2", "item_name": "Hat", "price": 2.5},
    ]
    assert params["event_id"] == mid
    assert params["session_id"] == "1700000500"  # this stream's, from its _ga_ cookie
    assert (params["campaign"], params["source"], params["medium"]) == (
        "winter",
        "newsletter",
        "email",
    )
    dest.close()


@pytest.mark.parametrize("segment_name", sorted(ECOMMERCE))
def test_every_mapped_event_is_a_valid_request(sink, segment_name):
    props = {
        **ORDER,
        "product_id": "p-9",
        "name": "Sock",
        "price": 4,
        "query": "socks",
        "list_id": "l-1",
        "category": "Clothing",
        "promotion_id": "pr-1",
        "creative": "banner",
        "position": "top",
        "payment_method": "card",
        "method": "email",
    }
    dest = ga4(sink)
    outcome = dest.send([track(segment_name, props, anonymous_id="anon-1", timestamp=NOW)])
    assert outcome == Outcome.partial({})
    (payload,) = sent(sink)
    assert payload["client_id"] == "anon-1"  # no _ga cookie: the anonymousId
    assert payload["events"][0]["name"] == ECOMMERCE[segment_name][0]


def test_custom_events_are_named_and_limited_as_ga4_keeps_them(sink):
    props = {f"Prop {n}": "v" * 300 for n in range(40)}
    props["nested"] = {"dropped": True}
    dest = ga4(sink)
    before = metrics.counts().get("ga4_params_dropped", 0)
    assert dest.send(
        [track("Video Played!", props, user_id="u", anonymous_id="a", timestamp=NOW)]
    ).ok
    (payload,) = sent(sink)
    event = payload["events"][0]
    assert event["name"] == "video_played"
    assert len(event["params"]) == 25
    assert all(len(v) <= 100 for v in event["params"].values() if isinstance(v, str))
    assert metrics.counts()["ga4_params_dropped"] > before


def test_page_is_page_view(sink):
    dest = ga4(sink)
    page = stored("page", events.page_fields("Checkout", {}, None), anonymous_id="a", timestamp=NOW)
    assert dest.send([page]).ok
    (payload,) = sent(sink)
    assert payload["events"][0] == {
        "name": "page_view",
        "params": {
            "page_location": "https://shop.example/checkout",
            "page_referrer": "https://search.example/?q=shoes",
            "page_title": "Checkout",
            "language": "en-gb",
            "campaign": "winter",
            "source": "newsletter",
            "medium": "email",
            "event_id": json.loads(page)["messageId"],
        },
        "timestamp_micros": NOW_MICROS,
    }


def test_one_request_per_client_of_at_most_25_events(sink):
    dest = ga4(sink)
    bodies = [
        track("Step", {"n": n}, anonymous_id=f"anon-{n % 2}", timestamp=NOW) for n in range(25)
    ] + [track("Step", {"n": 99}, anonymous_id="anon-0", user_id="u-0", timestamp=NOW)]
    assert dest.send(bodies).ok
    payloads = sent(sink)
    assert sorted(len(p["events"]) for p in payloads) == [1, 12, 13]
    for payload in payloads:
        assert len({e["params"]["n"] % 2 for e in payload["events"]}) == 1


def test_calls_ga4_has_no_equivalent_for_are_skipped_and_counted(sink):
    dest = ga4(sink)
    before = metrics.counts().get("skipped_ga4", 0)
    bodies = [
        stored("identify", events.identify_fields({"plan": "pro"}), user_id="u", timestamp=NOW),
        stored("group", events.group_fields("g", {}), user_id="u", timestamp=NOW),
        stored("alias", events.alias_fields("a", "u"), user_id="u", timestamp=NOW),
        stored(
            "screen", events.page_fields("Home", {}, None, "screen"), user_id="u", timestamp=NOW
        ),
    ]
    assert dest.send(bodies) == Outcome.partial({})
    assert sink.requests == []
    assert metrics.counts()["skipped_ga4"] == before + 4


def test_refusals_are_per_message_with_the_reason(sink):
    dest = ga4(sink)
    old = NOW - dt.timedelta(hours=72)
    outcome = dest.send(
        [
            track("Order Completed", ORDER, anonymous_id="a", timestamp=old),
            track("session_start", {}, anonymous_id="a", timestamp=NOW),
            track("Order Completed", {"total": 3}, anonymous_id="a", timestamp=NOW),
            track("Fine", {}, user_id="only-a-user-id", timestamp=NOW),
            track("Fine", {}, anonymous_id="a", timestamp=NOW),
        ]
    )
    assert outcome.ok
    why = dict(outcome.refused)
    assert set(why) == {0, 1, 2, 3}
    assert "older than ga4 accepts (72 h)" in why[0]
    assert "reserved" in why[1]
    assert "order_id" in why[2]
    assert "client id" in why[3]
    (payload,) = sent(sink)
    assert [e["name"] for e in payload["events"]] == ["fine"]


def test_a_failure_midway_retries_only_what_was_not_delivered(sink):
    dest = ga4(sink)
    bodies = [track("Step", {"n": n}, anonymous_id=f"anon-{n}", timestamp=NOW) for n in range(3)]
    sink.fail(200, times=1)  # the first client's request goes through
    sink.fail(503, times=1, body=SECRET.encode(), headers={"Retry-After": "4"})
    outcome = dest.send(bodies)
    assert outcome.ok
    assert outcome.pending == (1, 2)
    assert outcome.retry_after == 4.0
    assert outcome.error.startswith("HTTP 503")
    assert SECRET not in outcome.error
    assert SECRET not in repr(dest) + repr(dest.options)


def test_options_are_checked_when_configured():
    from segment_mw.config import load_settings
    from segment_mw.errors import ConfigurationError

    def settings(**options):
        load_settings(
            {"QUEUE_URL": "memory://", "DESTINATIONS": {"GA4": {"type": "ga4", **options}}},
            environ={},
        )

    with pytest.raises(ConfigurationError, match="measurement_id"):
        settings(api_secret="s")
    with pytest.raises(ConfigurationError, match="G-ABC123DEF4"):
        settings(measurement_id="UA-1234-1", api_secret="s")
    with pytest.raises(ConfigurationError, match="api_secret"):
        settings(measurement_id=MEASUREMENT)
    with pytest.raises(ConfigurationError, match="72 hours"):
        settings(measurement_id=MEASUREMENT, api_secret="s", max_age=80 * 3600)
    with pytest.raises(ConfigurationError, match="unknown option"):
        settings(measurement_id=MEASUREMENT, api_secret="s", apisecret="typo")
    with pytest.raises(ConfigurationError, match="http"):
        settings(measurement_id=MEASUREMENT, api_secret="s", host="ftp://x")
    with pytest.raises(ConfigurationError) as raised:
        settings(measurement_id="bad", api_secret=SECRET)
    assert SECRET not in str(raised.value)


def test_dedupe_helpers():
    assert spec.as_uuid("3f1c2b4a-0000-4000-8000-000000000000") == (
        "3f1c2b4a-0000-4000-8000-000000000000"
    )
    assert spec.as_uuid("x") == spec.as_uuid("x") != spec.as_uuid("y")
