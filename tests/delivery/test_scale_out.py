"""Redis Cluster and Sentinel, for real: private servers started by the session fixtures.

Producers in several processes and a real Celery worker (its broker the shared local
Redis, not the cluster) deliver 20,000 events to a local sink while a master is killed
and failed over; with QUEUE_WAIT_REPLICAS every event whose call returned arrives.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest

from segment_mw.config import load_settings
from segment_mw.events import Entry
from segment_mw.queue import Backoff, open_queue
from segment_mw.queue.sharded import ShardedRedisQueue

from ..topologies import READY, Cluster, SentinelSetup, poll
from . import _producers
from .conftest import BROKER, message_ids, wait_until

pytestmark = pytest.mark.scale_out

PRODUCERS = 4
PER_PRODUCER = 5000  # 20,000 in all
PACE = 0.0008  # s between calls: the run lasts long enough to kill a master inside it


def _entries(users: int, per_user: int) -> list[Entry]:
    return [
        Entry(
            b'{"type":"track","userId":"u%d","n":%d}' % (u, n),
            None,
            f"u{u}-{n}",
            "track",
            f"u{u}",
        )
        for n in range(per_user)
        for u in range(users)
    ]


def test_cluster_shards_spread_over_every_master_keeping_each_users_order(
    cluster: Cluster, queue_prefix: str
) -> None:
    queue = open_queue(cluster.url, prefix=queue_prefix)
    try:
        assert isinstance(queue, ShardedRedisQueue)
        assert queue.shards == 3  # the default for a cluster URL
        queue.ensure_destinations(["A", "B"])
        pushed = _entries(60, 5)
        queue.push(pushed)
        holders = {cluster.master_of(s.stream.encode()).port for s in queue._written}
        assert holders == {m.port for m in cluster.masters()}  # every master has a shard
        for node in cluster.masters():
            with contextlib.closing(node.client()) as client:
                assert list(client.scan_iter(f"*{queue_prefix}*", count=1000))

        for name in ("A", "B"):
            got = queue.read_new(name, "c1", 1000)
            assert sorted(r.body for r in got) == sorted(e.body for e in pushed)
            by_user: dict[bytes, list[int]] = {}
            for r in got:
                doc = json.loads(r.body)
                by_user.setdefault(doc["userId"], []).append(doc["n"])
            assert all(ns == sorted(ns) for ns in by_user.values())  # each user in order
            queue.ack(name, [r.id for r in got], delivered=len(got))
        status = queue.status(["A", "B"])
        assert status.depth == 0
        assert {n: d.delivered for n, d in status.destinations.items()} == {"A": 300, "B": 300}
        queue.trim()
        assert queue.status(["A", "B"]).stored == 0
    finally:
        queue.close()


def test_cluster_dead_letters_replay_status_and_forget_span_the_shards(
    cluster: Cluster, queue_prefix: str
) -> None:
    queue = open_queue(cluster.url, prefix=queue_prefix)
    try:
        queue.ensure_destinations(["A", "B"])
        queue.push(_entries(30, 2))
        got = queue.read_new("A", "c1", 1000)
        assert len({r.id.partition("/")[0] for r in got}) == 3  # from every shard
        assert queue.dead_letter("A", got, "HTTP 400") == 0
        status = queue.status(["A", "B"])
        assert status.destinations["A"].dead == 60
        assert status.destinations["A"].last_error == "HTTP 400"
        assert status.destinations["B"].queued == 60

        assert queue.replay("A") == 60
        again = queue.read_new("A", "c1", 1000)
        assert sorted(r.body for r in again) == sorted(r.body for r in got)
        assert {r.only for r in again} == {"A"}
        queue.ack("A", [r.id for r in again], delivered=60)
        assert queue.read_new("B", "c1", 1000) != []  # B never sees the replayed copies
        assert queue.read_new("B", "c1", 1000) == []

        queue.set_backoff("B", Backoff(until=time.time() + 60, attempts=2), "HTTP 503")
        assert queue.status(["B"]).destinations["B"].last_error == "HTTP 503"
        queue.forget("B")
        assert queue.known_destinations() == ["A"]
        assert queue.get_backoff("B").attempts == 0
        assert queue.status(["B"]).destinations["B"].last_error is None
        status = queue.status(["A"])
        assert status.destinations["A"].delivered == 60
        assert status.destinations["A"].dead == 0
    finally:
        queue.close()


def test_cluster_checks_every_master(cluster: Cluster, queue_prefix: str) -> None:
    queue = open_queue(cluster.url, prefix=queue_prefix)
    victim = cluster.masters()[1]
    with contextlib.closing(victim.client()) as client:
        client.config_set("maxmemory-policy", "allkeys-lru")
        try:
            warnings = queue.check_server()
            assert [w.kind for w in warnings] == ["evicts-queue"]
            assert f"127.0.0.1:{victim.port}" in warnings[0].message
            queue.ensure_destinations(["A"])
            status = queue.status(["A"])
            assert any(f"127.0.0.1:{victim.port}" in w for w in status.warnings)
        finally:
            client.config_set("maxmemory-policy", "noeviction")
            queue.close()
    assert queue.check_server() == []
    queue.close()


@pytest.mark.parametrize("wait_replicas", [0, 1])
def test_sentinel_url_reaches_the_master(
    sentinels: SentinelSetup, queue_prefix: str, wait_replicas: int
) -> None:
    queue = open_queue(sentinels.url(), prefix=queue_prefix, wait_replicas=wait_replicas)
    try:
        queue.ensure_destinations(["A"])
        queue.push(_entries(5, 2))
        assert len(queue.read_new("A", "c", 100)) == 10
        assert queue.check_server() == []
        loaded = load_settings({"QUEUE_URL": sentinels.url()}, environ={})
        assert loaded.queue_shards is None  # one stream, read through the sentinels
        assert queue.shards == 1
    finally:
        queue.close()


def _run_producers(
    settings: dict[str, Any], celery_queue: str, tmp_path: Path
) -> list[tuple[Any, Path]]:
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for i in range(PRODUCERS):
        out = tmp_path / f"ids-{i}.json"
        proc = ctx.Process(
            target=_producers.produce_for_users,
            args=(settings, BROKER, celery_queue, f"p{i}", PER_PRODUCER, 40, PACE, str(out)),
        )
        proc.start()
        procs.append((proc, out))
    return procs


def _deliver_through_a_failover(
    settings: dict[str, Any],
    setup: Any,
    sink: Any,
    worker_process: Any,
    celery_queue: str,
    tmp_path: Path,
    kill_master: Any,
) -> None:
    client = setup(**settings)
    worker = worker_process(settings, pool="solo")
    worker.wait_ready()
    procs = _run_producers(settings, celery_queue, tmp_path)
    # Mid-run: some delivered, the producers still calling.
    wait_until(lambda: len(message_ids(sink)) >= 2000, 60.0, "the first deliveries", worker)
    assert any(proc.is_alive() for proc, _ in procs)
    kill_master()
    for proc, _ in procs:
        proc.join(180)
        assert proc.exitcode == 0
    results = [json.loads(out.read_text()) for _, out in procs]
    assert all(r["drained"] for r in results)  # nothing left held in any producer
    returned = {mid for r in results for mid in r["ids"]}
    assert len(returned) == PRODUCERS * PER_PRODUCER
    wait_until(
        lambda: returned <= set(message_ids(sink)),
        120.0,
        "every event whose call returned to be delivered",
        worker,
    )
    assert set(message_ids(sink)) == returned  # nothing lost, nothing foreign
    wait_until(lambda: client.status().depth == 0, 60.0, "the queue to drain", worker)


@pytest.mark.timeout(400)
def test_cluster_failover_mid_run_loses_no_event_whose_call_returned(
    cluster: Cluster, fast_settings, setup, sink, worker_process, celery_queue, tmp_path
) -> None:
    settings = {
        **fast_settings,
        "QUEUE_URL": cluster.url,
        "QUEUE_WAIT_REPLICAS": 1,
        "DESTINATIONS": {"hook": {"type": "http", "url": f"{sink.url}/h"}},
    }
    probe = open_queue(cluster.url, prefix=fast_settings["QUEUE_PREFIX"])
    assert isinstance(probe, ShardedRedisQueue)
    victim = cluster.master_of(probe._written[1].stream.encode())
    probe.close()

    def kill_master() -> None:
        victim.kill()
        # Its replica takes over; then the old master comes back as the new one's replica
        # (until then no shard of it can be written with a replica's confirmation).
        poll(lambda: victim.port not in {m.port for m in cluster.masters()}, READY, "failover")
        poll(lambda: len(cluster.masters()) == 3, READY, "a new master for the slots")
        victim.start()
        cluster.wait_healthy()

    _deliver_through_a_failover(
        settings, setup, sink, worker_process, celery_queue, tmp_path, kill_master
    )


@pytest.mark.timeout(400)
def test_sentinel_failover_mid_run_loses_no_event_whose_call_returned(
    sentinels: SentinelSetup, fast_settings, setup, sink, worker_process, celery_queue, tmp_path
) -> None:
    settings = {
        **fast_settings,
        "QUEUE_URL": sentinels.url(),
        "QUEUE_WAIT_REPLICAS": 1,
        "DESTINATIONS": {"hook": {"type": "http", "url": f"{sink.url}/h"}},
    }

    def kill_master() -> None:
        old = sentinels.current_master()
        old.kill()
        poll(lambda: sentinels.current_master() is not old, READY, "the sentinels' failover")
        # Back, and made a replica of the new master by the sentinels: writes can then
        # wait for a replica again.
        old.start()
        sentinels.wait_healthy()

    _deliver_through_a_failover(
        settings, setup, sink, worker_process, celery_queue, tmp_path, kill_master
    )
