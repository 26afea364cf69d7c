"""``X-Retry-Count`` counts how often a request's messages were sent before: never carried
by fresh messages sent after a retry, nor by messages parked without being sent."""

from __future__ import annotations

import time

import pytest

import segment_mw

from .conftest import wait_until


def ids_of(request) -> list[str]:
    return [e["messageId"] for e in request.body["batch"]]


@pytest.mark.parametrize("backend", ["redis", "sqlite"])
def test_only_messages_that_were_sent_carry_a_retry_count(backend, fast_settings, sink, tmp_path):
    settings = {
        **fast_settings,
        "IN_PROCESS_FLUSHER": False,
        # Five messages a read, split into requests of three and two by size.
        "BATCH_MAX_EVENTS": 5,
        "BATCH_MAX_BYTES": 1024,
        "DESTINATIONS": {"hook": {"type": "http", "url": f"{sink.url}/hook"}},
    }
    if backend == "sqlite":
        settings["QUEUE_URL"] = f"sqlite:///{tmp_path / 'q.sqlite3'}"
    client = segment_mw.configure(settings)
    ids = [segment_mw.track("Counted", {"n": n, "pad": "x" * 150}, user_id="u") for n in range(10)]
    sink.fail(503, times=1)
    report = client.deliverer.flush_destination("hook")
    assert report.retry_at is not None
    (failed,) = sink.attempts
    tried = ids_of(failed)
    assert tried == ids[: len(tried)]
    assert 1 < len(tried) < 5
    # Parked with it, never sent: the rest of that read, and the read ahead meanwhile
    # (Redis reads the next batch while it sends one; SQLite does not).
    assert client.status().destinations["hook"].retrying == (10 if backend == "redis" else 5)

    wait_until(lambda: time.time() >= report.retry_at, 70.0, "the back-off to end")
    while client.status().destinations["hook"].queued:
        client.deliverer.flush_destination("hook")
    retried = [r for r in sink.requests if "X-Retry-Count" in r.headers]
    assert [(r.headers["X-Retry-Count"], ids_of(r)) for r in retried] == [("1", tried)]
    delivered = [i for r in sink.requests for i in ids_of(r)]
    assert sorted(delivered) == sorted(ids)


def test_fresh_messages_after_a_retried_batch_carry_no_retry_count(redis_settings, sink):
    client = segment_mw.configure(
        {
            **redis_settings,
            "IN_PROCESS_FLUSHER": False,
            "DESTINATIONS": {"hook": {"type": "http", "url": f"{sink.url}/hook"}},
        }
    )
    sink.fail(500, times=2)
    first = segment_mw.track("Parked", user_id="u")
    report = client.deliverer.flush_destination("hook")
    wait_until(lambda: time.time() >= report.retry_at, 70.0, "the first back-off to end")
    report = client.deliverer.flush_destination("hook")  # the retry fails again
    assert sink.attempts[-1].headers["X-Retry-Count"] == "1"
    fresh = [segment_mw.track("Fresh", {"n": n}, user_id="u") for n in range(3)]
    client.producer.drain()
    wait_until(lambda: time.time() >= report.retry_at, 70.0, "the second back-off to end")
    client.deliverer.flush_destination("hook")
    by_first = {ids_of(r)[0]: r for r in sink.requests}
    assert by_first[first].headers["X-Retry-Count"] == "2"
    assert ids_of(by_first[fresh[0]]) == fresh
    assert "X-Retry-Count" not in by_first[fresh[0]].headers
