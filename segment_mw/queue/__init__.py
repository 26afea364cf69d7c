"""Queue backends: Redis Streams for production, SQLite (file or memory) embedded."""

from __future__ import annotations

from urllib.parse import urlsplit

from ..errors import ConfigurationError
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
from .urls import REDIS_SCHEMES, parse_redis_url

# A cluster's log is spread over this many streams unless QUEUE_SHARDS says otherwise:
# one per master of the smallest cluster Redis allows.
DEFAULT_CLUSTER_SHARDS = 3

__all__ = [
    "Backoff",
    "DeadLetterLimits",
    "DestinationStatus",
    "Lease",
    "Push",
    "PushFailed",
    "Queue",
    "QueueStatus",
    "Record",
    "Records",
    "ServerWarning",
    "open_queue",
]


def open_queue(
    url: str,
    *,
    prefix: str = "segment_mw",
    timeout: float = 5.0,
    dead_letters: DeadLetterLimits = DEFAULT_DEAD_LETTER_LIMITS,
    shards: int | None = None,
    wait_replicas: int = 0,
) -> Queue:
    """Open the backend named by ``url``: Redis (one server, ``redis+cluster://``,
    ``redis+sentinel://``), ``sqlite:///path`` or ``memory://``.

    ``shards``: how many streams the Redis log is spread over (None: one server's single
    stream, or ``DEFAULT_CLUSTER_SHARDS`` for a cluster; any number given, the queue also
    reads the shards an earlier setting wrote). ``wait_replicas``: pushes wait for that
    many replicas to confirm them.
    """
    scheme = urlsplit(url).scheme
    if scheme in REDIS_SCHEMES:
        target = parse_redis_url(url)
        if target.kind == "single" and shards is None:
            from .redis import RedisQueue

            return RedisQueue(
                url,
                prefix=prefix,
                timeout=timeout,
                dead_letters=dead_letters,
                wait_replicas=wait_replicas,
            )
        from .sharded import ShardedRedisQueue

        if shards is None:
            shards = DEFAULT_CLUSTER_SHARDS if target.kind == "cluster" else 1
        return ShardedRedisQueue(
            target,
            prefix=prefix,
            timeout=timeout,
            dead_letters=dead_letters,
            shards=shards,
            wait_replicas=wait_replicas,
        )
    if scheme in ("sqlite", "memory"):
        from .sql import SQLiteQueue

        return SQLiteQueue(url, prefix=prefix, dead_letters=dead_letters)
    raise ConfigurationError(f"QUEUE_URL: unsupported scheme {scheme!r}")
