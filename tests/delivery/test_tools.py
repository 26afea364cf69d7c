"""The analytics tools' destinations through a real Celery worker: routing by
``integrations``, back-off on 429, Mixpanel's partial 400, Amplitude's 413 split and a
GA4 request that fails after another went through."""

from __future__ import annotations

import json

import segment_mw

from ..destinations.tools import body
from .conftest import wait_until

ORDER = {
    "order_id": "o-1",
    "total": 19.99,
    "currency": "EUR",
    "products": [{"product_id": "p-1", "name": "Sock", "price": 19.99, "quantity": 1}],
}


def ga4(sink):
    return {"type": "ga4", "host": sink.url, "measurement_id": "G-TEST12345", "api_secret": "s"}


def tool_events(sink, key: str) -> list[dict]:
    with sink.lock:
        requests = list(sink.requests)
    return [e for r in requests for e in _events(body(r), key)]


def _events(payload, key):
    return payload if isinstance(payload, list) else payload.get(key, [])


def test_payments_go_to_ga4_and_the_archive_pageviews_to_posthog_only(
    setup, sinks, worker, tmp_path
):
    ga, ph = sinks(), sinks()
    archive = tmp_path / "archive.jsonl"
    client = setup(
        DESTINATIONS={
            "GA4": ga4(ga),
            "PostHog": {"type": "posthog", "host": ph.url, "api_key": "phc_k"},
            "Archive": {"type": "jsonl", "path": str(archive)},
        }
    )
    paid = segment_mw.track(
        "Order Completed",
        ORDER,
        user_id="u-1",
        anonymous_id="anon-1",
        integrations={"All": False, "GA4": True, "Archive": True},
    )
    viewed = segment_mw.page(
        "Home", anonymous_id="anon-1", integrations={"All": False, "PostHog": True}
    )
    with worker():
        wait_until(lambda: tool_events(ga, "events"), 30.0, "GA4's purchase")
        wait_until(lambda: tool_events(ph, "batch"), 30.0, "PostHog's pageview")
        wait_until(lambda: archive.exists() and archive.read_text().strip(), 30.0, "the archive")
        wait_until(lambda: client.status().destinations["PostHog"].delivered == 1, 30.0, "acks")
    (purchase,) = tool_events(ga, "events")
    assert purchase["name"] == "purchase"
    assert purchase["params"]["transaction_id"] == "o-1"
    (pageview,) = tool_events(ph, "batch")
    assert pageview["event"] == "$pageview"
    assert pageview["uuid"] == viewed
    lines = [json.loads(line) for line in archive.read_text().splitlines()]
    assert [m["messageId"] for m in lines] == [paid]
    status = client.status().destinations
    assert (status["GA4"].delivered, status["PostHog"].delivered) == (1, 1)


def test_posthog_429_backs_off_and_resends_the_same_uuids(setup, sink, worker):
    client = setup(
        DESTINATIONS={"PostHog": {"type": "posthog", "host": sink.url, "api_key": "phc_k"}}
    )
    sink.fail(429, times=1, headers={"Retry-After": "2"})
    ids = [segment_mw.track("Clicked", {"n": n}, user_id="u") for n in range(5)]
    with worker():
        wait_until(lambda: len(tool_events(sink, "batch")) >= 5, 30.0, "delivery after 429")
    limited, *later = sink.attempts
    assert [e["uuid"] for e in body(limited)["batch"]] == ids
    assert later
    assert min(a.at for a in later) >= limited.at + 2 - 0.25
    assert sorted(e["uuid"] for e in tool_events(sink, "batch")) == sorted(ids)
    assert client.status().destinations["PostHog"].delivered == 5


def test_mixpanel_partial_400_dead_letters_only_the_failed_record(setup, sink, worker):
    client = setup(
        DESTINATIONS={"Mixpanel": {"type": "mixpanel", "host": sink.url, "token": "tok"}}
    )
    answer = {
        "code": 400,
        "num_records_imported": 4,
        "status": "Bad Request",
        "failed_records": [{"index": 2, "field": "properties.time", "message": "bad"}],
    }
    sink.fail(400, times=1, body=json.dumps(answer).encode())
    ids = [segment_mw.track("Clicked", {"n": n}, user_id="u") for n in range(5)]
    with worker():
        wait_until(lambda: client.status().destinations["Mixpanel"].dead == 1, 30.0, "dead")
        wait_until(lambda: client.status().destinations["Mixpanel"].delivered == 4, 30.0, "4")
        # The four imported are not sent again: the next request holds only a new event.
        later = segment_mw.track("Later", user_id="u")
        wait_until(lambda: tool_events(sink, "batch") or len(sink.requests), 30.0, "later")
    first = body(sink.attempts[0])
    assert [e["properties"]["$insert_id"] for e in first] == ids
    (request,) = sink.requests
    assert [e["properties"]["$insert_id"] for e in body(request)] == [later]
    status = client.status().destinations["Mixpanel"]
    assert (status.delivered, status.dead, status.retrying) == (5, 1, 0)


def test_amplitude_413_splits_the_batch(setup, sink, worker):
    client = setup(
        DESTINATIONS={"Amplitude": {"type": "amplitude", "host": sink.url, "api_key": "k"}}
    )
    sink.fail(413, times=1, body=b'{"code": 413, "error": "Payload too large"}')
    ids = [segment_mw.track("Clicked", {"n": n}, user_id="user-1") for n in range(4)]
    with worker():
        wait_until(
            lambda: client.status().destinations["Amplitude"].delivered == 4, 30.0, "the halves"
        )
    sizes = [len(body(a)["events"]) for a in sink.attempts]
    assert sizes == [4, 2, 2]
    assert sorted(e["insert_id"] for e in tool_events(sink, "events")) == sorted(ids)
    assert client.status().destinations["Amplitude"].dead == 0


def test_ga4_retries_only_the_client_whose_request_failed(setup, sink, worker):
    client = setup(DESTINATIONS={"GA4": ga4(sink)})
    sink.fail(204, times=1)  # the first client's request: delivered
    sink.fail(503, times=1)  # the second's: to be retried alone
    first = segment_mw.track("Clicked", anonymous_id="anon-a")
    second = segment_mw.track("Clicked", anonymous_id="anon-b")
    with worker():
        wait_until(lambda: client.status().destinations["GA4"].delivered == 2, 30.0, "both")
    sent = [
        (body(a)["client_id"], e["params"]["event_id"])
        for a in sink.attempts
        for e in body(a)["events"]
    ]
    assert sent.count(("anon-a", first)) == 1
    assert sent.count(("anon-b", second)) == 2
    assert client.status().destinations["GA4"].dead == 0


def test_calls_a_tool_lacks_are_acknowledged_and_counted_in_status(setup, sink, worker):
    client = setup(DESTINATIONS={"GA4": ga4(sink)})
    segment_mw.identify("u-1", {"plan": "pro"}, anonymous_id="anon-1")
    segment_mw.track("Clicked", anonymous_id="anon-1")
    with worker():
        wait_until(lambda: client.status().counters.get("skipped_ga4") == 1, 30.0, "the count")
        # Acknowledged with the track: done with at this destination, never retried.
        wait_until(lambda: client.status().destinations["GA4"].delivered == 2, 30.0, "acks")
    status = client.status().destinations["GA4"]
    assert (status.dead, status.retrying) == (0, 0)
    assert [e["name"] for e in tool_events(sink, "events")] == ["clicked"]
