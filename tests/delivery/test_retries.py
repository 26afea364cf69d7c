"""Delivery under failure (SPEC §5): what is retried, how, and what is dead-lettered."""

from __future__ import annotations

import collections
import datetime as dt
import io
import json
import time

import pytest

import segment_mw
from segment_mw import cli

from .conftest import message_ids, wait_until


def hook(sink, **options):
    return {"hook": {"type": "http", "url": f"{sink.url}/hook", **options}}


def batch_ids(request) -> list[str]:
    return [e["messageId"] for e in request.body["batch"]]


def test_500_then_success_same_message_ids_fresh_sent_at_and_retry_count(setup, sink, worker):
    client = setup(DESTINATIONS=hook(sink))
    sink.fail(500, times=1)
    expected = [segment_mw.track("Retried", {"n": n}, user_id="u") for n in range(10)]
    with worker():
        wait_until(lambda: len(message_ids(sink)) >= 10, 15.0, "the retry to succeed")
    failed, retried = sink.attempts[0], sink.requests[0]
    assert sink.attempts.index(retried) > 0
    assert batch_ids(failed) == batch_ids(retried) == expected
    # The messages are the same bytes; only the envelope's sentAt is new.
    assert failed.body["batch"] == retried.body["batch"]
    first_sent = dt.datetime.fromisoformat(failed.body["sentAt"])
    second_sent = dt.datetime.fromisoformat(retried.body["sentAt"])
    assert second_sent > first_sent
    assert "X-Retry-Count" not in failed.headers
    assert retried.headers["X-Retry-Count"] == "1"
    status = client.status().destinations["hook"]
    assert status.delivered == 10
    assert status.retrying == 0
    assert status.dead == 0
    assert status.last_error.startswith("HTTP 500")


def test_429_retry_after_is_shared_by_every_worker(
    fast_settings, setup, sink, worker, worker_process
):
    settings = {**fast_settings, "DESTINATIONS": hook(sink)}
    client = setup(**settings)
    other = worker_process(settings, pool="solo")
    retry_after = 3.0
    sink.fail(429, times=1, headers={"Retry-After": str(int(retry_after))})
    other.wait_ready()
    with worker():
        ids = [segment_mw.track("Limited", {"n": 0}, user_id="u")]
        wait_until(lambda: sink.attempts, 10.0, "the first (rate-limited) attempt")
        limited_at = sink.attempts[0].at

        # The back-off is stored in the queue, where every worker and the command line see it
        # (once the worker has read the answer: the sink records the attempt before it).
        def stored_backoff() -> float | None:
            out = io.StringIO()
            assert cli.main(["status", "--json"], client=client, stdout=out) == 0
            return json.loads(out.getvalue())["destinations"]["hook"]["backoff_until"]

        backoff_until = wait_until(stored_backoff, 10.0, "the stored back-off")
        assert limited_at + retry_after - 0.5 <= backoff_until <= limited_at + retry_after + 5
        # Keep traffic coming while it backs off: both workers get flushes to run.
        while time.time() < limited_at + retry_after + 0.5:
            ids.append(segment_mw.track("Limited", {"n": len(ids)}, user_id="u"))
            time.sleep(0.1)
        wait_until(lambda: set(message_ids(sink)) >= set(ids), 15.0, "delivery after the wait")
    # Nobody, in either worker, knocked again before Retry-After had passed.
    later = [a.at for a in sink.attempts[1:]]
    assert later
    assert min(later) >= limited_at + retry_after - 0.25, (limited_at, later)
    # Both workers flush once the wait is over, so the retried batch need not be the first
    # request to arrive: find it by its message, and check that a batch of messages never
    # tried before carries no retry count.
    [retried, *_] = [a for a in sink.attempts[1:] if ids[0] in batch_ids(a)]
    assert retried.headers.get("X-Retry-Count") == "1"
    tried = set(batch_ids(sink.attempts[0]))
    for attempt in sink.attempts[1:]:
        if tried.isdisjoint(batch_ids(attempt)):
            assert "X-Retry-Count" not in attempt.headers, batch_ids(attempt)
        tried.update(batch_ids(attempt))
    assert other.output.count("Task segment_mw.flush") >= 1  # the other worker took part


