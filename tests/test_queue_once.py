"""Nothing stored or sent twice by the queue's own doing: pushes finished after a late
reply or a broken pipeline, leases only their holder can give up, held messages kept from
claims, and retry counts that travel with parked messages. Real Redis (behind a proxy
that answers late or breaks connections) and real SQLite files."""

from __future__ import annotations

import os

import pytest
import redis

from segment_mw.queue import PushFailed, Queue, open_queue
from segment_mw.queue.redis import SCRIPT_ENTRIES, RedisQueue

from . import test_queue_backends as contract
from .delivery.conftest import free_port, wait_until
from .slow_redis import slow_redis
from .test_queue_backends import Backend, bodies, entries

backend = contract.backend  # the same three backends: memory, a SQLite file, Redis


@pytest.fixture
def direct(redis_url: str, queue_prefix: str) -> RedisQueue:
    queue = open_queue(redis_url, prefix=queue_prefix)
    assert isinstance(queue, RedisQueue)
    yield queue
    queue.close()


def stored_bodies(queue: RedisQueue) -> list[bytes]:
    return [fields[b"e"] for _, fields in queue.client.xrange(queue.stream)]


def test_a_push_answered_too_late_is_finished_without_storing_it_twice(
    direct: RedisQueue, queue_prefix: str
) -> None:
    pushed = entries(10)
    with slow_redis(delay=0.5) as proxy:
        slow = open_queue(proxy.url(), prefix=queue_prefix, timeout=0.1)
        assert slow.client  # connected (its server checked) while Redis answers in time
        proxy.late = 1.0
        with pytest.raises(PushFailed) as failed:
            slow.push(pushed)
        slow.close()
    assert failed.value.count == 10
    # Redis did store them: only the reply was late.
    wait_until(lambda: len(stored_bodies(direct)) == 10, 5.0, "the late push to land")
    direct.push_again(failed.value.unsure)
    direct.push_again(failed.value.unsure)  # and again: still nothing stored twice
    assert stored_bodies(direct) == [e.body for e in pushed]
    # The origin is not lent again: a new push is stored as new.
    direct.push(entries(2, tag="after"))
    assert len(stored_bodies(direct)) == 12


