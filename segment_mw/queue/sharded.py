"""A log of several Redis streams (shards), for Redis Cluster, Sentinel, or one big Redis.

Each shard is a whole ``RedisQueue`` of its own (stream, consumer groups, dead letters,
per-destination counters, origin marks) whose keys share one hash tag, so every command
and script touches a single slot and runs on the node that holds it. The tags are chosen
so that shard ``i`` of ``N`` falls in the ``i``-th ``N``-th of the slot space: on a
cluster whose masters hold equal ranges of slots (as ``redis-cli --cluster create`` makes
them), ``N`` a multiple of the masters spreads the shards evenly.

One user's events (by ``userId``, else ``anonymousId``) always go to the same shard, in
order. Every destination reads every shard: a record's id carries its shard
(``"2/1712345678901-0"``), so acknowledgements, retries, claims and dead letters go back
to it. Shard 0 also holds what is shared by all: leases, markers, back-off records and
counters, and the registry of shards ever written (``<base 0>:shards``). Readers read
every shard the registry names, not only the ``QUEUE_SHARDS`` they are configured with,
so changing ``QUEUE_SHARDS`` loses nothing: shards no longer written drain, and trimming
drops them from the registry once they are empty.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
from redis import exceptions
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from .. import forks
from ..events import Entry
from .base import (
    DEFAULT_DEAD_LETTER_LIMITS,
    Backoff,
    DeadLetterLimits,
    DestinationStatus,
    Lease,
    Push,
    PushFailed,
    Queue,
    QueueStatus,
    Record,
    Records,
    ServerWarning,
)
from .redis import RedisQueue, ReplicasBehind, entry_time, server_warnings
from .topology import Topology, open_topology
from .urls import RedisTarget

T = TypeVar("T")

# How often a reader looks for shards it was not told of, and a writer says which it uses.
REGISTRY_REFRESH = 10.0
# Errors after which the node that holds a shard may have changed (failover, resharding).
_MOVED = ("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "READONLY", "MASTERDOWN", "LOADING")
_MOVED_ERRORS = (
    exceptions.AskError,  # MovedError too
    exceptions.TryAgainError,
    exceptions.ClusterDownError,
    exceptions.ReadOnlyError,
    exceptions.MasterDownError,
    exceptions.BusyLoadingError,
)


def shard_key_base(prefix: str, index: int, count: int, *, clustered: bool) -> str:
    """What every key of shard ``index`` begins with: the one place keys are named.

    On one server shard 0 keeps the unsharded queue's keys (``prefix:log``...), so a
    queue that grows from one shard to several goes on reading what it had. Otherwise a
    hash tag ``{prefix:s<index>...}`` puts all of the shard's keys in one slot, chosen in
    the ``index``-th ``count``-th of the slots.
    """
    if index == 0 and not clustered:
        return prefix
    low = index * REDIS_CLUSTER_HASH_SLOTS // max(count, index + 1)
    high = (index + 1) * REDIS_CLUSTER_HASH_SLOTS // max(count, index + 1)
    tag = f"{prefix}:s{index}"
    for attempt in range(100_000):
        candidate = tag if attempt == 0 else f"{tag}.{attempt}"
        if low <= key_slot(candidate.encode()) < high:
            return f"{{{candidate}}}"
    return f"{{{tag}}}"  # unreachable in practice: a range of 16384/N slots is always hit


def meta_key_base(prefix: str, *, clustered: bool) -> str:
    """Where what all shards share lives: the same whatever ``QUEUE_SHARDS`` says."""
    return f"{{{prefix}}}" if clustered else prefix


def shard_of(entry: Entry, count: int) -> int:
    """The shard of ``entry``: its user's, so one user's events stay in order."""
    if count == 1:
        return 0
    key = entry.user or entry.message_id
    return zlib.crc32(key.encode()) % count


def _split_id(record_id: str) -> tuple[int, str]:
    shard, _, rid = record_id.partition("/")
    return int(shard), rid


def _tag(index: int, records: Records) -> Records:
    prefix = f"{index}/"
    return records.with_ids([prefix + rid for rid in records.ids])


def _untag(records: Sequence[Record]) -> dict[int, list[Record]]:
    out: dict[int, list[Record]] = {}
    for r in records:
        index, rid = _split_id(r.id)
        out.setdefault(index, []).append(r._replace(id=rid))
    return out


def _by_shard(ids: Sequence[str]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for record_id in ids:
        index, rid = _split_id(record_id)
        out.setdefault(index, []).append(rid)
    return out


class _Shard(RedisQueue):
    """One shard: a RedisQueue whose client is the one of the node holding its keys."""

    def __init__(self, owner: ShardedRedisQueue, index: int, key_base: str) -> None:
        super().__init__(
            owner.url,
            prefix=owner.prefix,
            timeout=owner.timeout,
            dead_letters=owner.dead_letters,
            wait_replicas=owner.wait_replicas,
            key_base=key_base,
        )
        self.index = index
        self._owner = owner

    def unsent_push(self, entries: Sequence[Entry], only: str | None) -> Push:
        """A push not sent yet, under an origin of its own, for ``push_again`` to store once."""
        origin = self._origins.get().take()  # never given back: the push owns it
        first = origin.next
        origin.next += len(entries)
        return Push(tuple(entries), only, origin.name, first)

    def __repr__(self) -> str:
        return f"RedisQueue(prefix={self.prefix!r}, shard={self.index})"

    def _connect(self) -> Any:
        return self._owner.topology.client_for(self._stream_key)

    def _where(self) -> str:
        client = self._client.peek()
        if client is not None and self._owner.topology.clustered:
            kwargs = client.connection_pool.connection_kwargs
            return f"{kwargs.get('host')}:{kwargs.get('port')}"
        return self._owner.topology.where

    def close(self) -> None:
        self._client.reset()  # the topology owns the clients and closes them


class ShardedRedisQueue(Queue):
    """``QUEUE_SHARDS`` Redis streams read as one log; see the module's docstring."""

    concurrent_reads = True

    def __init__(
        self,
        target: RedisTarget,
        *,
        prefix: str = "segment_mw",
        timeout: float = 5.0,
        dead_letters: DeadLetterLimits = DEFAULT_DEAD_LETTER_LIMITS,
        shards: int = 1,
        wait_replicas: int = 0,
    ) -> None:
        self.target = target
        self.url = target.url
        self.prefix = prefix
        self.timeout = timeout
        self.dead_letters = dead_letters
        self.shards = shards
        self.wait_replicas = wait_replicas
        self._clustered = target.kind == "cluster"
        self._topology: forks.ProcessLocal[Topology] = forks.ProcessLocal(
            lambda: open_topology(target, timeout)
        )
        self._lock = threading.Lock()
        # Shards by key base; a record's id names its shard by its place in _handles, a
        # number good for this process only (ids are handed back by the process that
        # read them).
        self._all: dict[str, _Shard] = {}
        self._handles: list[_Shard] = []
        self._meta = self._shard(meta_key_base(prefix, clustered=self._clustered))
        self._written = [
            self._shard(shard_key_base(prefix, i, shards, clustered=self._clustered))
            for i in range(shards)
        ]
        self._read_set: list[_Shard] = list(self._written)
        self._read_refreshed = 0.0
        self._registered: forks.ProcessLocal[list[float]] = forks.ProcessLocal(lambda: [0.0])
        self._turn = 0

    def __repr__(self) -> str:
        return f"ShardedRedisQueue(prefix={self.prefix!r}, shards={self.shards})"

    @property
    def topology(self) -> Topology:
        return self._topology.get()

    def _shard(self, key_base: str) -> _Shard:
        with self._lock:
            found = self._all.get(key_base)
            if found is None:
                found = self._all[key_base] = _Shard(self, len(self._handles), key_base)
                self._handles.append(found)
            return found

    def _call(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``call(...)`` on a shard; after an error that may mean its node moved, look again."""
        try:
            return call(*args, **kwargs)
        except PushFailed as exc:
            self._maybe_moved(exc.cause)
            raise
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
            self._maybe_moved(exc)
            raise

    def _maybe_moved(self, exc: BaseException) -> None:
        if not isinstance(exc, redis.RedisError) or isinstance(exc, ReplicasBehind):
            return  # the master is where it was: its replicas are behind
        if (
            isinstance(exc, redis.ResponseError)
            and not isinstance(exc, _MOVED_ERRORS)
            and not str(exc).startswith(_MOVED)
        ):
            return
        self.topology.invalidate()
        for shard in list(self._all.values()):
            shard._client.reset()

    # -- which shards exist ------------------------------------------------------------
    def _registry_key(self) -> str:
        return self._meta._key("shards")

    def _handle(self, index: int) -> _Shard:
        try:
            return self._handles[index]
        except IndexError:
            raise ValueError(f"no shard {index} in this process: a record id of another") from None

    def _register(self) -> None:
        """Name the shards this process writes in the registry, now and then."""
        stamp = self._registered.get()
        now = time.monotonic()
        if now - stamp[0] < REGISTRY_REFRESH:
            return
        members = [s.key_base for s in self._written]
        try:
            self._call(self._meta.client.sadd, self._registry_key(), *members)
        except redis.RedisError:
            return  # asked again at the next push; the events are stored meanwhile
        stamp[0] = now

    def _reading(self) -> list[_Shard]:
        """Every shard to read: those written now, and those the registry names."""
        now = time.monotonic()
        if now - self._read_refreshed >= REGISTRY_REFRESH:
            try:
                raw = self._call(self._meta.client.smembers, self._registry_key())
            except redis.RedisError:
                # Shard 0's node is failing over, say: go on reading the shards known
                # (the others are still served), and ask again in a second.
                self._read_refreshed = now - REGISTRY_REFRESH + 1.0
                return self._read_set
            bases = {s.key_base for s in self._written} | {m.decode() for m in raw}
            self._read_set = sorted((self._shard(b) for b in bases), key=lambda s: s.index)
            self._read_refreshed = now
        return self._read_set

    def _rotated(self) -> list[_Shard]:
        """The shards to read, starting with a different one each time (fairness)."""
        shards = self._reading()
        self._turn = (self._turn + 1) % len(shards)
        return shards[self._turn :] + shards[: self._turn]

    # -- producers ---------------------------------------------------------------------
    def _groups(self, entries: Sequence[Entry]) -> list[tuple[_Shard, list[Entry]]]:
        if self.shards == 1:
            return [(self._written[0], list(entries))]
        groups: dict[int, list[Entry]] = {}
        for entry in entries:
            groups.setdefault(shard_of(entry, self.shards), []).append(entry)
        return [(self._written[i], group) for i, group in groups.items()]

    def push(self, entries: Sequence[Entry], *, only: str | None = None) -> None:
        if not entries:
            return
        self._register()
        groups = self._groups(entries)
        for n, (shard, group) in enumerate(groups):
            try:
                self._call(shard.push, group, only=only)
            except PushFailed as exc:
                rest = [s.unsent_push(g, only) for s, g in groups[n + 1 :]]
                raise PushFailed([*exc.unsure, *rest], exc.cause) from exc.cause
            except Exception as exc:
                if not n:
                    raise  # nothing was stored
                # Earlier shards stored theirs: only what is left may be finished again.
                rest = [s.unsent_push(g, only) for s, g in groups[n:]]
                raise PushFailed(rest, exc) from exc

    def push_again(self, pushes: Sequence[Push]) -> None:
        done = 0
        for push in pushes:
            shard = self._written[shard_of(push.entries[0], self.shards)] if push.entries else None
            if shard is None:
                done += 1
                continue
            try:
                self._call(shard.push_again, [push])
            except PushFailed as exc:
                raise PushFailed([*exc.unsure, *pushes[done + 1 :]], exc.cause) from exc.cause
            done += 1

    # -- consumers ---------------------------------------------------------------------
    def ensure_destinations(self, names: Sequence[str]) -> None:
        for shard in self._reading():
            self._call(shard.ensure_destinations, names)

    def _gather(
        self, shards: list[_Shard], count: int, read: Callable[[_Shard, int], Records]
    ) -> Records:
        """Up to ``count`` records read from the shards in turn, tagged with their shard."""
        out: list[Records] = []
        held = 0
        for shard in shards:
            if held >= count:
                break
            got = self._call(read, shard, count - held)
            out.append(_tag(shard.index, got))
            held += len(got)
        return Records.join(out)

    def read_new(self, destination: str, consumer: str, count: int) -> Records:
        return self._gather(
            self._rotated(), count, lambda shard, n: shard.read_new(destination, consumer, n)
        )

    def claim_idle(self, destination: str, consumer: str, min_idle: float, count: int) -> Records:
        return self._gather(
            self._rotated(),
            count,
            lambda shard, n: shard.claim_idle(destination, consumer, min_idle, n),
        )

    def enqueued_at(self, record: Record) -> float:
        return entry_time(_split_id(record.id)[1])

    def oldest_pending_idle(self, destination: str) -> float | None:
        idle = [
            found
            for shard in self._reading()
            if (found := self._call(shard.oldest_pending_idle, destination)) is not None
        ]
        return max(idle) if idle else None

    def touch(self, destination: str, consumer: str, ids: Sequence[str]) -> list[str]:
        held: list[str] = []
        for index, rids in _by_shard(ids).items():
            shard = self._handle(index)
            got = self._call(shard.touch, destination, consumer, rids)
            held.extend(f"{index}/{rid}" for rid in got)
        return held

    def hold_for_retry(self, destination: str, ids: Sequence[str], *, attempts: int = 0) -> None:
        for index, rids in _by_shard(ids).items():
            shard = self._handle(index)
            self._call(shard.hold_for_retry, destination, rids, attempts=attempts)

    def read_retry(self, destination: str, count: int) -> Records:
        return self._gather(
            self._reading(), count, lambda shard, n: shard.read_retry(destination, n)
        )

    def ack(self, destination: str, ids: Sequence[str], *, delivered: int = 0) -> None:
        left = delivered
        for index, rids in _by_shard(ids).items():
            shard = self._handle(index)
            mine = min(left, len(rids))
            left -= mine
            self._call(shard.ack, destination, rids, delivered=mine)

    def dead_letter(self, destination: str, records: Sequence[Record], error: str) -> int:
        dropped = 0
        for index, mine in _untag(records).items():
            shard = self._handle(index)
            dropped += self._call(shard.dead_letter, destination, mine, error)
        return dropped

    def replay(self, destination: str) -> int:
        # Each shard's dead letters go back into that shard: a user's events stay together.
        return sum(self._call(shard.replay, destination) for shard in self._reading())

    def trim(self) -> None:
        shards = self._reading()
        names = sorted({n for s in shards for n in self._call(s.known_destinations)})
        for shard in shards:
            # A shard only written so far has no groups yet, and trimming a stream without
            # groups drops everything: give it the destinations' cursors first.
            self._call(shard.ensure_destinations, names)
            self._call(shard.trim)
        self._forget_drained(shards)

    def _forget_drained(self, shards: Sequence[_Shard]) -> None:
        """Drop from the registry shards nobody writes any more once they are empty.

        A writer still on the old setting names its shards again within
        REGISTRY_REFRESH, and what it wrote meanwhile stays stored.
        """
        for shard in shards:
            if shard in self._written:
                continue
            if self._call(shard.client.xlen, shard.stream) == 0:
                self._call(self._meta.client.srem, self._registry_key(), shard.key_base)
                self._read_refreshed = 0.0

    # -- shared state (shard 0) --------------------------------------------------------
    def get_backoff(self, destination: str) -> Backoff:
        return self._call(self._meta.get_backoff, destination)

    def set_backoff(self, destination: str, backoff: Backoff, error: str | None) -> None:
        self._call(self._meta.set_backoff, destination, backoff, error)

    def clear_backoff(self, destination: str) -> None:
        self._call(self._meta.clear_backoff, destination)

    def acquire(self, name: str, ttl: float) -> bool:
        return self._call(self._meta.acquire, name, ttl)

    def release(self, name: str) -> None:
        self._call(self._meta.release, name)

    def take_lease(self, name: str, ttl: float) -> Lease | None:
        return self._call(self._meta.take_lease, name, ttl)

    def add_counts(self, counts: dict[str, int]) -> None:
        self._call(self._meta.add_counts, counts)

    def get_counts(self) -> dict[str, int]:
        return self._call(self._meta.get_counts)

    def known_destinations(self) -> list[str]:
        return sorted({n for s in self._reading() for n in self._call(s.known_destinations)})

    def forget(self, destination: str) -> None:
        reading = self._reading()
        for shard in reading:
            self._call(shard.forget, destination)
        if self._meta not in reading:  # its back-off record and last error
            self._call(self._meta.forget, destination)

    def check_server(self) -> list[ServerWarning]:
        """Every master's version and eviction policy (each shard's node, and the rest)."""
        found: list[ServerWarning] = []
        for where, client in self.topology.masters():
            pipe = client.pipeline(transaction=False)
            pipe.info("server")
            pipe.info("memory")
            server, memory = pipe.execute()
            found.extend(self._named(w, where) for w in server_warnings(server, memory, where))
        return found

    def _named(self, warning: ServerWarning, where: str) -> ServerWarning:
        """The warning, saying which node it is about when there are several."""
        if not self._clustered:
            return warning
        return ServerWarning(warning.kind, f"Redis node {where}: {warning.message}")

    def status(self, destinations: Sequence[str]) -> QueueStatus:
        """Each shard's status, added up: counts summed, the oldest age the oldest."""
        reading = self._reading()
        parts = [self._call(s.status, destinations) for s in reading]
        total = QueueStatus(depth=0, oldest_age=None)
        shared = (
            parts[reading.index(self._meta)]
            if self._meta in reading
            else self._call(self._meta.status, destinations)
        )
        parts_and_shared = [*parts, shared]
        total.counters = dict(shared.counters)
        ages = [p.oldest_age for p in parts if p.oldest_age is not None]
        total.oldest_age = max(ages) if ages else None
        total.stored = sum(p.stored for p in parts)
        for shard, part in zip(reading, parts, strict=True):
            for text in part.warnings:
                named = self._named(ServerWarning("", text), shard._where()).message
                if named not in total.warnings:
                    total.warnings.append(named)
        for name in destinations:
            dest = DestinationStatus(name=name)
            for part in parts:
                one = part.destinations[name]
                dest.queued += one.queued
                dest.delivered += one.delivered
                dest.retrying += one.retrying
                dest.dead += one.dead
                dest.dead_dropped += one.dead_dropped
            for part in parts_and_shared:  # the newest error, the back-off: shard 0's too
                one = part.destinations[name]
                if one.last_error_at is not None and (
                    dest.last_error_at is None or one.last_error_at > dest.last_error_at
                ):
                    dest.last_error, dest.last_error_at = one.last_error, one.last_error_at
                if one.backoff_until is not None:
                    dest.backoff_until = max(dest.backoff_until or 0.0, one.backoff_until)
            total.destinations[name] = dest
            total.depth = max(total.depth, dest.queued)
        return total

    def close(self) -> None:
        for shard in list(self._all.values()):
            shard.close()
        topology = self._topology.reset()
        if topology is not None:
            topology.close()
