"""Storage stays bounded: the log with no destination, dead letters by count and by age, a
Redis that can evict keys or is too old, and ``status`` without reading the backlog."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
import redis

import segment_mw
import segment_mw.queue.redis as redis_backend
from segment_mw import cli, events, metrics
from segment_mw.errors import ConfigurationError
from segment_mw.queue import open_queue

from .conftest import RedisServer, message_ids, wait_until


def page_entry(n: int) -> events.Entry:
    return events.build(
        "page",
        events.page_fields("Home", {"path": f"/p/{n}"}, None),
        anonymous_id="0f7cbb0e-0d4b-4b53-9d2a-5b3f3c0c0a11",
    )


def queue_url(backend: str, redis_url: str, tmp_path: Any) -> str:
    return {
        "redis": redis_url,
        "sqlite": f"sqlite:///{tmp_path / 'q.sqlite3'}",
        "memory": "memory://",
    }[backend]


# -- the log, with no destination configured ------------------------------------------------
def test_with_no_destination_the_log_does_not_keep_50000_events(redis_settings, redis_client):
    # A staging web process: no write key. Pageviews come faster than the writer pushes.
    client = segment_mw.configure({**redis_settings, "SPILL_MAX_EVENTS": 100_000})
    stream = f"{redis_settings['QUEUE_PREFIX']}:log"
    entry = page_entry(0)
    for _ in range(49_000):
        client.emit(entry, durable=False)  # pageviews: buffered, pipelined
    for n in range(1_000):
        segment_mw.track("Signed Up", user_id=f"u{n}")  # direct calls: durable writes
    assert client.producer.drain(30.0)
    # The writer thread trims behind its pushes; nothing else has to run.
    wait_until(lambda: redis_client.xlen(stream) == 0, 15.0, "the log to be trimmed")
    assert client.status().stored == 0


@pytest.mark.parametrize("backend", ["redis", "sqlite", "memory"])
def test_with_no_destination_every_backend_trims(backend, redis_settings, tmp_path):
    client = segment_mw.configure(
        {**redis_settings, "QUEUE_URL": queue_url(backend, redis_settings["QUEUE_URL"], tmp_path)}
    )
    for n in range(2_000):
        client.emit(page_entry(n), durable=False)
    segment_mw.track("Signed Up", user_id="u")
    client.producer.close()  # at exit it trims once more, whatever the interval
    assert client.queue.status([]).stored == 0


@pytest.mark.parametrize("backend", ["redis", "sqlite"])
def test_trimming_keeps_what_a_destination_named_elsewhere_needs(backend, redis_settings, tmp_path):
    """Web processes without the write key, workers with it: the workers' events stay."""
    url = queue_url(backend, redis_settings["QUEUE_URL"], tmp_path)
    worker_side = open_queue(url, prefix=redis_settings["QUEUE_PREFIX"])
    worker_side.ensure_destinations(["Segment"])
    client = segment_mw.configure({**redis_settings, "QUEUE_URL": url})
    for n in range(500):
        client.emit(page_entry(n), durable=False)
    client.producer.close()
    status = worker_side.status(["Segment"])
    assert (status.stored, status.destinations["Segment"].queued) == (500, 500)
    records = worker_side.read_new("Segment", "w:1", 1000)
    assert len(records) == 500
    worker_side.ack("Segment", [r.id for r in records], delivered=len(records))
    worker_side.trim()
    assert worker_side.status(["Segment"]).stored == 0
    worker_side.close()


# -- dead letters -----------------------------------------------------------------------------
def test_a_bad_write_key_keeps_only_the_newest_dead_letters(
    setup, worker, sink, redis_client, queue_prefix
):
    client = setup(
        DESTINATIONS={"Segment": {"type": "segment", "write_key": "wk_bad", "host": sink.url}},
        DEAD_LETTER_MAX_EVENTS=100,
        BATCH_MAX_EVENTS=250,
        ENQUEUE_TIMEOUT=2.0,  # a loaded machine: no write spilled and pushed again
    )
    sink.fail(401, times=1_000_000)  # every batch, for as long as the test runs
    ids = [segment_mw.track("Denied", {"n": n}, user_id="u") for n in range(1_000)]
    with worker():

        def all_dead() -> bool:
            dest = client.status().destinations["Segment"]
            return dest.queued == 0 and dest.dead + dest.dead_dropped == 1_000

        wait_until(all_dead, 30.0, "every event dead-lettered or dropped")
    dest = client.status().destinations["Segment"]
    assert (dest.dead, dest.dead_dropped, dest.delivered) == (100, 900, 0)
    # Redis itself holds the hundred newest, not a copy of the backlog.
    rows = redis_client.xrange(f"{queue_prefix}:dead:Segment")
    kept = [json.loads(fields[b"e"])["messageId"] for _, fields in rows]
    assert kept == ids[-100:]
    assert len(sink.attempts) >= 4
    assert message_ids(sink) == []

    out = io.StringIO()
    assert cli.main(["status"], client=client, stdout=out) == 0
    assert "Segment: queued=0 delivered=0 retrying=0 dead=100 (dropped by the caps: 900)" in (
        out.getvalue()
    )
    out = io.StringIO()
    assert cli.main(["status", "--json"], client=client, stdout=out) == 0
    as_json = json.loads(out.getvalue())["destinations"]["Segment"]
    assert (as_json["dead"], as_json["dead_dropped"]) == (100, 900)