def test_hanging_destination_times_out_and_does_not_hold_up_another(setup, sinks, worker):
    slow, fast = sinks(), sinks()
    client = setup(
        DESTINATIONS={
            "slow": {"type": "http", "url": f"{slow.url}/slow", "timeout": 0.5},
            "fast": {"type": "http", "url": f"{fast.url}/fast"},
        }
    )
    slow.fail(500, times=2, delay=3.0)  # hangs past the timeout, twice
    expected = [segment_mw.track("Hang", {"n": n}, user_id="u") for n in range(20)]
    with worker():
        wait_until(lambda: len(message_ids(fast)) >= 20, 10.0, "the fast destination")
        assert message_ids(slow) == []  # still hanging and retrying meanwhile
        status = client.status().destinations["slow"]
        assert "timeout" in (status.last_error or "")
        wait_until(lambda: len(message_ids(slow)) >= 20, 20.0, "the slow destination")
    assert sorted(message_ids(fast)) == sorted(expected)
    assert sorted(set(message_ids(slow))) == sorted(expected)
    assert len(slow.attempts) >= 3
    assert slow.requests[-1].headers.get("X-Retry-Count") == "2"


def test_one_poison_event_is_dead_lettered_alone(setup, sink, worker):
    client = setup(DESTINATIONS=hook(sink))
    sink.reject_when = lambda event: event.get("event") == "Poison"
    good, poison = [], None
    for n in range(20):
        if n == 13:
            poison = segment_mw.track("Poison", {"n": n}, user_id="u")
        else:
            good.append(segment_mw.track("Fine", {"n": n}, user_id="u"))
    with worker():
        wait_until(lambda: client.status().destinations["hook"].dead == 1, 15.0, "the dead letter")
        wait_until(lambda: len(message_ids(sink)) >= 19, 10.0, "the good events")
    got = message_ids(sink)
    assert sorted(got) == sorted(good)  # every good event, once
    assert poison not in got
    status = client.status().destinations["hook"]
    assert (status.delivered, status.dead, status.retrying) == (19, 1, 0)
    assert status.last_error.startswith("HTTP 400")
    # Rejected batches are split, never retried as they were: no back-off either.
    assert status.backoff_until is None
    assert all("X-Retry-Count" not in a.headers for a in sink.attempts)


@pytest.mark.parametrize("code", [401, 403])
def test_auth_failure_dead_letters_without_retrying(code, setup, sink, worker):
    client = setup(
        DESTINATIONS={"Segment": {"type": "segment", "write_key": "wk_bad", "host": sink.url}}
    )
    sink.fail(code, times=1)
    rejected = [segment_mw.track("Denied", {"n": n}, user_id="u") for n in range(10)]
    with worker():
        wait_until(lambda: client.status().destinations["Segment"].dead == 10, 15.0, "dead letters")
        later = [segment_mw.track("Allowed", {"n": n}, user_id="u") for n in range(5)]
        wait_until(lambda: len(message_ids(sink)) >= 5, 10.0, "the next events")
    assert batch_ids(sink.attempts[0]) == rejected
    assert sorted(message_ids(sink)) == sorted(later)  # the rejected ones were not retried
    status = client.status().destinations["Segment"]
    assert (status.delivered, status.dead, status.retrying) == (5, 10, 0)
    assert status.last_error.startswith(f"HTTP {code}")


def test_retry_budget_exhausted_dead_letters_then_replay_delivers_once(
    setup, sink, worker, celery_app
):
    client = setup(DESTINATIONS=hook(sink), RETRY_BUDGET=1.0)
    sink.fail(500, times=10_000)
    with worker():
        first = [segment_mw.track("Budget", {"n": n}, user_id="u") for n in range(10)]
        wait_until(lambda: client.status().destinations["hook"].dead == 10, 15.0, "dead letters")
    assert len(sink.attempts) >= 2  # retried before giving up
    status = client.status().destinations["hook"]
    assert "retry budget exhausted" in status.last_error
    assert (status.delivered, status.retrying, status.queued) == (0, 0, 0)

    # The destination is back; the command line puts the dead letters back and delivers.
    with sink.lock:
        sink.failures.clear()
    out = io.StringIO()
    assert cli.main(["replay", "--destination", "hook"], client=client, stdout=out) == 0
    assert "hook: 10 dead letter(s) put back" in out.getvalue()
    assert sorted(message_ids(sink)) == sorted(first)
    status = client.status().destinations["hook"]
    assert (status.delivered, status.dead) == (10, 0)

    # Again, replayed by the Celery task this time.
    sink.fail(500, times=10_000)
    second = [segment_mw.track("Budget Again", {"n": n}, user_id="u") for n in range(10)]
    with worker():
        wait_until(lambda: client.status().destinations["hook"].dead == 10, 15.0, "dead letters")
        with sink.lock:
            sink.failures.clear()
        celery_app.send_task("segment_mw.replay", kwargs={"destination": "hook"})
        wait_until(lambda: len(message_ids(sink)) >= 20, 15.0, "the replayed events")
        wait_until(lambda: client.status().depth == 0, 10.0, "the queue to drain")
    counts = collections.Counter(message_ids(sink))
    assert sorted(counts) == sorted(first + second)
    assert set(counts.values()) == {1}  # delivered once more, not twice
    status = client.status().destinations["hook"]
    assert (status.delivered, status.dead) == (20, 0)


