"""No duplicates of our own making, through real workers to the sink: writes Redis stored
but answered late, a pipeline broken part-way, and a destination slower than half of
CLAIM_IDLE while another worker looks for orphans."""

from __future__ import annotations

import collections
import time

import segment_mw
from segment_mw import api, events, metrics

from ..slow_redis import slow_redis
from .conftest import message_ids, wait_until


def hook(sink, **options):
    return {"hook": {"type": "http", "url": f"{sink.url}/hook", **options}}


def test_durable_writes_redis_answered_late_are_delivered_once(setup, sink, worker):
    with slow_redis(late=0.2, delay=0.03, seed=15) as proxy:
        # The request path's writes time out after ENQUEUE_TIMEOUT (10 ms) when their reply
        # is 30 ms late, though Redis stored them.
        client = setup(QUEUE_URL=proxy.url(), DESTINATIONS=hook(sink), ENQUEUE_TIMEOUT=0.01)
        with worker():
            ids = [segment_mw.track("Charged", {"n": n}, user_id="u") for n in range(300)]
            wait_until(lambda: set(message_ids(sink)) >= set(ids), 30.0, "every event")
            wait_until(lambda: client.producer.buffered == 0, 10.0, "the spill to empty")
    assert proxy.delayed > 0
    assert metrics.counts().get("spilled", 0) > 0  # late replies did make writes time out
    counts = collections.Counter(message_ids(sink))
    assert sorted(counts) == sorted(ids)
    assert max(counts.values()) == 1, [i for i, c in counts.items() if c > 1][:5]


def test_a_pipeline_broken_part_way_is_delivered_once(setup, sink, worker):
    with slow_redis() as proxy:
        # Pushes gathered for three seconds: one large pipeline, broken part-way (however
        # slowly a loaded machine emits the 600, they are all buffered before the push).
        client = setup(QUEUE_URL=proxy.url(), DESTINATIONS=hook(sink), BUFFER_MAX_DELAY=3.0)
        first = segment_mw.track("First", user_id="u")
        wait_until(lambda: client.producer.buffered == 0, 10.0, "the first push")
        proxy.cut(after=200_000, larger_than=16_384)  # the first 250 events get through
        ids = [first]
        for n in range(600):
            fields = events.track_fields("Viewed", {"n": n, "pad": "x" * 300})
            ids.append(api.emit("track", fields, user_id="u", durable=False))
        wait_until(lambda: proxy.broken == 1, 30.0, "the pipeline to break")
        with worker():
            wait_until(lambda: set(message_ids(sink)) >= set(ids), 30.0, "every event")
    assert metrics.counts().get("push_failed", 0) >= 1
    counts = collections.Counter(message_ids(sink))
    assert sorted(counts) == sorted(ids)
    assert max(counts.values()) == 1, [i for i, c in counts.items() if c > 1][:5]


def test_a_batch_sent_slowly_is_never_claimed_by_another_worker(
    fast_settings, setup, sink, worker_process, redis_client
):
    # The destination answers in 0.55 x CLAIM_IDLE: a batch read ahead while the one
    # before it is sent waits that long, then takes as long again to send, idle past
    # CLAIM_IDLE by then unless it is touched before it is sent.
    claim_idle = 4.5
    settings = {
        **fast_settings,
        "CLAIM_IDLE": claim_idle,
        "BATCH_MAX_EVENTS": 50,
        "DESTINATIONS": hook(sink, timeout=claim_idle / 1.5),
    }
    client = setup(celery=False, **settings)
    sink.delay = 0.55 * claim_idle
    ids = [segment_mw.track("Slow", {"n": n}, user_id="u") for n in range(100)]
    first = worker_process(settings)  # reads both batches: one to send, one ahead
    wait_until(lambda: sink.attempts, 30.0, "the worker's first send", first)

    def all_read() -> bool:
        (group,) = redis_client.xinfo_groups(f"{settings['QUEUE_PREFIX']}:log")
        return group["lag"] == 0 and group["pending"] == 100

    wait_until(all_read, 10.0, "the read ahead: nothing left for another worker to read")
    # Another worker's flushes, looking for orphans the whole time the first one sends.
    deadline = time.monotonic() + 30
    while client.status().destinations["hook"].queued and time.monotonic() < deadline:
        client.deliverer.flush_destination("hook")
        time.sleep(0.1)
    # Counted over first sends: a send that timed out on a loaded machine is retried (with
    # X-Retry-Count), which is at-least-once delivery, not a batch claimed while in flight.
    first_sends = [r for r in sink.requests if "X-Retry-Count" not in r.headers]
    counts = collections.Counter(e["messageId"] for r in first_sends for e in r.body["batch"])
    assert sorted(counts) == sorted(ids)
    assert max(counts.values()) == 1
