"""Redis Streams backend: one stream, one consumer group per destination.

Every destination is a consumer group on the same stream, so a message is stored once and
each destination reads it independently; ``XACK`` marks it done for one destination and
the stream is trimmed up to the oldest message any group still needs. Messages parked for
retry belong to a reserved consumer in the group, so a retry re-sends to that destination
only. Connections are opened lazily and re-opened after a fork, with bounded timeouts and
no client-side retry loop. The first use checks the server: Redis 7.0 or later (XINFO
GROUPS' ``lag`` lets ``status`` count the backlog without reading it; XTRIM MINID and
XPENDING IDLE are 6.2), and a ``maxmemory-policy`` that can evict our keys is warned of.
"""

from __future__ import annotations

import contextlib

# Imported now, not lazily by the first connect's getaddrinfo in the producer's thread,
# where each file read waits for the GIL a busy web process rarely gives up.
import encodings.idna  # noqa: F401
import hashlib
import inspect
import logging
import operator
import os
import threading
import time
from collections.abc import Callable, Sequence
from itertools import repeat
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import LockError, NoScriptError
from redis.lock import Lock
from redis.retry import Retry

from .. import forks, metrics
from ..config import hide_password
from ..errors import ConfigurationError
from ..events import Entry
from .base import (
    DEFAULT_DEAD_LETTER_LIMITS,
    RETRY_CONSUMER,
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
from .topology import block_ms

log = logging.getLogger("segment_mw.queue")

MIN_REDIS_VERSION = (7, 0)
_logged_warnings: set[str] = set()

# Caps a destination's dead letters and counts what the caps drop, in one atomic step:
# KEYS dead stream, stats hash; ARGV max events, the oldest id kept (ms-seq).
_CAP_DEAD_LETTERS = """
local dropped = redis.call('XTRIM', KEYS[1], 'MAXLEN', ARGV[1])
dropped = dropped + redis.call('XTRIM', KEYS[1], 'MINID', ARGV[2])
if dropped > 0 then redis.call('HINCRBY', KEYS[2], 'dead_dropped', dropped) end
return dropped
"""

_pack_command: Callable[[tuple[bytes | str, ...]], bytes] | None
try:
    import hiredis
except ImportError:  # hiredis is optional: redis-py packs the commands then
    _pack_command = None
else:
    _pack_command = getattr(hiredis, "pack_command", None)


class ReplicasBehind(redis.RedisError):
    """Fewer replicas than QUEUE_WAIT_REPLICAS confirmed a push in time."""


# How to turn CLIENT SETINFO off: redis-py 7+ takes driver_info, older ones lib_name/version.
_NO_CLIENT_INFO: dict[str, None] = (
    {"driver_info": None}
    if "driver_info" in inspect.signature(redis.Redis.__init__).parameters
    else {"lib_name": None, "lib_version": None}
)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_FIRST = operator.itemgetter(0)
_SECOND = operator.itemgetter(1)


def _bodies_alone(fields: list[Any]) -> bool:
    """Whether every entry holds its body alone (``e``): checked in C."""
    return set(map(len, fields)) == {2} and all(map(operator.eq, map(_FIRST, fields), repeat(b"e")))


def _record(rid: str, fields: list[bytes], attempts: int = 0) -> Record:
    """A record from a stream entry's flat field list (``e``, and ``i`` / ``o`` if set)."""
    named = dict(zip(fields[::2], fields[1::2], strict=False))
    only = named.get(b"o")
    return Record(
        rid,
        named[b"e"],
        named.get(b"i"),
        only.decode() if only is not None else None,
        None,  # the id tells it: RedisQueue.enqueued_at
        attempts,
    )


def entry_time(entry_id: str) -> float:
    """When a stream entry was added (its id is the server's clock in ms), in seconds."""
    return int(entry_id.split("-", 1)[0]) / 1000.0


def _next_id(entry_id: str) -> str:
    ms, seq = entry_id.split("-", 1)
    return f"{ms}-{int(seq) + 1}"


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-", 1)
    return int(ms), int(seq)


# Appends entries at most once. Every push names its origin (one producer's run of pushes,
# never two at a time) and the ordinal of its first entry; the origin's mark holds the last
# ordinal stored. A push again of entries a timed-out push did store is then a no-op, and
# one that stored part of them appends the rest only. Atomic, so never half applied.
# KEYS: the stream, the origin's mark. ARGV: the first ordinal, the mark's ttl (ms), the
# replay target ("" for none), then a body and integrations ("" for none) per entry.
_PUSH_SCRIPT = """
local first = tonumber(ARGV[1])
local count = (#ARGV - 3) / 2
local skip = 0
local mark = redis.call('GET', KEYS[2])
if mark then
  skip = tonumber(mark) - first + 1
  if skip < 0 then
    return redis.error_reply('SEGMENT_MW_GAP an earlier push of this origin is missing')
  end
  if skip >= count then
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
    return 0
  end
end
local only = ARGV[3]
for i = skip, count - 1 do
  local body, integrations = ARGV[4 + 2 * i], ARGV[5 + 2 * i]
  if integrations == '' then
    if only == '' then
      redis.call('XADD', KEYS[1], '*', 'e', body)
    else
      redis.call('XADD', KEYS[1], '*', 'e', body, 'o', only)
    end
  elseif only == '' then
    redis.call('XADD', KEYS[1], '*', 'e', body, 'i', integrations)
  else
    redis.call('XADD', KEYS[1], '*', 'e', body, 'i', integrations, 'o', only)
  end
end
redis.call('SET', KEYS[2], tostring(first + count - 1), 'PX', ARGV[2])
return count - skip
"""
_PUSH_SHA = hashlib.sha1(_PUSH_SCRIPT.encode()).hexdigest().encode()  # noqa: S324 - Redis' id

# Resets the idle time of the pending entries a consumer still holds among the given ids
# (XCLAIM alone would take them from whoever claimed them meanwhile); returns those ids.
# KEYS: the stream. ARGV: the group, the consumer, then the ids.
_TOUCH_SCRIPT = """
local held = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
for i = 3, #ARGV do
  local row = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if row[1] then
    held[#held + 1] = ARGV[i]
  end
end
if #held == 5 then
  return {}
end
held[#held + 1] = 'JUSTID'
redis.call(unpack(held))
return {unpack(held, 6, #held - 1)}
"""

# The messages parked for retry, oldest first, with how often each was tried: the delivery
# count hold_for_retry set (read with XRANGE, which, unlike XREADGROUP, leaves it as is).
# KEYS: the stream. ARGV: the group, the retry consumer, how many.
_READ_RETRY_SCRIPT = """
local rows = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[3]), ARGV[2])
local out = {}
for i, row in ipairs(rows) do
  local entry = redis.call('XRANGE', KEYS[1], row[1], row[1])
  out[i] = {row[1], row[4], entry[1] and entry[1][2] or false}
end
return out
"""

# Entries per XREADGROUP: a read of BATCH_MAX_EVENTS goes as several in one round trip.
# Redis makes each slice while the one before it is parsed, and each slice is turned into
# records, and its parsed reply freed, before the next is parsed. A whole 2,500-entry
# reply lived long enough for the garbage collector to move thousands of its objects into
# the older generations, whose collections took a quarter of a flush's CPU; in slices of
# 250 that time halves and a flush delivers ~15 % more a second (bench_delivery.py; 100
# measured the same, 50 slower).
READ_SLICE = 250
# Entries per push script: each runs atomically, so Redis serves its other clients between
# them (250 entries take it well under a millisecond).
SCRIPT_ENTRIES = 250
# How long an origin's mark outlives its last push (ms): an entry whose push timed out may
# be pushed again that much later (after a long outage) and still be stored once.
_MARK_TTL = b"86400000"  # a day
# Once a push again succeeded its origin is done; the mark only has to outlast the timed
# out original, which Redis may still be about to run.
_DONE_MARK_TTL = b"600000"  # ten minutes
TOUCH_IDS = 1000


class _Origins:
    """This process's origins of pushes; each is lent to one push at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.free: list[_Origin] = []

    def take(self) -> _Origin:
        with self.lock:
            if self.free:
                return self.free.pop()
        return _Origin()

    def give_back(self, origin: _Origin) -> None:
        with self.lock:
            self.free.append(origin)


class _Origin:
    __slots__ = ("mark", "name", "next")

    def __init__(self) -> None:
        self.name = os.urandom(12).hex()
        self.next = 1
        self.mark: bytes | None = None  # the key of its mark, once a queue names it


class _NotSent(redis.ConnectionError):
    """No connection could be had: nothing of the commands reached Redis."""


class _Unsure(Exception):
    """The commands may have reached Redis, in part or whole (the cause says why not all)."""


class _RedisLease(Lease):
    """redis-py's Lock: a token of our own, renewed and released by compare-and-set."""

    def __init__(self, lock: Lock, name: str, ttl: float) -> None:
        super().__init__(name, ttl)
        self._lock = lock

    def renew(self) -> bool:
        try:
            self._lock.reacquire()
        except (LockError, redis.RedisError):  # lapsed and maybe taken, or cannot tell
            return False
        return True

    def release(self) -> None:
        try:
            self._lock.release()
        except (LockError, redis.RedisError):  # lapsed: it is not ours to release
            log.debug("lease %s was no longer held", self.name)


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("."):
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def server_warnings(
    server: dict[str, Any], memory: dict[str, Any], where: str
) -> list[ServerWarning]:
    """Judge ``INFO server`` and ``INFO memory``: too old raises, eviction is warned of.

    ``allkeys-*`` policies may evict the log and the dead letters themselves. ``volatile-*``
    ones evict only keys with a TTL: ours are the leases and back-off records (the queue
    has none), so a batch may be sent twice or a back-off cut short, but nothing is lost.
    """
    version = str(server.get("redis_version", "unknown"))
    if _version(version) < MIN_REDIS_VERSION:
        needed = ".".join(map(str, MIN_REDIS_VERSION))
        raise ConfigurationError(
            f"QUEUE_URL: the Redis server at {where} runs version {version}; segment_mw "
            f"needs Redis {needed} or later (XINFO GROUPS lag, XTRIM MINID, XPENDING IDLE). "
            "Upgrade it, or point QUEUE_URL at a newer server"
        )
    policy = str(memory.get("maxmemory_policy", "noeviction"))
    if policy == "noeviction":
        return []
    limit = (
        ""
        if int(memory.get("maxmemory") or 0)
        else " (maxmemory is 0 now, so nothing is evicted until a limit is set)"
    )
    if policy.startswith("volatile-"):
        return [
            ServerWarning(
                "evicts-leases",
                f"Redis maxmemory-policy is {policy}: when memory is full Redis evicts keys "
                "with a TTL, among them segment_mw's leases and back-off records, so a batch "
                "may be sent twice or a back-off cut short (the queue itself has no TTL and "
                f"is kept){limit}. Set maxmemory-policy noeviction to rule that out.",
            )
        ]
    return [
        ServerWarning(
            "evicts-queue",
            f"Redis maxmemory-policy is {policy}: when memory is full Redis may evict the "
            f"queue itself (the log, dead letters, counters) and events are lost without a "
            f"trace{limit}. Set maxmemory-policy noeviction: a full Redis then refuses "
            "writes, and each process holds events in its bounded spill until it has room.",
        )
    ]


class RedisQueue(Queue):
    # A read may run in another thread while this one acknowledges: redis-py's connection
    # pool is thread-safe. The deliverer reads the next batches while it sends this one.
    concurrent_reads = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "segment_mw",
        timeout: float = 5.0,
        dead_letters: DeadLetterLimits = DEFAULT_DEAD_LETTER_LIMITS,
        wait_replicas: int = 0,
        key_base: str | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self.dead_letters = dead_letters
        # Pushes return once this many replicas have them (WAIT): see _replicated.
        self.wait_replicas = wait_replicas
        # What every key begins with (see shard_key_base): the prefix itself for the one
        # log of a single server, a hash-tagged name per shard otherwise.
        self.key_base = prefix if key_base is None else key_base
        self.stream = f"{self.key_base}:log"
        self._stream_key = self.stream.encode()
        # Made in each process (a forked child must not share the parent's sockets, nor
        # push under its origins: the same ordinals would be taken for stored ones).
        self._client: forks.ProcessLocal[Any] = forks.ProcessLocal(self._connect)
        self._origins: forks.ProcessLocal[_Origins] = forks.ProcessLocal(_Origins)
        self._server_checked = False
        self._known_groups: set[str] = set()

    def __repr__(self) -> str:
        return f"RedisQueue(prefix={self.prefix!r})"

    def _connect(self) -> Any:
        # Typed as Any: redis-py's reply unions (bytes | str | None …) do not match the
        # decode_responses=False replies we get, and every reply is decoded here anyway.
        client: Any = redis.Redis.from_url(
            self.url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
            protocol=2,
            # No CLIENT SETINFO: it costs two round trips per connection, and finding
            # redis-py's version scans site-packages, which a thread starved of the GIL
            # by a busy web process can take seconds to get through.
            **_NO_CLIENT_INFO,
        )
        return client

    def _where(self) -> str:
        """The server, as warnings name it (without its password)."""
        return str(hide_password(self.url))

    @property
    def client(self) -> Any:
        client = self._client.get()
        if not self._server_checked:
            self._check_at_first_connect(client)
        return client

    def _check_at_first_connect(self, client: Any) -> None:
        """Refuse a server too old for the queue; warn once of one that can evict it.

        Raises ConfigurationError every time until the server is replaced: the producer
        keeps the events in its bounded spill meanwhile, and counts and logs the failure.
        """
        try:
            warnings = self._server_warnings(client)
        except ConfigurationError as exc:
            metrics.count("misconfigured")
            metrics.warn_once_per_interval("misconfigured", "%s", exc)
            raise
        self._server_checked = True
        for warning in warnings:
            if warning.message not in _logged_warnings:  # once per process, not per queue
                _logged_warnings.add(warning.message)
                log.warning("%s", warning.message)

    def _server_warnings(self, client: Any) -> list[ServerWarning]:
        pipe = client.pipeline(transaction=False)
        pipe.info("server")
        pipe.info("memory")
        server, memory = pipe.execute()
        return server_warnings(server, memory, self._where())

    def check_server(self) -> list[ServerWarning]:
        return self._server_warnings(self.client)

    def _key(self, kind: str, name: str | None = None) -> str:
        return f"{self.key_base}:{kind}" if name is None else f"{self.key_base}:{kind}:{name}"

    # -- producers ---------------------------------------------------------------------
    def push(self, entries: Sequence[Entry], *, only: str | None = None) -> None:
        if entries:
            self._push_new(entries, only, ())

    def push_and_acquire(self, entries: Sequence[Entry], lease: str, ttl: float) -> bool | None:
        """``push`` then ``acquire`` in the same round trip; True when the lease was taken."""
        reply = self._push_new(entries, None, (self._set_nx(lease, ttl),))
        if isinstance(reply, redis.ResponseError):
            return None  # stored; the lease could not be tried (the producer asks later)
        return reply is not None

    def push_again(self, pushes: Sequence[Push]) -> None:
        scripts: list[tuple[bytes, ...]] = []
        for push in pushes:
            mark = self._key("origin", push.origin).encode()
            scripts += self._scripts(mark, push.first, push.entries, push.only, _DONE_MARK_TTL)
        try:
            self._run_scripts(scripts, ())
        except (_NotSent, _Unsure) as exc:
            raise PushFailed(pushes, exc.__cause__ or exc) from exc.__cause__

    def _push_new(
        self,
        entries: Sequence[Entry],
        only: str | None,
        tail: Sequence[tuple[bytes, ...]],
    ) -> Any:
        """Push under an origin lent for this push alone; the reply of the last ``tail`` command.

        After a failure the origin is not given back: its last push may or may not be
        stored, and only ``push_again`` of that same push may use it from then on.
        """
        origins = self._origins.get()
        origin = origins.take()
        first = origin.next
        origin.next += len(entries)
        if origin.mark is None:
            origin.mark = self._key("origin", origin.name).encode()
        try:
            reply = self._run_scripts(
                self._scripts(origin.mark, first, entries, only, _MARK_TTL), tail
            )
        except _NotSent as exc:
            origin.next = first  # nothing was sent: the ordinals are free again
            origins.give_back(origin)
            raise (exc.__cause__ or exc) from None
        except _Unsure as exc:
            push = Push(tuple(entries), only, origin.name, first)
            raise PushFailed([push], exc.__cause__ or exc) from exc.__cause__
        origins.give_back(origin)
        return reply

    def _scripts(
        self,
        mark: bytes,
        first: int,
        entries: Sequence[Entry],
        only: str | None,
        mark_ttl: bytes,
    ) -> list[tuple[bytes, ...]]:
        """The push script calls storing ``entries`` (ordinals from ``first``) once."""
        target = only.encode() if only is not None else b""
        scripts = []
        for start in range(0, len(entries), SCRIPT_ENTRIES):
            args: list[bytes] = [str(first + start).encode(), mark_ttl, target]
            for entry in entries[start : start + SCRIPT_ENTRIES]:
                args += (entry.body, entry.integrations or b"")
            scripts.append((b"EVALSHA", _PUSH_SHA, b"2", self._stream_key, mark, *args))
        return scripts

    def _run_scripts(
        self, scripts: list[tuple[bytes, ...]], tail: Sequence[tuple[bytes, ...]]
    ) -> Any:
        """Run the push scripts, then ``tail``, in one round trip; the last reply of ``tail``.

        ``_Unsure`` for any failure once the commands may have been sent; ``_NotSent``
        when they were not.
        """
        waits = self._wait_command()
        try:
            replies = self._pipeline([*scripts, *waits, *tail])
            pushed = replies[: len(scripts)]
            acked = replies[len(scripts) : len(scripts) + len(waits)]
            if any(isinstance(r, NoScriptError) for r in pushed):
                # Redis restarted or its scripts were flushed. Load it and run them again:
                # one that did run meanwhile is not stored twice.
                self.client.script_load(_PUSH_SCRIPT)
                again = self._pipeline([*scripts, *waits])
                pushed, acked = again[: len(scripts)], again[len(scripts) :]
        except _NotSent:
            raise
        except Exception as exc:
            raise _Unsure() from exc
        for reply in pushed:
            if isinstance(reply, redis.ResponseError):
                raise _Unsure() from reply
        self._replicated(acked)
        # The pushes are stored: the last command's error comes back as its reply, for the
        # caller to tell from a failed push (which would be pushed again).
        return replies[-1] if tail else None

    def _wait_command(self) -> list[tuple[bytes, ...]]:
        """``WAIT`` for QUEUE_WAIT_REPLICAS replicas, within the socket's timeout."""
        if not self.wait_replicas:
            return []
        return [(b"WAIT", str(self.wait_replicas).encode(), str(block_ms(self.timeout)).encode())]

    def _replicated(self, acked: Sequence[Any]) -> None:
        """``_Unsure`` unless the replicas confirmed: the push must be finished again.

        Stored on the master alone, a push would be lost if it failed over now; pushed
        again (at most once, by its origin) it waits for the replicas once more.
        """
        for reply in acked:
            if isinstance(reply, Exception):
                raise _Unsure() from reply
            if int(reply) < self.wait_replicas:
                raise _Unsure() from ReplicasBehind(
                    f"{int(reply)} of {self.wait_replicas} replicas confirmed the push"
                )

    def _set_nx(self, lease: str, ttl: float) -> tuple[bytes, ...]:
        key = self._key("lease", lease).encode()
        return (b"SET", key, b"1", b"NX", b"PX", str(max(int(ttl * 1000), 1)).encode())

    def _pipeline(
        self,
        commands: Sequence[tuple[bytes | str, ...]],
        each: Callable[[Any], Any] | None = None,
    ) -> list[Any]:
        """Send the commands in one write and read every reply (an error reply as its exception).

        A pipeline without redis-py's per-command bookkeeping, which cost three times as
        much as Redis itself for each command. ``each``, if given, turns each reply that
        is not an error into what is kept of it as soon as it is read, before the next
        one is parsed. ``_NotSent`` when no connection could be had.
        """
        try:  # the first use checks the server: nothing is sent before that either
            pool = self.client.connection_pool
            try:
                conn = pool.get_connection()
            except TypeError:  # redis-py before 5.3 wants a command name
                conn = pool.get_connection("XADD")
        except Exception as exc:
            raise _NotSent(str(exc)) from exc
        replies: list[Any] = []
        try:
            if _pack_command is not None:
                conn.send_packed_command([b"".join([_pack_command(c) for c in commands])])
            else:
                conn.send_packed_command(conn.pack_commands(commands))
            for _ in commands:
                try:
                    reply = conn.read_response()
                except redis.ResponseError as exc:  # the reply was read: the rest still come
                    replies.append(exc)
                else:
                    replies.append(reply if each is None else each(reply))
        except BaseException:
            conn.disconnect()  # replies may be left unread on it
            raise
        finally:
            pool.release(conn)
        return replies

    def _replies(
        self,
        commands: Sequence[tuple[bytes | str, ...]],
        each: Callable[[Any], Any] | None = None,
    ) -> list[Any]:
        """``_pipeline``, raising the connection's own error when nothing could be sent."""
        try:
            return self._pipeline(commands, each)
        except _NotSent as exc:
            raise (exc.__cause__ or exc) from None

    def _run(self, commands: Sequence[tuple[bytes | str, ...]]) -> Any:
        """``_pipeline``, raising the first error reply; else the last reply."""
        replies = self._replies(commands)
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                raise reply
        return replies[-1] if replies else None

    # -- consumers ---------------------------------------------------------------------
    def ensure_destinations(self, names: Sequence[str]) -> None:
        for name in names:
            if name in self._known_groups:
                continue
            try:
                self.client.xgroup_create(self.stream, name, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._known_groups.add(name)

    def _records(self, reply: Any) -> Records:
        """The records of one ``XREADGROUP ... >`` reply (new entries: none trimmed)."""
        if not reply:
            return Records([], [])
        raw = reply[0][1]
        ids = list(map(bytes.decode, map(_FIRST, raw)))
        fields = list(map(_SECOND, raw))
        if _bodies_alone(fields):
            # The common case, made in C throughout: a read hands out thousands of
            # records (a slice at a time), and a Python step per record cost as much as
            # the read itself. No time either: the id holds it, and only a retry
            # budget's check asks for it (working it out from every id was 40 % of this).
            return Records(ids, list(map(_SECOND, fields)))
        return Records.of(map(_record, ids, fields))

    def _grouped(self, destination: str, call: Any) -> Any:
        """Run a group command; recreate the group once if Redis lost it (a restart)."""
        self.ensure_destinations([destination])
        try:
            return call()
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._known_groups.discard(destination)
            self.ensure_destinations([destination])
            return call()

    def read_new(self, destination: str, consumer: str, count: int) -> Records:
        group, name, stream = destination.encode(), consumer.encode(), self._stream_key
        commands = [
            (b"XREADGROUP", b"GROUP", group, name, b"COUNT", b"%d" % size, b"STREAMS", stream, b">")
            for size in map(min, repeat(READ_SLICE), range(count, 0, -READ_SLICE))
        ]

        def read() -> list[Records]:
            slices = self._replies(commands, each=self._records)
            served = [p for p in slices if not isinstance(p, redis.ResponseError)]
            if len(served) == len(slices):
                return served
            failed = [p for p in slices if isinstance(p, redis.ResponseError)]
            if not served:
                raise failed[0]  # a group lost to a restart (NOGROUP) is made again
            # The slices Redis served handed their entries to this consumer: they are kept
            # (in order: a refused slice took none, the next one took what it would have).
            metrics.count("read_slice_failed")
            metrics.warn_once_per_interval(
                "read_slice_failed",
                "destination %s: %d of a read's %d slices were refused (%s)",
                destination,
                len(failed),
                len(slices),
                failed[0],
                logger=log,
            )
            return served

        return Records.join(self._grouped(destination, read))

    def read_retry(self, destination: str, count: int) -> Records:
        rows = self._grouped(
            destination,
            lambda: self.client.eval(
                _READ_RETRY_SCRIPT, 1, self.stream, destination, RETRY_CONSUMER, count
            ),
        )
        records: list[Record] = []
        gone: list[str] = []
        for raw_id, tried, fields in rows or ():
            rid = _text(raw_id)
            if fields:
                records.append(_record(rid, fields, int(tried)))
            else:  # trimmed meanwhile
                gone.append(rid)
        if gone:
            self.client.xack(self.stream, destination, *gone)
        return Records.of(records)

    def claim_idle(self, destination: str, consumer: str, min_idle: float, count: int) -> Records:
        # Only from consumers that stopped, not XAUTOCLAIM over everything: messages parked
        # for retry are idle by design, and whoever holds the retry lease may be sending
        # them right now (claiming them too would send them twice).
        min_ms = int(min_idle * 1000)
        summary = self._grouped(destination, lambda: self.client.xpending(self.stream, destination))
        ids: list[Any] = []
        for owner in summary.get("consumers") or []:
            if len(ids) >= count:
                break
            name = _text(owner["name"])
            if name == RETRY_CONSUMER:
                continue
            rows = self.client.xpending_range(
                self.stream, destination, "-", "+", count - len(ids), name, idle=min_ms
            )
            ids.extend(row["message_id"] for row in rows)
        if not ids:
            return Records([], [])
        records: list[Record] = []
        gone: list[str] = []
        for entry_id, fields in self.client.xclaim(self.stream, destination, consumer, min_ms, ids):
            if entry_id is None:
                continue
            rid = _text(entry_id)
            if not fields:  # trimmed meanwhile
                gone.append(rid)
                continue
            only = fields.get(b"o")
            records.append(
                Record(
                    rid,
                    fields[b"e"],
                    fields.get(b"i"),
                    only.decode() if only is not None else None,
                    None,
                )
            )
        if gone:
            self.client.xack(self.stream, destination, *gone)
        return Records.of(records)

    def enqueued_at(self, record: Record) -> float:
        return entry_time(record.id)

    def oldest_pending_idle(self, destination: str) -> float | None:
        try:
            rows = self.client.xpending_range(self.stream, destination, "-", "+", 100)
        except redis.ResponseError:  # no such group yet
            return None
        idle = [
            row["time_since_delivered"] / 1000.0
            for row in rows
            if _text(row["consumer"]) != RETRY_CONSUMER
        ]
        return max(idle) if idle else None

    def touch(self, destination: str, consumer: str, ids: Sequence[str]) -> list[str]:
        held: list[str] = []
        for start in range(0, len(ids), TOUCH_IDS):
            chunk = ids[start : start + TOUCH_IDS]
            reply = self._grouped(
                destination,
                lambda chunk=chunk: self.client.eval(
                    _TOUCH_SCRIPT, 1, self.stream, destination, consumer, *chunk
                ),
            )
            held.extend(_text(i) for i in reply or ())
        return held

    def hold_for_retry(self, destination: str, ids: Sequence[str], *, attempts: int = 0) -> None:
        # The delivery count carries the attempts: JUSTID leaves it as RETRYCOUNT sets it.
        if ids:
            self._grouped(
                destination,
                lambda: self.client.xclaim(
                    self.stream,
                    destination,
                    RETRY_CONSUMER,
                    0,
                    list(ids),
                    retrycount=attempts,
                    justid=True,
                ),
            )

    def ack(self, destination: str, ids: Sequence[str], *, delivered: int = 0) -> None:
        if not ids:
            return
        commands: list[tuple[bytes | str, ...]] = [("XACK", self.stream, destination, *ids)]
        if delivered:
            commands.append(
                ("HINCRBY", self._key("stats", destination), "delivered", str(delivered))
            )
        self._run(commands)

    def _cap_dead_letters(self, pipe: Any, destination: str, now: float) -> None:
        oldest_kept = f"{int((now - self.dead_letters.max_age) * 1000)}-0"
        pipe.eval(
            _CAP_DEAD_LETTERS,
            2,
            self._key("dead", destination),
            self._key("stats", destination),
            self.dead_letters.max_events,
            oldest_kept,
        )

    def dead_letter(self, destination: str, records: Sequence[Record], error: str) -> int:
        if not records:
            return 0
        now = time.time()
        pipe = self.client.pipeline(transaction=True)
        dead = self._key("dead", destination)
        for record in records:
            fields: dict[str, Any] = {"e": record.body, "err": error, "at": now, "id": record.id}
            if record.integrations is not None:
                fields["i"] = record.integrations
            pipe.xadd(dead, fields)
        pipe.xack(self.stream, destination, *[r.id for r in records])
        stats = self._key("stats", destination)
        pipe.hincrby(stats, "dead", len(records))
        pipe.hset(stats, mapping={"last_error": error, "last_error_at": now})
        self._cap_dead_letters(pipe, destination, now)
        return int(pipe.execute()[-1])

    def replay(self, destination: str) -> int:
        dead = self._key("dead", destination)
        moved = 0
        while True:
            rows = self.client.xrange(dead, "-", "+", count=500)
            if not rows:
                return moved
            pipe = self.client.pipeline(transaction=True)
            for _row_id, fields in rows:
                new: dict[str, Any] = {"e": fields[b"e"], "o": destination}
                if b"i" in fields:
                    new["i"] = fields[b"i"]
                pipe.xadd(self.stream, new)
            pipe.xdel(dead, *[r[0] for r in rows])
            pipe.hincrby(self._key("stats", destination), "dead", -len(rows))
            pipe.execute()
            moved += len(rows)

    def trim(self) -> None:
        # The first id any group still needs: its oldest pending message, else the one
        # after its last delivered. Everything before the lowest of those goes.
        pipe = self.client.pipeline(transaction=False)
        pipe.xinfo_groups(self.stream)
        pipe.xinfo_stream(self.stream)
        groups, info = pipe.execute(raise_on_error=False)
        if isinstance(groups, Exception) or isinstance(info, Exception):
            return  # no log yet
        pending = [g for g in groups if int(g["pending"])]
        mins: dict[str, str] = {}
        if pending:
            pipe = self.client.pipeline(transaction=False)
            for group in pending:
                pipe.xpending(self.stream, _text(group["name"]))
            for group, summary in zip(pending, pipe.execute(raise_on_error=False), strict=True):
                if isinstance(summary, Exception):
                    return  # its oldest pending message is unknown: trimming could drop it
                if summary.get("min"):
                    mins[_text(group["name"])] = _text(summary["min"])
        floors = []
        for group in groups:
            name = _text(group["name"])
            floor = _next_id(_text(group["last-delivered-id"]))
            if name in mins:
                floor = min(floor, mins[name], key=_id_key)
            floors.append(floor)
        # No group at all: no process names a destination, and nothing will ever read
        # what is there. Only what was there when we looked goes, not what came since.
        point = min(floors, key=_id_key) if floors else _next_id(_text(info["last-generated-id"]))
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        pipe.xtrim(self.stream, minid=point, approximate=False)
        for group in groups:
            self._cap_dead_letters(pipe, _text(group["name"]), now)
        pipe.execute()

    # -- shared state ------------------------------------------------------------------
    def get_backoff(self, destination: str) -> Backoff:
        raw = self.client.hgetall(self._key("backoff", destination))
        if not raw:
            return Backoff()
        return Backoff(until=float(raw.get(b"until", 0)), attempts=int(raw.get(b"attempts", 0)))

    def set_backoff(self, destination: str, backoff: Backoff, error: str | None) -> None:
        pipe = self.client.pipeline(transaction=False)
        key = self._key("backoff", destination)
        pipe.hset(key, mapping={"until": backoff.until, "attempts": backoff.attempts})
        # The record outlives the wait a little so attempts keep counting up.
        pipe.expire(key, int(max(backoff.until - time.time(), 0)) + 3600)
        if error:
            pipe.hset(
                self._key("stats", destination),
                mapping={"last_error": error, "last_error_at": time.time()},
            )
        pipe.execute()

    def clear_backoff(self, destination: str) -> None:
        self.client.delete(self._key("backoff", destination))

    def acquire(self, name: str, ttl: float) -> bool:
        return self._run([self._set_nx(name, ttl)]) is not None

    def release(self, name: str) -> None:
        self.client.delete(self._key("lease", name))

    def take_lease(self, name: str, ttl: float) -> Lease | None:
        lock = Lock(
            self.client,
            self._key("lease", name),
            timeout=ttl,
            blocking=False,
            thread_local=False,
        )
        return _RedisLease(lock, name, ttl) if lock.acquire(blocking=False) else None

    def known_destinations(self) -> list[str]:
        try:
            return [_text(g["name"]) for g in self.client.xinfo_groups(self.stream)]
        except redis.ResponseError:  # no stream yet
            return []

    def forget(self, destination: str) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.xgroup_destroy(self.stream, destination)
        for kind in ("dead", "stats", "backoff"):
            pipe.delete(self._key(kind, destination))
        # MULTI runs the deletes even when the stream (so the group) does not exist.
        with contextlib.suppress(redis.ResponseError):
            pipe.execute()
        self._known_groups.discard(destination)

    def add_counts(self, counts: dict[str, int]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for name, value in counts.items():
            pipe.hincrby(self._key("counts"), name, value)
        pipe.execute()

    def get_counts(self) -> dict[str, int]:
        raw = self.client.hgetall(self._key("counts"))
        return {_text(k): int(v) for k, v in raw.items()}

    def status(self, destinations: Sequence[str]) -> QueueStatus:
        # Two round trips at most, each command O(1) or O(consumers): the backlog is counted
        # from XINFO GROUPS' lag (Redis 7), never by reading it.
        names = list(destinations)
        pipe = self.client.pipeline(transaction=False)
        pipe.xinfo_groups(self.stream)
        pipe.xlen(self.stream)
        pipe.xrange(self.stream, "-", "+", count=1)
        pipe.hgetall(self._key("counts"))
        pipe.info("server")
        pipe.info("memory")
        for name in names:
            pipe.xpending(self.stream, name)
            pipe.hgetall(self._key("stats", name))
            pipe.xlen(self._key("dead", name))
            pipe.hgetall(self._key("backoff", name))
        replies = pipe.execute(raise_on_error=False)
        for reply in replies[1:6]:
            if isinstance(reply, Exception):
                raise reply
        groups_reply, stored, first, counts, server, memory = replies[:6]
        groups = (
            {}
            if isinstance(groups_reply, Exception)
            else {_text(g["name"]): g for g in groups_reply}
        )
        first_id = _text(first[0][0]) if first else None
        now = time.time()
        result = QueueStatus(depth=0, oldest_age=None, stored=int(stored))
        result.warnings = [w.message for w in server_warnings(server, memory, self._where())]
        result.counters = {_text(k): int(v) for k, v in counts.items()}
        unread_after: dict[str, str] = {}  # destination -> its last delivered id
        oldest: list[str] = []
        for i, name in enumerate(names):
            summary, stats, dead, backoff = replies[6 + 4 * i : 10 + 4 * i]
            group = groups.get(name)
            for reply in (stats, dead, backoff, summary if group is not None else None):
                if isinstance(reply, Exception):  # only a missing group's XPENDING may fail
                    raise reply
            dest = DestinationStatus(name=name)
            if group is None:  # no cursor yet: everything in the log is for it
                dest.queued = int(stored)
                if first_id is not None:
                    oldest.append(first_id)
            else:
                pending = int(group["pending"])
                lag = group.get("lag")
                # None when Redis cannot tell (entries deleted inside the unread range):
                # what the log holds beyond the pending ones is an upper bound.
                lag = max(int(stored) - pending, 0) if lag is None else int(lag)
                dest.queued = lag + pending
                if pending:
                    for consumer in summary.get("consumers") or []:
                        if _text(consumer["name"]) == RETRY_CONSUMER:
                            dest.retrying = int(consumer["pending"])
                    if summary.get("min"):
                        oldest.append(_text(summary["min"]))  # older than anything unread
                elif lag:
                    last = _text(group["last-delivered-id"])
                    if first_id is not None and _id_key(last) < _id_key(first_id):
                        oldest.append(first_id)
                    else:
                        unread_after[name] = last
            dest.delivered = int(stats.get(b"delivered", 0))
            dest.dead_dropped = int(stats.get(b"dead_dropped", 0))
            if b"last_error" in stats:
                dest.last_error = stats[b"last_error"].decode(errors="replace")
                dest.last_error_at = float(stats.get(b"last_error_at", 0))
            dest.dead = int(dead)
            if backoff:
                until = float(backoff.get(b"until", 0))
                dest.backoff_until = until if until > now else None
            result.depth = max(result.depth, dest.queued)
            result.destinations[name] = dest
        if unread_after:
            pipe = self.client.pipeline(transaction=False)
            for last in unread_after.values():
                pipe.xrange(self.stream, _next_id(last), "+", count=1)
            oldest.extend(_text(rows[0][0]) for rows in pipe.execute() if rows)
        if oldest:
            age = now - entry_time(min(oldest, key=_id_key))
            result.oldest_age = max(age, 0.0)
        return result

    def close(self) -> None:
        client = self._client.reset()
        if client is not None:
            client.close()
