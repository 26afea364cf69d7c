"""The sharded Redis log on one server: key layout, shard choice, QUEUE_SHARDS changes,
the replica wait and its timeouts, and the queue URLs. (Cluster and Sentinel themselves
are in tests/delivery/test_scale_out.py.)"""

from __future__ import annotations

import json
import time

import pytest
import redis
from redis.crc import key_slot

from segment_mw.config import hide_password, load_settings
from segment_mw.errors import ConfigurationError
from segment_mw.events import Entry, build
from segment_mw.queue import PushFailed, open_queue
from segment_mw.queue.redis import RedisQueue, ReplicasBehind
from segment_mw.queue.sharded import ShardedRedisQueue, shard_key_base, shard_of
from segment_mw.queue.topology import block_ms, connection_options
from segment_mw.queue.urls import parse_redis_url


def _entries(users: int, per_user: int, tag: str = "e") -> list[Entry]:
    return [
        Entry(
            b'{"userId":"%s%d","n":%d}' % (tag.encode(), u, n),
            None,
            f"{tag}{u}-{n}",
            "track",
            f"{tag}{u}",
        )
        for n in range(per_user)
        for u in range(users)
    ]


def _read_all(queue, name: str) -> list:
    got, batch = [], queue.read_new(name, "c", 1000)
    while batch:
        got.extend(batch)
        queue.ack(name, [r.id for r in batch], delivered=len(batch))
        batch = queue.read_new(name, "c", 1000)
    return got


def test_each_shard_has_a_slot_in_its_own_share_of_the_cluster() -> None:
    for count in (1, 2, 3, 6):
        for index in range(count):
            base = shard_key_base("app", index, count, clustered=True)
            assert base.startswith("{app:s")
            assert base.endswith("}")
            slot = key_slot(f"{base}:log".encode())
            assert index * 16384 // count <= slot < (index + 1) * 16384 // count
            # Every key of the shard is in that one slot.
            assert key_slot(f"{base}:origin:abc".encode()) == slot
            assert key_slot(f"{base}:dead:Segment".encode()) == slot
    # One server: shard 0 keeps the unsharded queue's keys.
    assert shard_key_base("app", 0, 3, clustered=False) == "app"


def test_one_users_events_always_go_to_one_shard() -> None:
    a = build("track", {"event": "x", "properties": {}}, user_id="alice")
    b = build("track", {"event": "y", "properties": {}}, user_id="alice")
    anon = build("track", {"event": "y", "properties": {}}, anonymous_id="anon-1")
    assert a.user == "alice"
    assert anon.user == "anon-1"
    assert shard_of(a, 7) == shard_of(b, 7)
    spread = {shard_of(Entry(b"{}", None, f"m{i}", "track", f"u{i}"), 3) for i in range(100)}
    assert spread == {0, 1, 2}


def test_a_sharded_log_on_one_server_keeps_each_users_order(
    redis_url: str, queue_prefix: str
) -> None:
    queue = open_queue(redis_url, prefix=queue_prefix, shards=3)
    assert isinstance(queue, ShardedRedisQueue)
    queue.ensure_destinations(["A"])
    pushed = _entries(30, 10)
    queue.push(pushed)
    assert {s.key_base for s in queue._written} == {
        queue_prefix,
        shard_key_base(queue_prefix, 1, 3, clustered=False),
        shard_key_base(queue_prefix, 2, 3, clustered=False),
    }
    lengths = [int(s.client.xlen(s.stream)) for s in queue._written]
    assert sum(lengths) == 300
    assert all(lengths)
    got = _read_all(queue, "A")
    assert sorted(r.body for r in got) == sorted(e.body for e in pushed)
    by_user: dict[str, list[int]] = {}
    for r in got:
        doc = json.loads(r.body)
        by_user.setdefault(doc["userId"], []).append(doc["n"])
    assert all(ns == list(range(10)) for ns in by_user.values())
    status = queue.status(["A"])
    assert status.destinations["A"].delivered == 300
    assert status.depth == 0
    queue.close()


@pytest.mark.parametrize(("before", "after"), [(None, 3), (3, 1), (3, 5), (5, 2)])
def test_changing_queue_shards_loses_nothing(
    redis_url: str, queue_prefix: str, before: int | None, after: int
) -> None:
    old = open_queue(redis_url, prefix=queue_prefix, shards=before)
    old.ensure_destinations(["A"])
    old.push(_entries(20, 3, "old"))
    # Deployed with the new setting: one old writer is still running beside the new ones.
    new = open_queue(redis_url, prefix=queue_prefix, shards=after)
    new.push(_entries(20, 3, "new"))
    old.push(_entries(5, 1, "late"))
    old.close()
    got = _read_all(new, "A")
    assert len(got) == 60 + 60 + 5
    assert len({r.body for r in got}) == 125
    assert new.status(["A"]).destinations["A"].delivered == 125
    new.trim()
    # Old shards, drained, leave the registry; the log is empty.
    assert new.status(["A"]).stored == 0
    new.close()


