"""One contract for every queue backend: memory://, sqlite:///file and Redis Streams
(one stream, and a log sharded over three streams on the same server).

Each test runs against the three backends through ``open_queue``. ``backend.open()``
returns another queue object on the same storage (a second process's view); a
``memory://`` queue exists only inside its object, so there it returns the same one.
"""

from __future__ import annotations

import gc
import multiprocessing
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from segment_mw.events import Entry
from segment_mw.queue import Backoff, Queue, Record, open_queue
from segment_mw.queue.base import RETRY_CONSUMER, record_only_matches
from segment_mw.queue.redis import RedisQueue
from segment_mw.queue.sharded import ShardedRedisQueue
from segment_mw.queue.sql import SQLiteQueue


@dataclass
class Backend:
    kind: str
    url: str
    prefix: str
    opened: list[Queue] = field(default_factory=list)
    shards: int | None = None

    def open(self) -> Queue:
        if self.kind == "memory" and self.opened:
            return self.opened[0]
        queue = open_queue(self.url, prefix=self.prefix, shards=self.shards)
        self.opened.append(queue)
        return queue


@pytest.fixture(params=["memory", "sqlite", "redis", "redis-sharded"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "memory":
        found = Backend("memory", "memory://", "segment_mw")
    elif request.param == "sqlite":
        found = Backend("sqlite", f"sqlite:///{tmp_path / 'q.sqlite3'}", "segment_mw")
    else:
        prefix = request.getfixturevalue("queue_prefix")
        found = Backend("redis", request.getfixturevalue("redis_url"), prefix)
        if request.param == "redis-sharded":
            found.kind, found.shards = "redis-sharded", 3
    yield found
    for queue in found.opened:
        queue.close()


@pytest.fixture
def q(backend: Backend) -> Queue:
    return backend.open()


def entries(n: int, *, integrations: bytes | None = None, tag: str = "m") -> list[Entry]:
    return [
        Entry(
            body=b'{"type":"track","event":"%s-%d"}' % (tag.encode(), i),
            integrations=integrations,
            message_id=f"{tag}-{i}",
            type="track",
            # One user's: a sharded log keeps its order (it keeps no order across users).
            user=tag,
        )
        for i in range(n)
    ]


def bodies(records: Sequence[Record]) -> list[bytes]:
    return [r.body for r in records]


def stored(q: Queue) -> int:
    """How many messages the backend still keeps in its log."""
    if isinstance(q, RedisQueue):
        return int(q.client.xlen(q.stream))
    if isinstance(q, ShardedRedisQueue):
        return sum(int(s.client.xlen(s.stream)) for s in q._reading())
    assert isinstance(q, SQLiteQueue)
    return int(q._q("SELECT COUNT(*) FROM {p}log")[0][0])


def test_open_queue_picks_the_backend(backend: Backend) -> None:
    queue = backend.open()
    expected = {"redis": RedisQueue, "redis-sharded": ShardedRedisQueue}.get(
        backend.kind, SQLiteQueue
    )
    assert type(queue) is expected


def test_each_destination_reads_every_message_once(q: Queue) -> None:
    pushed = entries(5)
    before = time.time()
    q.push(pushed[:2])
    q.push(pushed[2:], only=None)
    q.ensure_destinations(["A", "B"])

    first = q.read_new("A", "c1", 3)
    second = q.read_new("A", "c1", 3)
    assert bodies(first) == [e.body for e in pushed[:3]]
    assert bodies(second) == [e.body for e in pushed[3:]]
    assert q.read_new("A", "c1", 3) == []

    # B has its own cursor: A's reading took nothing away from it.
    seen_by_b = q.read_new("B", "c1", 10)
    assert bodies(seen_by_b) == [e.body for e in pushed]
    assert [r.id for r in seen_by_b] == [r.id for r in first + second]
    assert q.read_new("B", "c2", 10) == []

    for record in seen_by_b:
        assert record.only is None
        assert record.integrations is None
        assert before - 1.0 <= q.enqueued_at(record) <= time.time() + 1.0


def test_a_read_larger_than_a_slice_hands_out_every_message_in_order(q: Queue) -> None:
    """Redis reads BATCH_MAX_EVENTS as several XREADGROUPs in one round trip (READ_SLICE)."""
    pushed = entries(1234)
    q.push(pushed)
    q.ensure_destinations(["A"])
    first = q.read_new("A", "c1", 1100)  # whole slices and a part of one
    rest = q.read_new("A", "c1", 1100)  # the end of the log comes in the second slice
    assert bodies(first) == [e.body for e in pushed[:1100]]
    assert bodies(rest) == [e.body for e in pushed[1100:]]
    assert q.read_new("A", "c1", 1100) == []
    ids = [r.id for r in first + rest]
    assert len(set(ids)) == len(ids)
    q.ack("A", ids)
    assert q.claim_idle("A", "c2", 0.0, 2000) == []  # every one was pending, and now none


def test_a_read_gives_the_collector_no_object_per_message(q: Queue) -> None:
    """A read's records are held by column: nothing the cyclic collector tracks for each.

    A named tuple per message is never untracked, and the collector visited every one of
    them in each collection of its generation.
    """
    q.push(entries(2000, integrations=None))
    q.ensure_destinations(["A"])
    records = q.read_new("A", "c1", 2000)
    assert len(records) == 2000
    columns = (
        records.ids,
        records.bodies,
        records.integrations,
        records.only,
        records.enqueued_at,
        records.attempts,
    )
    assert not any(gc.is_tracked(value) for column in columns for value in column)
    # Made on demand, a Record is such an object: the collector keeps tracking it.
    as_objects = list(records)
    gc.collect()
    assert all(map(gc.is_tracked, as_objects))
    assert [r.body for r in as_objects] == records.bodies


def test_every_kind_of_read_tells_when_its_messages_were_queued(q: Queue) -> None:
    """New, claimed and retried records alike: the retry budget is checked on all three."""
    q.push(entries(1))
    time.sleep(0.05)
    before = time.time()
    q.push(entries(2, tag="n"))
    q.ensure_destinations(["A"])
    first, *rest = q.read_new("A", "c1", 10)
    claimed = q.claim_idle("A", "c2", 0.0, 10)
    q.hold_for_retry("A", [r.id for r in rest], attempts=1)
    retried = q.read_retry("A", 10)
    assert len(claimed) == 3
    assert len(retried) == 2
    assert q.enqueued_at(first) < before - 0.01  # the first push's time, not the read's
    for record in [*claimed[1:], *retried]:
        assert before - 0.01 <= q.enqueued_at(record) <= time.time() + 0.01
    assert q.enqueued_at(claimed[0]) == q.enqueued_at(first)


def test_integrations_and_only_travel_with_the_message(q: Queue) -> None:
    q.push(entries(1, integrations=b'{"All":false,"X":true}'))
    q.push(entries(1, tag="only"), only="B")
    records = q.read_new("A", "c1", 10)
    assert [r.integrations for r in records] == [b'{"All":false,"X":true}', None]
    assert [r.only for r in records] == [None, "B"]
    assert record_only_matches(records[0], "A")
    assert not record_only_matches(records[1], "A")
    assert record_only_matches(records[1], "B")


def test_a_new_destination_starts_at_the_beginning_of_the_log(q: Queue) -> None:
    q.push(entries(3))
    assert bodies(q.read_new("late", "c1", 10)) == [e.body for e in entries(3)]


def test_ack_and_trim_free_storage_only_when_every_destination_is_done(q: Queue) -> None:
    q.ensure_destinations(["A", "B", "C"])
    q.push(entries(3))
    a = q.read_new("A", "c1", 10)
    b = q.read_new("B", "c1", 10)
    q.ack("A", [r.id for r in a], delivered=3)
    q.trim()
    assert stored(q) == 3  # B holds them pending, C has not read them

    c = q.read_new("C", "c1", 10)
    q.ack("C", [r.id for r in c])
    q.ack("B", [b[0].id, b[1].id], delivered=2)
    q.trim()
    assert stored(q) == 1  # B still needs the last one

    q.ack("B", [b[2].id], delivered=1)
    q.trim()
    assert stored(q) == 0
    status = q.status(["A", "B", "C"])
    assert {n: d.delivered for n, d in status.destinations.items()} == {"A": 3, "B": 3, "C": 0}
    assert {n: d.queued for n, d in status.destinations.items()} == {"A": 0, "B": 0, "C": 0}

    # Trimming never takes what a destination has not read yet.
    q.push(entries(2, tag="later"))
    q.trim()
    assert stored(q) == 2
    assert bodies(q.read_new("A", "c1", 10)) == [e.body for e in entries(2, tag="later")]


def test_forgetting_a_removed_destination_lets_the_log_be_trimmed(q: Queue) -> None:
    q.ensure_destinations(["kept", "removed"])
    q.push(entries(2))
    kept = q.read_new("kept", "c1", 10)
    q.ack("kept", [r.id for r in kept], delivered=2)
    q.trim()
    assert stored(q) == 2  # "removed" has not read them
    assert sorted(q.known_destinations()) == ["kept", "removed"]

    q.forget("removed")
    q.trim()
    assert stored(q) == 0
    assert q.known_destinations() == ["kept"]


def test_an_unacknowledged_message_stays_pending_and_blocks_trimming(q: Queue) -> None:
    q.ensure_destinations(["A"])
    q.push(entries(3))
    records = q.read_new("A", "c1", 10)
    q.ack("A", [records[1].id, records[2].id])
    q.trim()
    assert stored(q) >= 1
    assert q.status(["A"]).destinations["A"].queued == 1
    # Not handed out again as new ...
    assert q.read_new("A", "c1", 10) == []
    # ... but still there to be claimed.
    assert bodies(q.claim_idle("A", "c2", 0, 10)) == [records[0].body]


def test_claim_idle_takes_over_another_consumers_idle_messages(backend: Backend) -> None:
    q1, q2 = backend.open(), backend.open()
    q1.ensure_destinations(["A", "B"])
    q1.push(entries(4))
    held = q1.read_new("A", "dead-worker", 3)
    assert q1.oldest_pending_idle("A") is not None
    assert q1.oldest_pending_idle("B") is None

    # Not idle for an hour: nobody may take them.
    assert q2.claim_idle("A", "survivor", 3600.0, 10) == []
    claimed = q2.claim_idle("A", "survivor", 0.0, 10)
    assert [r.id for r in claimed] == [r.id for r in held]
    assert bodies(claimed) == bodies(held)
    # The claim is per destination: B's cursor is untouched.
    assert len(q2.read_new("B", "survivor", 10)) == 4
    # The unread fourth message is still new for A.
    assert bodies(q2.read_new("A", "survivor", 10)) == [entries(4)[3].body]

    q2.ack("A", [r.id for r in claimed], delivered=len(claimed))
    assert q1.claim_idle("A", "third", 0.0, 10) != []  # the fourth, still pending
    assert q1.status(["A"]).destinations["A"].delivered == 3


def test_claim_idle_respects_count(q: Queue) -> None:
    q.push(entries(5))
    q.read_new("A", "c1", 5)
    first = q.claim_idle("A", "c2", 0.0, 2)
    assert len(first) == 2
    q.ack("A", [r.id for r in first])
    rest = q.claim_idle("A", "c2", 0.0, 10)
    assert len(rest) == 3
    assert not {r.id for r in rest} & {r.id for r in first}


def test_hold_for_retry_and_read_retry(backend: Backend) -> None:
    q = backend.open()
    q.ensure_destinations(["A", "B"])
    q.push(entries(4))
    records = q.read_new("A", "c1", 10)
    q.hold_for_retry("A", [records[0].id, records[2].id])
    q.ack("A", [records[1].id, records[3].id], delivered=2)

    status = q.status(["A"]).destinations["A"]
    assert (status.queued, status.retrying) == (2, 2)
    # Parked messages do not count as a dead consumer's work.
    assert q.oldest_pending_idle("A") is None

    other = backend.open()  # another process takes the retry
    retry = other.read_retry("A", 10)
    assert bodies(retry) == [records[0].body, records[2].body]
    assert other.read_retry("B", 10) == []
    # Reading for retry does not consume them: a failed retry finds them again.
    assert bodies(other.read_retry("A", 1)) == [records[0].body]

    other.ack("A", [r.id for r in retry], delivered=2)
    assert other.read_retry("A", 10) == []
    status = q.status(["A"]).destinations["A"]
    assert (status.queued, status.retrying, status.delivered) == (0, 0, 4)


def test_dead_letter_status_and_replay(backend: Backend) -> None:
    q = backend.open()
    q.ensure_destinations(["A", "B"])
    q.push(entries(3, integrations=b'{"X":false}'))
    records = q.read_new("A", "c1", 10)
    q.dead_letter("A", records[:2], "HTTP 400: bad event")
    q.ack("A", [records[2].id], delivered=1)

    status = q.status(["A", "B"])
    a = status.destinations["A"]
    assert (a.queued, a.dead, a.delivered) == (0, 2, 1)
    assert a.last_error == "HTTP 400: bad event"
    assert a.last_error_at is not None
    assert status.destinations["B"].dead == 0
    assert status.destinations["B"].last_error is None
    assert status.as_dict()["destinations"]["A"]["dead"] == 2

    assert backend.open().replay("B") == 0
    assert backend.open().replay("A") == 2
    status = q.status(["A"])
    assert status.destinations["A"].dead == 0
    assert status.destinations["A"].queued == 2

    replayed = q.read_new("A", "c1", 10)
    assert bodies(replayed) == bodies(records[:2])
    assert [r.only for r in replayed] == ["A", "A"]
    assert [r.integrations for r in replayed] == [b'{"X":false}'] * 2
    assert not {r.id for r in replayed} & {r.id for r in records}
    # B sees the copies too, marked as not its own.
    b_view = q.read_new("B", "c1", 10)
    assert [r.only for r in b_view] == [None, None, None, "A", "A"]
    assert [record_only_matches(r, "B") for r in b_view] == [True] * 3 + [False] * 2

    assert q.replay("A") == 0  # nothing left to replay


def test_backoff_is_shared_between_queue_objects(backend: Backend) -> None:
    q1, q2 = backend.open(), backend.open()
    assert q2.get_backoff("A") == Backoff()
    until = time.time() + 120.0
    q1.set_backoff("A", Backoff(until=until, attempts=3), "HTTP 503")

    seen = q2.get_backoff("A")
    assert seen.attempts == 3
    assert seen.until == pytest.approx(until)
    assert seen.active
    assert q2.get_backoff("B") == Backoff()
    status = q2.status(["A", "B"]).destinations
    assert status["A"].backoff_until == pytest.approx(until)
    assert status["A"].last_error == "HTTP 503"
    assert status["B"].backoff_until is None

    q1.set_backoff("A", Backoff(until=time.time() - 1.0, attempts=4), None)
    expired = q2.get_backoff("A")
    assert (expired.attempts, expired.active) == (4, False)
    assert q2.status(["A"]).destinations["A"].backoff_until is None

    q2.clear_backoff("A")
    cleared = q1.get_backoff("A")
    assert (cleared.attempts, cleared.active) == (0, False)


def test_leases_are_shared_and_expire(backend: Backend) -> None:
    q1, q2 = backend.open(), backend.open()
    assert q1.acquire("retry:A", 30.0)
    assert not q2.acquire("retry:A", 30.0)
    assert not q1.acquire("retry:A", 30.0)
    assert q2.acquire("retry:B", 30.0)  # leases are per name
    q1.release("retry:A")
    assert q2.acquire("retry:A", 30.0)
    q2.release("retry:A")
    q2.release("retry:A")  # releasing twice is harmless

    assert q1.acquire("short", 0.01)
    deadline = time.monotonic() + 30.0  # a safety net, not a timing requirement
    while not q2.acquire("short", 30.0):  # an expired lease can be taken
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.02)


def test_counts_add_up_across_queue_objects(backend: Backend) -> None:
    q1, q2 = backend.open(), backend.open()
    assert q1.get_counts() == {}
    q1.add_counts({"dropped": 2, "invalid": 1})
    q2.add_counts({"dropped": 3})
    q2.add_counts({})
    assert q1.get_counts() == {"dropped": 5, "invalid": 1}
    assert q2.status([]).counters == {"dropped": 5, "invalid": 1}


def test_status_depth_and_oldest_age(q: Queue) -> None:
    empty = q.status(["A", "B"])
    assert empty.depth == 0
    assert empty.oldest_age is None
    assert set(empty.destinations) == {"A", "B"}

    before = time.time()
    q.push(entries(3))
    # Not yet read by anyone: every destination has all three ahead of it.
    fresh = q.status(["A", "B"])
    assert fresh.depth == 3
    assert {n: d.queued for n, d in fresh.destinations.items()} == {"A": 3, "B": 3}
    assert fresh.oldest_age is not None
    assert 0.0 <= fresh.oldest_age <= time.time() - before + 1.0

    q.ensure_destinations(["A", "B"])
    records = q.read_new("A", "c1", 10)
    q.ack("A", [r.id for r in records], delivered=3)
    q.read_new("B", "c1", 1)  # one pending, two unread
    status = q.status(["A", "B"])
    assert {n: d.queued for n, d in status.destinations.items()} == {"A": 0, "B": 3}
    assert status.depth == 3
    assert status.oldest_age is not None
    assert 0.0 <= status.oldest_age <= time.time() - before + 1.0

    rest = q.read_new("B", "c1", 10) + q.claim_idle("B", "c1", 0.0, 10)
    q.ack("B", list({r.id for r in rest}))
    done = q.status(["A", "B"])
    assert done.depth == 0
    assert done.oldest_age is None
    assert done.as_dict()["depth"] == 0


def test_empty_operations_are_harmless(q: Queue) -> None:
    q.push([])
    q.ack("A", [])
    q.dead_letter("A", [], "nothing")
    q.hold_for_retry("A", [])
    q.trim()
    assert q.read_new("A", "c1", 10) == []
    assert q.read_retry("A", 10) == []
    assert q.claim_idle("A", "c1", 0.0, 10) == []
    assert q.replay("A") == 0


# -- Redis only ---------------------------------------------------------------------------


def _forget_everything(redis_client: redis.Redis, prefix: str) -> None:
    """What FLUSHDB (or a restart without persistence) does to our keys."""
    keys = list(redis_client.scan_iter(f"{prefix}:*"))
    if keys:
        redis_client.delete(*keys)


def test_redis_losing_its_data_recreates_the_groups(
    redis_url: str, queue_prefix: str, redis_client: redis.Redis
) -> None:
    q = open_queue(redis_url, prefix=queue_prefix)
    try:
        q.ensure_destinations(["A", "B"])
        q.push(entries(2))
        held = q.read_new("A", "c1", 10)
        _forget_everything(redis_client, queue_prefix)

        # The queue object still believes the groups exist; nothing may crash. (A failed
        # delivery parks what it read, which Redis no longer has.)
        q.hold_for_retry("A", [r.id for r in held])
        q.ack("A", [r.id for r in held])
        assert q.read_new("A", "c1", 10) == []
        assert q.read_retry("A", 10) == []
        assert q.claim_idle("B", "c1", 0.0, 10) == []
        assert q.oldest_pending_idle("A") is None
        q.trim()

        _forget_everything(redis_client, queue_prefix)
        q.push(entries(3, tag="after"))
        expected = [e.body for e in entries(3, tag="after")]
        assert bodies(q.read_new("A", "c1", 10)) == expected
        assert bodies(q.read_new("B", "c1", 10)) == expected
        status = q.status(["A", "B"])
        assert {n: d.queued for n, d in status.destinations.items()} == {"A": 3, "B": 3}
    finally:
        q.close()


def test_redis_read_keeps_the_slices_served_when_one_is_refused(
    redis_url: str, queue_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entries of the slices Redis served are this consumer's now: they are kept.

    The second slice of a read is replaced by a real command Redis refuses (a group that
    does not exist), in the same pipeline as the others.
    """
    from segment_mw import metrics
    from segment_mw.queue import redis as redis_queue

    q = open_queue(redis_url, prefix=queue_prefix)
    assert isinstance(q, RedisQueue)
    pushed = entries(600)
    q.push(pushed)
    q.ensure_destinations(["A"])
    real = RedisQueue._pipeline

    def second_refused(self: RedisQueue, commands: Any, each: Any = None) -> list[Any]:
        if len(commands) > 1 and commands[1][0] == b"XREADGROUP":
            refused = (*commands[1][:2], b"no-such-group", *commands[1][3:])
            commands = [commands[0], refused, *commands[2:]]
        return real(self, commands, each)

    monkeypatch.setattr(RedisQueue, "_pipeline", second_refused)
    monkeypatch.setattr(redis_queue, "READ_SLICE", 250)
    before = metrics.counts().get("read_slice_failed", 0)
    try:
        got = q.read_new("A", "c1", 750)  # slices of 250: served, refused, served
        # The third slice took what the second would have: nothing is skipped or reordered.
        assert bodies(got) == [e.body for e in pushed[:500]]
        assert metrics.counts()["read_slice_failed"] == before + 1
        monkeypatch.setattr(RedisQueue, "_pipeline", real)
        assert bodies(q.read_new("A", "c1", 750)) == [e.body for e in pushed[500:]]
        # (Every slice refused, a group lost to a restart: the read raises and the group is
        # made again, test_redis_losing_its_data_recreates_the_groups.)
    finally:
        q.close()


def test_redis_status_counts_unread_once_when_redis_cannot_tell_the_lag(
    redis_url: str, queue_prefix: str, redis_client: redis.Redis
) -> None:
    # After entries past a group's position are deleted (or on Redis < 7) XINFO gives no
    # lag; pending messages must not be counted twice.
    q = open_queue(redis_url, prefix=queue_prefix)
    try:
        assert isinstance(q, RedisQueue)
        q.ensure_destinations(["A"])
        q.push(entries(5))
        read = q.read_new("A", "c1", 2)
        ids = [_id for _id, _ in redis_client.xrange(q.stream)]
        redis_client.xdel(q.stream, ids[3])
        (group,) = redis_client.xinfo_groups(q.stream)
        assert group["lag"] is None
        status = q.status(["A"]).destinations["A"]
        assert status.queued == 2 + 2  # two pending, two unread
        q.hold_for_retry("A", [read[0].id])
        assert q.status(["A"]).destinations["A"].retrying == 1
    finally:
        q.close()


def test_redis_retry_messages_belong_to_the_reserved_consumer(
    redis_url: str, queue_prefix: str, redis_client: redis.Redis
) -> None:
    q = open_queue(redis_url, prefix=queue_prefix)
    try:
        assert isinstance(q, RedisQueue)
        q.push(entries(2))
        records = q.read_new("A", "c1", 10)
        q.hold_for_retry("A", [r.id for r in records])
        owners = {
            row["consumer"].decode()
            for row in redis_client.xpending_range(q.stream, "A", "-", "+", 10)
        }
        assert owners == {RETRY_CONSUMER}
    finally:
        q.close()


# -- SQLite shared by processes ---------------------------------------------------------


def _push_from_process(url: str, tag: str, n: int, start: Any) -> None:
    start.wait()
    queue = open_queue(url)
    for chunk in range(0, n, 10):
        queue.push(entries(n, tag=tag)[chunk : chunk + 10])
    queue.close()


def test_sqlite_file_shared_by_two_processes_loses_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared' / 'queue.sqlite3'}"
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    tags = [f"p{i}-{uuid.uuid4().hex[:6]}" for i in range(2)]
    procs = [ctx.Process(target=_push_from_process, args=(url, tag, 300, start)) for tag in tags]
    for proc in procs:
        proc.start()
    queue = open_queue(url)
    try:
        # Nobody has created the file yet: all three processes open it, create the
        # tables and write at the same time.
        start.set()
        queue.push(entries(100, tag="parent"))
        queue.push(entries(100, tag="parent2"))
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0
        got = bodies(queue.read_new("A", "c1", 10_000))
        expected = {e.body for tag in tags for e in entries(300, tag=tag)}
        expected |= {e.body for e in entries(100, tag="parent") + entries(100, tag="parent2")}
        assert len(got) == len(expected) == 800
        assert set(got) == expected
        for tag in tags:  # each process's messages stay in its own order
            mine = [b for b in got if tag.encode() in b]
            assert mine == [e.body for e in entries(300, tag=tag)]
    finally:
        queue.close()
