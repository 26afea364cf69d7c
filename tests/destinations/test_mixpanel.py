"""The mixpanel destination against Mixpanel's own Python SDK, and its answers."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
from mixpanel import Consumer, Mixpanel, ServiceAccountCredentials

from segment_mw import events
from segment_mw.config import load_settings
from segment_mw.destinations import Outcome
from segment_mw.errors import ConfigurationError

from .tools import WHEN, body, make, send_one_request, stored, track

TOKEN = "mp-project-token"
ACCOUNT = {"service_account": "sa.user", "secret": "sa-secret-value", "project_id": "12345"}
ORDER = {"order_id": "o-1", "revenue": 42.5, "currency": "EUR"}
# Properties we add that the SDK leaves to the caller: what Segment's Mixpanel destination
# fills from the message's context and ids (the SDK knows no request).
FROM_CONTEXT = {
    "$current_url": "https://shop.example/checkout",
    "$referrer": "https://search.example/?q=shoes",
    "utm_campaign": "winter",
    "utm_source": "newsletter",
    "utm_medium": "email",
    "ip": "203.0.113.7",
    "$device_id": "anon-1",
    "$user_id": "u-1",
}


def sdk_import(sink, name: str, properties: dict) -> tuple[dict, object]:
    sink.answer = b'{"status": 1, "error": null}'  # what the SDK insists on reading
    credentials = ServiceAccountCredentials(
        ACCOUNT["service_account"], ACCOUNT["secret"], ACCOUNT["project_id"]
    )
    consumer = Consumer(import_url=f"{sink.url}/import", credentials=credentials, retry_limit=0)
    client = Mixpanel(TOKEN, consumer=consumer, credentials=credentials)
    client.import_data(None, "u-1", name, WHEN.timestamp(), properties)
    (request,) = sink.requests
    return body(request), request


def ours(sink, bodies, **options) -> tuple[list, object]:
    request = send_one_request("mixpanel", sink, bodies, **{"token": TOKEN, **ACCOUNT, **options})
    return body(request), request


def compare(sdk: dict, mine: dict) -> None:
    assert mine["event"] == sdk["event"]
    theirs, props = sdk["properties"], mine["properties"]
    for key in ("token", "distinct_id", "$insert_id"):
        assert props[key] == theirs[key], key
    # Deliberate: milliseconds (which /import takes) where the SDK sends float seconds.
    assert props["time"] == round(theirs["time"] * 1000)
    # Deliberate: mp_lib / $lib_version name the library that sent it.
    assert (props["mp_lib"], theirs["mp_lib"]) == ("segment_mw", "python")
    shared = set(theirs) - {"time", "mp_lib", "$lib_version"}
    for key in shared:
        assert props[key] == theirs[key], key
    assert set(props) - set(theirs) == set(FROM_CONTEXT)
    for key, value in FROM_CONTEXT.items():
        assert props[key] == value, key


def test_track_matches_the_sdks_import(sink, sinks):
    mid = events.new_message_id()
    sdk, sdk_request = sdk_import(sink, "Order Completed", {**ORDER, "$insert_id": mid})
    (mine,), request = ours(
        sinks(),
        [
            track(
                "Order Completed",
                ORDER,
                user_id="u-1",
                anonymous_id="anon-1",
                timestamp=WHEN,
                message_id=mid,
            )
        ],
    )
    compare(sdk, mine)
    # Same service-account credentials and project.
    assert request.headers["Authorization"] == sdk_request.headers["Authorization"]
    ours_query, sdk_query = (parse_qs(urlsplit(r.path).query) for r in (request, sdk_request))
    assert ours_query["project_id"] == sdk_query["project_id"] == ["12345"]
    # Deliberate: strict=1, so that Mixpanel validates each record and imports the valid
    # ones (the SDK posts a form without it); a gzipped JSON array where the SDK posts a
    # form field; and no ip=0: we send the user's own address as the ip property.
    assert ours_query["strict"] == ["1"]
    assert request.headers["Content-Encoding"] == "gzip"
    assert request.headers["Content-Type"] == "application/json"


def test_named_page_is_viewed_page_event(sink, sinks):
    mid = events.new_message_id()
    page_props = {"name": "Checkout", "category": "Shop"}
    sdk, _ = sdk_import(sink, "Viewed Shop Checkout Page", {**page_props, "$insert_id": mid})
    (mine,), _ = ours(
        sinks(),
        [
            stored(
                "page",
                events.page_fields("Checkout", {}, "Shop"),
                user_id="u-1",
                anonymous_id="anon-1",
                timestamp=WHEN,
                message_id=mid,
            )
        ],
    )
    compare(sdk, mine)


def identify(**ids) -> bytes:
    return stored(
        "identify", events.identify_fields({"plan": "pro", "seats": 3}), timestamp=WHEN, **ids
    )


def test_identify_merges_the_ids_and_sets_the_profile_as_the_sdk_does(sink, sinks):
    sink.answer = b'{"status": 1, "error": null}'
    client = Mixpanel(TOKEN, consumer=Consumer(people_url=f"{sink.url}/engage", retry_limit=0))
    client.people_set(
        "u-1", {"plan": "pro", "seats": 3}, meta={"$time": int(WHEN.timestamp() * 1000)}
    )
    (sdk_request,) = sink.requests
    sdk = body(sdk_request)
    mine_sink = sinks()
    mine_sink.answer = b'{"status": 1, "error": null}'
    dest = make("mixpanel", mine_sink.url, token=TOKEN)
    outcome = dest.send(
        [
            identify(user_id="u-1", anonymous_id="anon-1"),
            stored("group", events.group_fields("g", {}), user_id="u-1", timestamp=WHEN),
            stored("alias", events.alias_fields("a", "u-1"), user_id="u-1", timestamp=WHEN),
        ]
    )
    assert outcome == Outcome.partial({})
    profiled, imported = sorted(mine_sink.requests, key=lambda r: r.path)
    assert urlsplit(imported.path).path == "/import"
    assert urlsplit(profiled.path).path == "/engage"
    (event,) = body(imported)
    assert event["event"] == "$identify"
    assert event["properties"]["$identified_id"] == "u-1"
    assert event["properties"]["$anon_id"] == "anon-1"
    # A project token alone: it is the Basic user name, and no project_id is asked for.
    assert parse_qs(urlsplit(imported.path).query) == {"strict": ["1"]}
    assert imported.headers["Content-Encoding"] == "gzip"
    assert "Content-Encoding" not in profiled.headers  # /engage takes no gzip
    (update,) = body(profiled)
    for key in ("$token", "$distinct_id", "$set", "$time"):
        assert update[key] == sdk[key], key
    # Deliberate: the user's address, for the profile's location (the SDK knows none).
    assert set(update) - set(sdk) == {"$ip"}
    assert update["$ip"] == "203.0.113.7"


def test_identify_waits_for_both_parts(sink):
    dest = make("mixpanel", sink.url, token=TOKEN)
    sink.answer = b'{"status": 1, "error": null}'
    sink.fail(200, times=1, body=b'{"code": 200, "status": "OK"}')  # the import
    sink.fail(503, times=1, headers={"Retry-After": "2"})  # the profile update
    outcome = dest.send(
        [track("A", user_id="u-1", timestamp=WHEN), identify(user_id="u-1", anonymous_id="anon-1")]
    )
    assert outcome.ok
    assert outcome.pending == (1,)
    assert outcome.retry_after == 2.0


def test_identify_with_one_id_sets_traits_or_is_skipped(sink):
    sink.answer = b'{"status": 1, "error": null}'
    dest = make("mixpanel", sink.url, token=TOKEN)
    assert dest.send([identify(user_id="u-1")]) == Outcome.partial({})
    (request,) = sink.requests
    assert urlsplit(request.path).path == "/engage"
    # A service account alone cannot update profiles (they take the project token).
    accounts = make("mixpanel", sink.url, **ACCOUNT)
    assert accounts.send([identify(user_id="u-1")]) == Outcome.partial({})
    assert len(sink.requests) == 1


def test_a_strict_400_dead_letters_only_the_failed_records(sink):
    dest = make("mixpanel", sink.url, token=TOKEN)
    answer = {
        "code": 400,
        "error": "some data points in the request failed validation",
        "failed_records": [
            {
                "index": 1,
                "$insert_id": "x",
                "field": "properties.time",
                "message": "'properties.time' is invalid",
            }
        ],
        "num_records_imported": 2,
        "status": "Bad Request",
    }
    sink.fail(400, body=json.dumps(answer).encode())
    outcome = dest.send(
        [
            track("A", user_id="u", timestamp=WHEN),
            stored("group", events.group_fields("g", {}), user_id="u", timestamp=WHEN),  # skipped
            track("B", user_id="u", timestamp=WHEN),
            track("C", user_id="u", timestamp=WHEN),
        ]
    )
    assert outcome.ok
    assert outcome.refused == (
        (2, "Mixpanel refused it: properties.time: 'properties.time' is invalid"),
    )
    assert outcome.pending == ()


@pytest.mark.parametrize(
    ("status", "retry", "split"),
    [
        (429, True, False),
        (502, True, False),
        (401, False, False),
        (400, False, True),
        (413, False, True),
    ],
)
def test_answers(sink, status, retry, split):
    dest = make("mixpanel", sink.url, **ACCOUNT)
    sink.fail(status, body=b'{"error": "no", "status": 0}', headers={"Retry-After": "3"})
    outcome = dest.send([track("A", user_id="u"), track("B", user_id="u")])
    assert not outcome.ok
    assert (outcome.retry, outcome.split) == (retry, split)
    if retry:
        assert outcome.retry_after == 3.0
    text = repr(dest) + repr(dest.options) + (outcome.error or "")
    assert ACCOUNT["secret"] not in text


def test_options_are_checked_when_configured():
    def settings(**options):
        load_settings(
            {"QUEUE_URL": "memory://", "DESTINATIONS": {"MP": {"type": "mixpanel", **options}}},
            environ={},
        )

    with pytest.raises(ConfigurationError, match="token"):
        settings()
    with pytest.raises(ConfigurationError, match="project_id"):
        settings(service_account="sa", secret="s")
    with pytest.raises(ConfigurationError, match="secret"):
        settings(service_account="sa", project_id=1)
    settings(token=TOKEN)
    settings(**ACCOUNT)


def test_a_profile_update_refused_in_a_200_is_a_rejection(sink):
    # The profile API answers 200 to invalid updates; verbose=1 says so in the body.
    sink.answer = b'{"status": 0, "error": "$set must be an object"}'
    dest = make("mixpanel", sink.url, token=TOKEN)
    outcome = dest.send([identify(user_id="u-1")])
    assert (outcome.ok, outcome.retry) == (False, False)
    assert "$set must be an object" in outcome.error
    assert parse_qs(urlsplit(sink.requests[0].path).query) == {"verbose": ["1"]}