def test_the_replica_wait_fails_a_push_in_time_on_a_server_without_replicas(
    redis_url: str, queue_prefix: str
) -> None:
    info = redis.Redis.from_url(redis_url).info("replication")
    if int(info.get("connected_slaves", 0)):
        pytest.skip("the shared test Redis has replicas: WAIT 1 would succeed")
    for shards in (None, 2):
        queue = open_queue(
            redis_url, prefix=queue_prefix, timeout=0.4, wait_replicas=1, shards=shards
        )
        started = time.monotonic()
        with pytest.raises(PushFailed) as failed:
            queue.push(_entries(2, 1))
        # WAIT gave up before the socket did: the push is unsure, to be finished again,
        # not a timeout that tells nothing.
        assert isinstance(failed.value.cause, ReplicasBehind)
        assert 0.15 < time.monotonic() - started < 2.0
        queue.close()


def test_blocking_commands_wait_less_than_the_socket_timeout() -> None:
    for timeout in (0.01, 0.5, 5.0, 10.0):
        assert block_ms(timeout) < timeout * 1000
        options = connection_options(timeout)
        assert options["socket_timeout"] == timeout  # never redis-py's default
        assert options["socket_connect_timeout"] == timeout
    queue = RedisQueue("redis://127.0.0.1:1/0", timeout=0.3, wait_replicas=2)
    assert queue._wait_command() == [(b"WAIT", b"2", b"150")]


def test_queue_urls_are_parsed_and_checked() -> None:
    cluster = parse_redis_url("rediss+cluster://:s3cret@10.0.0.1:7000,10.0.0.2/?ssl_cert_reqs=none")
    assert cluster.kind == "cluster"
    assert cluster.tls
    assert cluster.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 6379))
    assert cluster.password == "s3cret"
    assert "s3cret" not in repr(cluster)
    sentinel = parse_redis_url(
        "redis+sentinel://:pw@h1:26379,h2:26380/mymaster/2?sentinel_password=spw"
    )
    assert (sentinel.kind, sentinel.service, sentinel.db) == ("sentinel", "mymaster", 2)
    assert sentinel.nodes == (("h1", 26379), ("h2", 26380))
    assert dict(sentinel.sentinel_auth) == {"sentinel_password": "spw"}
    assert sentinel.query == ()
    assert parse_redis_url("redis+sentinel://h1/mymaster").db == 0
    for bad in (
        "redis+sentinel://h1:26379/",
        "redis+sentinel://h1:26379/m/x",
        "redis+cluster://h1:7000/3",
        "redis+cluster:///",
        "redis+cluster://h1:port/",
    ):
        with pytest.raises(ConfigurationError, match="QUEUE_URL"):
            load_settings({"QUEUE_URL": bad}, environ={})
    shown = hide_password("redis+cluster://:s3cret@h1:7000,h2:7001/")
    assert "s3cret" not in shown
    loaded = load_settings({"QUEUE_URL": "redis+cluster://h1:7000,h2:7001/"}, environ={})
    assert "h1:7000" in loaded.queue_url
    assert not loaded.in_process_flusher


def test_queue_shards_and_replica_wait_settings() -> None:
    assert load_settings({}, environ={}).queue_shards is None
    env = {"SEGMENT_MW_QUEUE_SHARDS": "6", "SEGMENT_MW_QUEUE_WAIT_REPLICAS": "1"}
    loaded = load_settings({"QUEUE_SHARDS": 2}, environ=env)
    assert (loaded.queue_shards, loaded.queue_wait_replicas) == (6, 1)
    for key, value in (
        ("QUEUE_SHARDS", 0),
        ("QUEUE_SHARDS", 1000),
        ("QUEUE_SHARDS", True),
        ("QUEUE_SHARDS", "3"),
        ("QUEUE_WAIT_REPLICAS", -1),
    ):
        with pytest.raises(ConfigurationError, match=key):
            load_settings({key: value}, environ={})
    with pytest.raises(ConfigurationError, match="SEGMENT_MW_QUEUE_SHARDS"):
        load_settings({}, environ={"SEGMENT_MW_QUEUE_SHARDS": "many"})