@pytest.mark.parametrize("backend", ["redis", "sqlite"])
def test_parked_retries_are_not_claimed_as_orphans(backend, fast_settings, sink, tmp_path):
    """While one worker retries a parked batch, another's flush must not send it as well."""
    settings = {**fast_settings, "CLAIM_IDLE": 1.5, "IN_PROCESS_FLUSHER": False}
    if backend == "sqlite":
        settings["QUEUE_URL"] = f"sqlite:///{tmp_path / 'q.sqlite3'}"
    client = segment_mw.configure({**settings, "DESTINATIONS": hook(sink)})
    sink.fail(500, times=1)
    ids = [segment_mw.track("Parked", {"n": n}, user_id="u") for n in range(3)]
    client.producer.drain()
    report = client.deliverer.flush_destination("hook")
    parked_at = time.time()
    assert report.retry_at is not None
    assert client.status().destinations["hook"].retrying == 3
    # Past the back-off and idle past CLAIM_IDLE; another worker holds the retry lease.
    idle_at = max(report.retry_at, parked_at + 1.5) + 0.3
    wait_until(lambda: time.time() > idle_at, 10.0, "the back-off and CLAIM_IDLE to pass")
    assert client.queue.acquire("retry:hook", 30)
    report = client.deliverer.flush_destination("hook")
    assert report.delivered == 0
    assert message_ids(sink) == []
    assert client.status().destinations["hook"].retrying == 3
    client.queue.release("retry:hook")
    client.deliverer.flush_destination("hook")
    assert message_ids(sink) == ids
    assert sink.requests[0].headers["X-Retry-Count"] == "1"


def test_only_retried_messages_carry_x_retry_count(configure, sink):
    client = configure(DESTINATIONS=hook(sink), IN_PROCESS_FLUSHER=False)
    sink.fail(500, times=1)
    first = segment_mw.track("Parked", user_id="u")
    report = client.deliverer.flush_destination("hook")
    assert report.retry_at is not None
    second = segment_mw.track("Fresh", user_id="u")
    client.producer.drain()
    wait_until(lambda: time.time() >= report.retry_at, 70.0, "the back-off to end")
    client.deliverer.flush_destination("hook")
    by_id = {batch_ids(r)[0]: r for r in sink.requests}
    assert by_id[first].headers["X-Retry-Count"] == "1"
    assert "X-Retry-Count" not in by_id[second].headers


def test_a_destination_that_took_part_of_a_batch_is_sent_the_rest_alone(fast_settings, sink):
    """GA4 posts a request per client: the first went through, the second failed.

    The delivered message is acknowledged; the two the destination did not take (the one
    that failed and the one after it, not sent) are parked and sent after the back-off.
    """
    client = segment_mw.configure(
        {
            **fast_settings,
            "IN_PROCESS_FLUSHER": False,
            "DESTINATIONS": {
                "GA4": {
                    "type": "ga4",
                    "host": sink.url,
                    "measurement_id": "G-TEST12345",
                    "api_secret": "mp-api-secret-value",
                }
            },
        }
    )
    for n in range(3):
        segment_mw.track("Step", {"n": n}, anonymous_id=f"anon-{n}")
    client.producer.drain()
    sink.fail(200, times=1)  # the first client's request goes through
    sink.fail(503, times=1, headers={"Retry-After": "1"})
    report = client.deliverer.flush_destination("GA4")
    assert (report.delivered, report.dead) == (1, 0)
    assert report.retry_at is not None
    status = client.status().destinations["GA4"]
    assert (status.queued, status.retrying) == (2, 2)

    wait_until(lambda: time.time() >= report.retry_at, 30.0, "the back-off to end")
    report = client.deliverer.flush_destination("GA4")
    assert (report.delivered, report.dead, report.retry_at) == (2, 0, None)
    sent = [e["params"]["n"] for r in sink.attempts for e in r.body["events"]]
    assert sent == [0, 1, 1, 2]  # the first one once, then the other two in order
    status = client.status().destinations["GA4"]
    assert (status.queued, status.delivered) == (0, 3)