def test_dead_letters_older_than_the_age_cap_are_dropped_without_new_traffic(
    fast_settings, setup, sink, worker_process
):
    settings = {
        **fast_settings,
        "DESTINATIONS": {"hook": {"type": "http", "url": sink.url}},
        "DEAD_LETTER_MAX_AGE": 1,
    }
    client = setup(**settings)
    sink.reject_when = lambda event: True  # 400 for everything: split down, dead-lettered
    for n in range(4):
        segment_mw.track("Rejected", {"n": n}, user_id="u")
    worker = worker_process(settings)
    wait_until(lambda: client.status().destinations["hook"].dead == 4, 30.0, "dead letters", worker)
    # Nothing else is sent: the worker's watchdog does the housekeeping.
    wait_until(
        lambda: client.status().destinations["hook"].dead_dropped == 4, 15.0, "the age cap", worker
    )
    assert client.status().destinations["hook"].dead == 0


@pytest.mark.parametrize("backend", ["redis", "sqlite", "memory"])
def test_dead_letter_caps_on_every_backend(backend, redis_settings, tmp_path):
    url = queue_url(backend, redis_settings["QUEUE_URL"], tmp_path)
    client = segment_mw.configure(
        {
            **redis_settings,
            "QUEUE_URL": url,
            "DESTINATIONS": {"hook": {"type": "log"}},
            "DEAD_LETTER_MAX_EVENTS": 3,
        }
    )
    queue = client.queue
    queue.ensure_destinations(["hook"])
    queue.push([page_entry(n) for n in range(10)])
    records = queue.read_new("hook", "w:1", 10)
    assert queue.dead_letter("hook", records[:6], "HTTP 400") == 3
    assert queue.dead_letter("hook", records[6:], "HTTP 400") == 4
    status = queue.status(["hook"]).destinations["hook"]
    assert (status.dead, status.dead_dropped, status.queued) == (3, 7, 0)
    assert queue.replay("hook") == 3  # the three newest
    replayed = queue.read_new("hook", "w:1", 10)
    assert [r.body for r in replayed] == [r.body for r in records[7:]]


# -- the Redis server ---------------------------------------------------------------------------
@pytest.fixture
def private_redis(tmp_path: Any) -> Any:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


def test_status_says_when_redis_can_evict_the_queue(private_redis):
    admin = redis.Redis(port=private_redis.port)
    client = segment_mw.configure(
        {"QUEUE_URL": private_redis.url, "DESTINATIONS": {"hook": {"type": "log"}}}
    )
    assert client.status().warnings == []

    admin.config_set("maxmemory-policy", "allkeys-lru")
    admin.config_set("maxmemory", "100mb")
    (warning,) = client.status().warnings
    assert "allkeys-lru" in warning
    assert "evict the queue itself" in warning
    assert "noeviction" in warning
    out = io.StringIO()
    assert cli.main(["status"], client=client, stdout=out) == 0
    assert f"warning: {warning}" in out.getvalue()
    out = io.StringIO()
    assert cli.main(["status", "--json"], client=client, stdout=out) == 0
    assert json.loads(out.getvalue())["warnings"] == [warning]

    # volatile-* evicts only keys with a TTL: the leases, not the queue.
    admin.config_set("maxmemory-policy", "volatile-lru")
    (warning,) = client.status().warnings
    assert "leases" in warning
    assert "sent twice" in warning
    assert "queue itself has no TTL" in warning
    admin.config_set("maxmemory", "0")
    (warning,) = client.status().warnings
    assert "maxmemory is 0 now" in warning


def test_an_evicting_redis_is_logged_at_first_connect(private_redis, caplog):
    redis.Redis(port=private_redis.port).config_set("maxmemory-policy", "allkeys-random")
    segment_mw.configure({"QUEUE_URL": private_redis.url, "QUEUE_PREFIX": "evict"})
    with caplog.at_level(logging.WARNING, logger="segment_mw"):
        segment_mw.track("Signed Up", user_id="u")
    assert any("allkeys-random" in r.getMessage() for r in caplog.records)


def test_a_redis_older_than_needed_is_refused_at_first_connect(
    redis_settings, redis_client, monkeypatch, caplog
):
    """The server is real; the minimum is raised above it, as an older server would be."""
    version = redis_client.info("server")["redis_version"]
    monkeypatch.setattr(redis_backend, "MIN_REDIS_VERSION", (99, 0))
    client = segment_mw.configure({**redis_settings, "DESTINATIONS": {"hook": {"type": "log"}}})
    with caplog.at_level(logging.WARNING, logger="segment_mw"):
        message_id = segment_mw.track("Order Completed", user_id="u")  # never raises
    assert message_id
    assert metrics.counts()["misconfigured"] >= 1
    logged = [r.getMessage() for r in caplog.records if "needs Redis 99.0" in r.getMessage()]
    assert logged
    assert f"runs version {version}" in logged[0]
    with pytest.raises(ConfigurationError, match=r"needs Redis 99\.0 or later"):
        client.status()
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    assert cli.main(["status"], client=client, stdout=io.StringIO()) == 2
    assert "needs Redis 99.0 or later" in err.getvalue()
    assert redis_client.keys(f"{redis_settings['QUEUE_PREFIX']}:*") == []  # nothing was written

    # The server is replaced: the event waited in the spill and now goes in.
    monkeypatch.setattr(redis_backend, "MIN_REDIS_VERSION", (7, 0))
    assert client.producer.drain(10.0)
    assert client.status().destinations["hook"].queued == 1
