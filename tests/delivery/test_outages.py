"""Redis or the Celery broker going away while the app serves requests.

These use a redis-server of their own (never the shared one other tests use), killed and
restarted on the same port.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid

import pytest
from celery import Celery

import segment_mw
import segment_mw.celery
from segment_mw import api, events, metrics

from .conftest import FAST, free_port, message_ids, wait_until


@pytest.fixture
def own_redis_settings(redis_server, sink):
    return {
        "QUEUE_URL": redis_server.url,
        "QUEUE_PREFIX": f"t-{uuid.uuid4().hex[:8]}",
        **FAST,
        "IN_PROCESS_FLUSHER": True,  # deliver without Celery: only Redis is in question
        "DESTINATIONS": {"hook": {"type": "http", "url": f"{sink.url}/hook"}},
    }


def emit_timed(count: int, durable: bool) -> tuple[list[str], list[float]]:
    ids, latencies = [], []
    for n in range(count):
        start = time.perf_counter()
        if durable:
            ids.append(segment_mw.track("Outage", {"n": n}, user_id="u"))
        else:  # the buffered hand-off pageviews use
            fields = events.track_fields("Outage Buffered", {"n": n})
            ids.append(api.emit("track", fields, user_id="u", durable=False))
        latencies.append(time.perf_counter() - start)
    return ids, latencies


def test_redis_killed_requests_stay_fast_and_events_arrive_when_it_returns(
    own_redis_settings, redis_server, sink
):
    segment_mw.configure(own_redis_settings)
    before = [segment_mw.track("Warm", user_id="u") for _ in range(3)]
    wait_until(lambda: len(message_ids(sink)) >= 3, 10.0, "delivery before the outage")

    redis_server.kill()
    durable, durable_lat = emit_timed(30, durable=True)
    buffered, buffered_lat = emit_timed(30, durable=False)
    print(
        f"per call while Redis is down: durable max {max(durable_lat) * 1e3:.2f} ms, "
        f"buffered max {max(buffered_lat) * 1e3:.3f} ms"
    )
    counts = metrics.counts()
    assert counts.get("spilled", 0) == 30  # every durable write fell back to the spill
    wait_until(lambda: metrics.counts().get("push_failed", 0) >= 1, 10.0, "a failed push")
    producer = segment_mw.get_client().producer
    wait_until(lambda: producer.buffered == 60, 2.0, "all of them held in memory")
    assert "dropped" not in metrics.counts()

    redis_server.start()  # same port, empty: it lost everything it had
    wait_until(
        lambda: set(message_ids(sink)) >= set(durable + buffered),
        20.0,
        "the spilled events to reach the sink after Redis returned",
    )
    assert set(message_ids(sink)) == set(before + durable + buffered)
    assert segment_mw.get_client().producer.buffered == 0


def test_redis_frozen_requests_bounded_by_the_enqueue_timeout(
    own_redis_settings, redis_server, sink
):
    """SIGSTOP: Redis accepts connections but never answers (a hung server, a partition)."""
    segment_mw.configure({**own_redis_settings, "ENQUEUE_TIMEOUT": 0.02})
    before = [segment_mw.track("Warm", user_id="u")]
    wait_until(lambda: message_ids(sink) == before, 10.0, "delivery before the outage")
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        durable, latencies = emit_timed(10, durable=True)
        buffered, _ = emit_timed(10, durable=False)
        print(f"per call while Redis is frozen: max {max(latencies) * 1e3:.1f} ms")
        assert metrics.counts().get("spilled", 0) == 10
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    # A write that timed out may still have landed: duplicates are allowed, loss is not.
    wait_until(
        lambda: set(message_ids(sink)) >= set(durable + buffered),
        20.0,
        "the events held during the freeze",
    )
    assert set(message_ids(sink)) == set(before + durable + buffered)


def test_full_spill_drops_counts_and_logs_once(own_redis_settings, redis_server, sink, caplog):
    caplog.set_level(logging.WARNING, logger="segment_mw")
    segment_mw.configure({**own_redis_settings, "SPILL_MAX_EVENTS": 5})
    segment_mw.track("Warm", user_id="u")
    wait_until(lambda: len(message_ids(sink)) == 1, 10.0, "delivery before the outage")
    redis_server.kill()

    ids = [segment_mw.track("Spill", {"n": n}, user_id="u") for n in range(30)]
    producer = segment_mw.get_client().producer
    # Each one either held or dropped, and counted (polled: the writer's retry takes
    # the held ones out for a moment).
    wait_until(
        lambda: metrics.counts().get("dropped", 0) + producer.buffered == 30,
        2.0,
        "every event held or counted as dropped",
    )
    assert metrics.counts()["dropped"] >= 20
    spill_full = [r for r in caplog.records if "spill full" in r.getMessage()]
    assert len(spill_full) == 1, [r.getMessage() for r in caplog.records]
    held = 30 - metrics.counts()["dropped"]

    redis_server.start()
    wait_until(lambda: len(message_ids(sink)) >= 1 + held, 20.0, "the held events")
    assert set(message_ids(sink)[1:]) <= set(ids)
    assert len(message_ids(sink)) == 1 + held


def test_broker_down_for_the_kick_never_reaches_the_request_path(fast_settings, sink, celery_queue):
    down = Celery("segment_mw_broker_down", broker=f"redis://127.0.0.1:{free_port()}/0")
    down.conf.task_default_queue = celery_queue
    client = segment_mw.configure(
        {**fast_settings, "DESTINATIONS": {"hook": {"type": "http", "url": sink.url}}}
    )
    segment_mw.celery.install(down, watchdog=False)
    try:
        ids, latencies = [], []
        for n in range(20):
            start = time.perf_counter()
            ids.append(segment_mw.track("Kicked", {"n": n}, user_id="u"))
            latencies.append(time.perf_counter() - start)
            time.sleep(0.01)
        print(f"per call with the broker down: max {max(latencies) * 1e3:.2f} ms")
        wait_until(lambda: metrics.counts().get("kick_failed", 0) >= 1, 10.0, "a failed kick")
        # The events are safe in the queue; the failed kicks did not stall the writer.
        wait_until(lambda: client.status().destinations["hook"].queued == 20, 10.0, "queued")
        buffered = [
            api.emit(
                "track", events.track_fields("Kicked Buffered", {}), user_id="u", durable=False
            )
            for _ in range(20)
        ]
        wait_until(lambda: client.producer.buffered == 0, 5.0, "the writer to push")
        assert client.status().destinations["hook"].queued == 40
    finally:
        segment_mw.celery.uninstall()
        down.close()
    assert segment_mw.flush(20)
    assert sorted(message_ids(sink)) == sorted(ids + buffered)