def test_a_pipeline_broken_part_way_is_finished_with_what_is_missing(
    direct: RedisQueue, queue_prefix: str
) -> None:
    pushed = entries(3 * SCRIPT_ENTRIES)
    one_script = sum(len(e.body) for e in pushed[:SCRIPT_ENTRIES])
    with slow_redis() as proxy:
        broken = open_queue(proxy.url(), prefix=queue_prefix, timeout=2.0)
        assert broken.client  # connected, its server checked
        proxy.cut(after=one_script + one_script // 2)  # the first script whole, no more
        with pytest.raises(PushFailed) as failed:
            broken.push(pushed)
        broken.close()
    assert proxy.broken == 1
    assert stored_bodies(direct) == [e.body for e in pushed[:SCRIPT_ENTRIES]]
    direct.push_again(failed.value.unsure)
    assert stored_bodies(direct) == [e.body for e in pushed]


def test_a_push_that_reached_nothing_fails_plainly(queue_prefix: str) -> None:
    # Nothing listens there: the entries are known not stored, to be pushed as new.
    queue = open_queue(f"redis://127.0.0.1:{free_port()}/9", prefix=queue_prefix, timeout=0.5)
    with pytest.raises(redis.ConnectionError) as failed:
        queue.push(entries(1))
    assert not isinstance(failed.value, PushFailed)
    queue.close()


def test_a_forked_child_pushes_under_origins_of_its_own(direct: RedisQueue) -> None:
    direct.push(entries(3, tag="parent"))
    pid = os.fork()
    if pid == 0:
        try:
            direct.push(entries(3, tag="child"))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    # Had the child reused the parent's origin, this push would be taken as one already
    # stored (the child used those ordinals) and skipped.
    direct.push(entries(3, tag="parent-again"))
    got = sorted(stored_bodies(direct))
    expected = [e.body for tag in ("parent", "child", "parent-again") for e in entries(3, tag=tag)]
    assert got == sorted(expected)


def test_scripts_lost_by_a_restart_are_loaded_again(direct: RedisQueue) -> None:
    direct.push(entries(1))
    direct.client.script_flush()
    direct.push(entries(2, tag="after"))
    assert len(stored_bodies(direct)) == 3


# -- every backend --------------------------------------------------------------------------


def test_a_lease_is_renewed_and_released_only_by_its_holder(backend: Backend) -> None:
    first, second = backend.open(), backend.open()
    held = first.take_lease("retry:A", 0.3)
    assert held is not None
    assert second.take_lease("retry:A", 30.0) is None
    assert held.renew()
    # It lapses; someone else takes it.
    taken = wait_until(lambda: second.take_lease("retry:A", 30.0), 10.0, "the lease to lapse")
    assert not held.renew()
    held.release()  # not its holder any more: this must not free the other's lease
    assert first.take_lease("retry:A", 30.0) is None
    assert not held.keep()  # a third of its ttl has passed: it tries to renew, and cannot
    assert held.lost
    taken.release()
    again = first.take_lease("retry:A", 30.0)
    assert again is not None
    again.release()


def test_markers_and_leases_share_names(backend: Backend) -> None:
    """A marker set by name (as tests and older workers do) keeps the lease taken."""
    queue = backend.open()
    assert queue.acquire("retry:A", 30.0)
    assert queue.take_lease("retry:A", 30.0) is None
    queue.release("retry:A")
    lease = queue.take_lease("retry:A", 30.0)
    assert lease is not None
    lease.release()


def test_touch_keeps_what_a_consumer_holds_and_gives_up_what_was_claimed(
    backend: Backend,
) -> None:
    queue: Queue = backend.open()
    queue.push(entries(4))
    read = queue.read_new("A", "c1", 10)
    assert len(read) == 4
    claimed = queue.claim_idle("A", "c2", 0.0, 2)  # c2 takes two of them
    assert len(claimed) == 2
    ids = [r.id for r in read]
    # Held a while (idle past a claim's threshold), then touched before being sent on.
    wait_until(lambda: (queue.oldest_pending_idle("A") or 0) >= 1.0, 10.0, "an idle second")
    held = queue.touch("A", "c1", ids)
    assert sorted(held) == sorted(set(ids) - {r.id for r in claimed})
    # Not idle any more: a third consumer claims none of c1's (only c2's, untouched).
    taken = queue.claim_idle("A", "c3", 0.9, 10)
    assert sorted(r.id for r in taken) == sorted(r.id for r in claimed)
    assert queue.touch("A", "c1", []) == []


def test_retry_counts_travel_with_parked_messages(backend: Backend) -> None:
    queue = backend.open()
    queue.push(entries(3))
    read = queue.read_new("A", "c1", 10)
    queue.hold_for_retry("A", [read[0].id, read[1].id], attempts=2)
    queue.hold_for_retry("A", [read[2].id], attempts=0)  # parked without being sent
    for _ in range(2):  # reading them does not change the counts
        retry = backend.open().read_retry("A", 10)
        assert [(r.body, r.attempts) for r in retry] == [
            (read[0].body, 2),
            (read[1].body, 2),
            (read[2].body, 0),
        ]
    assert bodies(queue.read_retry("A", 1)) == [read[0].body]


def test_sqlite_files_from_before_the_new_columns_are_upgraded(tmp_path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE segment_mw_pending (destination TEXT NOT NULL, id INTEGER NOT NULL,"
        " consumer TEXT NOT NULL, delivered_at REAL NOT NULL, PRIMARY KEY (destination, id));"
        "CREATE TABLE segment_mw_lease (name TEXT PRIMARY KEY, expires REAL NOT NULL);"
    )
    conn.close()
    queue = open_queue(f"sqlite:///{path}")
    queue.push(entries(1))
    (record,) = queue.read_new("A", "c1", 10)
    queue.hold_for_retry("A", [record.id], attempts=1)
    assert [r.attempts for r in queue.read_retry("A", 10)] == [1]
    lease = queue.take_lease("retry:A", 30.0)
    assert lease is not None
    lease.release()
    queue.close()
