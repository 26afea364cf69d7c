"""Redis Streams backend: one stream, one consumer group per destination.

Every destination is a consumer group on the same stream, so a message is stored once and
each destination reads it independently; ``XACK`` marks it done for one destination and
the stream is trimmed up to the oldest message any group still needs. Messages parked for
retry belong to a reserved consumer in the group, so a retry re-sends to that destination
only. Connections are opened lazily and re-opened after a fork, with bounded timeouts and
no client-side retry loop.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..events import Entry
from .base import (
    RETRY_CONSUMER,
    Backoff,
    DestinationStatus,
    Queue,
    QueueStatus,
    Record,
)


def _raw_reply(response: Any, **options: Any) -> Any:
    return response


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_time(entry_id: str) -> float:
    return int(entry_id.split("-", 1)[0]) / 1000.0


def _next_id(entry_id: str) -> str:
    ms, seq = entry_id.split("-", 1)
    return f"{ms}-{int(seq) + 1}"


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-", 1)
    return int(ms), int(seq)


class RedisQueue(Queue):
    url_schemes = ("redis", "rediss", "unix")

    def __init__(self, url: str, *, prefix: str = "segment_mw", timeout: float = 5.0) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self.stream = f"{prefix}:log"
        # Typed as Any: redis-py's reply unions (bytes | str | None …) do not match the
        # decode_responses=False replies we get, and every reply is decoded here anyway.
        self._client: Any = None
        self._known_groups: set[str] = set()

    def __repr__(self) -> str:
        return f"RedisQueue(prefix={self.prefix!r})"

    @property
    def client(self) -> Any:
        # redis-py's pool re-creates its connections in a forked child by itself.
        if self._client is None:
            self._client = redis.Redis.from_url(
                self.url,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),
                retry_on_timeout=False,
                health_check_interval=0,
                protocol=2,
            )
            # Stream reads come back as hiredis built them; _records decodes them in one
            # pass instead of redis-py building a dict per message first.
            self._client.set_response_callback("XREADGROUP", _raw_reply)
            self._client.set_response_callback("XAUTOCLAIM", _raw_reply)
        return self._client

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{name}"

    # -- producers ---------------------------------------------------------------------
    def push(self, entries: Sequence[Entry], *, only: str | None = None) -> None:
        if not entries:
            return
        pipe = self.client.pipeline(transaction=False)
        for entry in entries:
            fields: dict[str, bytes | str] = {"e": entry.body}
            if entry.integrations is not None:
                fields["i"] = entry.integrations
            if only is not None:
                fields["o"] = only
            pipe.xadd(self.stream, fields)
        pipe.execute()

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

    def _records(self, raw: Any) -> tuple[list[Record], list[str]]:
        """Decode raw stream entries; ids of entries already trimmed come back separately."""
        records: list[Record] = []
        gone: list[str] = []
        for entry_id, fields in raw:
            rid = entry_id.decode()
            if not fields:
                gone.append(rid)
                continue
            if len(fields) == 2 and fields[0] == b"e":  # the common case: a body alone
                body, integrations, only = fields[1], None, None
            else:
                named = dict(zip(fields[::2], fields[1::2], strict=False))
                body, integrations, only = named[b"e"], named.get(b"i"), named.get(b"o")
                if only is not None:
                    only = only.decode()
            records.append(
                Record(rid, body, integrations, only, int(rid[: rid.index("-")]) / 1000.0)
            )
        return records, gone

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

    def _read(self, destination: str, consumer: str, count: int, start: str) -> list[Record]:
        reply = self._grouped(
            destination,
            lambda: self.client.xreadgroup(
                destination, consumer, {self.stream: start}, count=count
            ),
        )
        if not reply:
            return []
        records, gone = self._records(reply[0][1])
        if gone:
            self.client.xack(self.stream, destination, *gone)
        return records

    def read_new(self, destination: str, consumer: str, count: int) -> list[Record]:
        return self._read(destination, consumer, count, ">")

    def read_retry(self, destination: str, count: int) -> list[Record]:
        return self._read(destination, RETRY_CONSUMER, count, "0")

    def claim_idle(
        self, destination: str, consumer: str, min_idle: float, count: int
    ) -> list[Record]:
        reply = self._grouped(
            destination,
            lambda: self.client.xautoclaim(
                self.stream, destination, consumer, int(min_idle * 1000), "0-0", count=count
            ),
        )
        records, gone = self._records(reply[1])
        deleted = [_text(i) for i in (reply[2] if len(reply) > 2 else [])]
        if gone or deleted:
            self.client.xack(self.stream, destination, *(gone + deleted))
        return records

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

    def hold_for_retry(self, destination: str, ids: Sequence[str]) -> None:
        if ids:
            self._grouped(
                destination,
                lambda: self.client.xclaim(
                    self.stream, destination, RETRY_CONSUMER, 0, list(ids), justid=True
                ),
            )

    def ack(self, destination: str, ids: Sequence[str], *, delivered: int = 0) -> None:
        if not ids:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(self.stream, destination, *ids)
        if delivered:
            pipe.hincrby(self._key("stats", destination), "delivered", delivered)
        pipe.execute()

    def dead_letter(self, destination: str, records: Sequence[Record], error: str) -> None:
        if not records:
            return
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
        pipe.execute()

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

    def _group_floors(self) -> dict[str, tuple[str, int, int | None, str]]:
        """Per group: the first id it still needs, its pending count, lag and next unread id."""
        try:
            groups = self.client.xinfo_groups(self.stream)
        except redis.ResponseError:
            return {}
        out: dict[str, tuple[str, int, int | None, str]] = {}
        for group in groups:
            name = _text(group["name"])
            last = _text(group["last-delivered-id"])
            unread = floor = _next_id(last)
            pending = int(group["pending"])
            if pending:
                summary = self.client.xpending(self.stream, name)
                if summary and summary.get("min"):
                    floor = min(floor, _text(summary["min"]), key=_id_key)
            lag = group.get("lag")
            out[name] = (floor, pending, None if lag is None else int(lag), unread)
        return out

    def trim(self) -> None:
        floors = self._group_floors()
        if not floors:
            return
        point = min((f[0] for f in floors.values() if f[0]), key=_id_key)
        self.client.xtrim(self.stream, minid=point, approximate=False)

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
        return bool(
            self.client.set(self._key("lease", name), b"1", nx=True, px=max(int(ttl * 1000), 1))
        )

    def release(self, name: str) -> None:
        self.client.delete(self._key("lease", name))

    def add_counts(self, counts: dict[str, int]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for name, value in counts.items():
            pipe.hincrby(f"{self.prefix}:counts", name, value)
        pipe.execute()

    def get_counts(self) -> dict[str, int]:
        raw = self.client.hgetall(f"{self.prefix}:counts")
        return {_text(k): int(v) for k, v in raw.items()}

    def status(self, destinations: Sequence[str]) -> QueueStatus:
        floors = self._group_floors()
        result = QueueStatus(depth=0, oldest_age=None)
        now = time.time()
        for name in destinations:
            dest = DestinationStatus(name=name)
            start = "-"
            if name in floors:
                start, pending, lag, unread = floors[name]
                if lag is None:  # Redis cannot tell (entries were deleted): count the unread
                    lag = len(self.client.xrange(self.stream, unread, "+"))
                retrying = 0
                if pending:
                    summary = self.client.xpending(self.stream, name)
                    for consumer in summary.get("consumers") or []:
                        if _text(consumer["name"]) == RETRY_CONSUMER:
                            retrying = int(consumer["pending"])
                dest.queued = lag + pending
                dest.retrying = retrying
            else:
                dest.queued = (
                    int(self.client.xlen(self.stream)) if self.client.exists(self.stream) else 0
                )
            if dest.queued:
                # The age of the oldest entry still needed, not of the group's position
                # (which is 0-0, the epoch, for a group that has read nothing yet).
                first = self.client.xrange(self.stream, start, "+", count=1)
                if first:
                    age = max(now - _id_time(_text(first[0][0])), 0.0)
                    result.oldest_age = max(result.oldest_age or 0.0, age)
            stats = self.client.hgetall(self._key("stats", name))
            dest.delivered = int(stats.get(b"delivered", 0))
            dest.dead = int(self.client.xlen(self._key("dead", name)))
            if b"last_error" in stats:
                dest.last_error = stats[b"last_error"].decode(errors="replace")
                dest.last_error_at = float(stats.get(b"last_error_at", 0))
            backoff = self.get_backoff(name)
            dest.backoff_until = backoff.until if backoff.active else None
            result.depth = max(result.depth, dest.queued)
            result.destinations[name] = dest
        result.counters = self.get_counts()
        return result

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