def test_a_back_off_parks_what_was_read_ahead_and_the_retry_sends_it_once(fast_settings, sink):
    client = segment_mw.configure(
        {
            **fast_settings,
            "IN_PROCESS_FLUSHER": False,
            "BATCH_MAX_EVENTS": 5,  # reads of five: one sent, one or two more in hand
            "DESTINATIONS": hook(sink),
        }
    )
    expected = [segment_mw.track("Parked", {"n": n}, user_id="u") for n in range(33)]
    client.producer.drain()
    sink.fail(200, times=2)  # two batches go out quickly: two are read ahead from then on
    sink.fail(503, times=1)
    report = client.deliverer.flush_destination("hook")
    assert report.retry_at is not None
    assert not report.more
    assert [batch_ids(r) for r in sink.attempts] == [
        expected[0:5],
        expected[5:10],
        expected[10:15],
    ]
    status = client.status().destinations["hook"]
    # The batch that failed, and the reads ahead that had started (those not started
    # are dropped): parked, none left held by the reader, the rest never read.
    assert status.queued == 23
    assert status.retrying in (5, 10, 15)
    assert client.queue.oldest_pending_idle("hook") is None

    wait_until(lambda: time.time() >= report.retry_at, 30.0, "the back-off to end")
    wait_until(
        lambda: (
            client.deliverer.flush_destination("hook")
            and not client.status().destinations["hook"].queued
        ),
        30.0,
        "the rest to be delivered",
    )
    # The sink answered the first two from its list of answers, the rest as requests.
    delivered = [i for r in [*sink.attempts[:2], *sink.requests] for i in batch_ids(r)]
    assert delivered == expected  # each once, in order


def test_what_was_read_ahead_is_delivered_when_the_time_is_up(fast_settings, sink):
    client = segment_mw.configure(
        {
            **fast_settings,
            "IN_PROCESS_FLUSHER": False,
            "CLAIM_IDLE": 6.0,  # the hook's timeout is 4 s (CLAIM_IDLE / 1.5)
            "BATCH_MAX_EVENTS": 5,
            "FLUSH_TIME_LIMIT": 1.5,  # up while the first batch is still being sent
            "DESTINATIONS": hook(sink),
        }
    )
    expected = [segment_mw.track("Late", {"n": n}, user_id="u") for n in range(30)]
    client.producer.drain()
    sink.delay = 2.5
    report = client.deliverer.flush_destination("hook")
    assert report.more
    # The batch read first and the one read ahead before the time was up (a batch this
    # slow is read only one ahead); nothing more.
    assert report.delivered == 10
    assert [i for r in sink.requests for i in batch_ids(r)] == expected[:10]
    assert client.queue.oldest_pending_idle("hook") is None  # nothing read is left held
    assert client.status().destinations["hook"].queued == 20


def test_a_short_read_ends_the_reading_ahead(fast_settings, sink):
    client = segment_mw.configure(
        {
            **fast_settings,
            "IN_PROCESS_FLUSHER": False,
            "BATCH_MAX_EVENTS": 5,
            "DESTINATIONS": hook(sink),
        }
    )
    expected = [segment_mw.track("Few", {"n": n}, user_id="u") for n in range(13)]
    client.producer.drain()
    reads = []
    real = client.queue.read_new

    def counted(*args, **kwargs):
        got = real(*args, **kwargs)
        reads.append(len(got))
        return got

    client.queue.read_new = counted  # type: ignore[method-assign]
    report = client.deliverer.flush_destination("hook")
    assert (report.delivered, report.more) == (13, False)
    # Nothing is read once a read came back short; one queued before it may come back empty.
    assert reads[:3] == [5, 5, 3]
    assert reads[3:] in ([], [0])
    assert [i for r in sink.requests for i in batch_ids(r)] == expected

    reads.clear()
    more = [segment_mw.track("Few", {"n": n}, user_id="u") for n in range(3)]
    client.producer.drain()
    report = client.deliverer.flush_destination("hook")
    assert (report.delivered, report.more) == (3, False)
    assert reads == [3]  # a log holding less than a read: no read ahead at all
    assert [i for r in sink.requests for i in batch_ids(r)][13:] == more
