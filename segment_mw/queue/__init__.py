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
    ServerWarning,
)

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
    "ServerWarning",
    "open_queue",
]


def open_queue(
    url: str,
    *,
    prefix: str = "segment_mw",
    timeout: float = 5.0,
    dead_letters: DeadLetterLimits = DEFAULT_DEAD_LETTER_LIMITS,
) -> Queue:
    """Open the backend named by ``url`` (``redis://``, ``sqlite:///path``, ``memory://``)."""
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisQueue

        return RedisQueue(url, prefix=prefix, timeout=timeout, dead_letters=dead_letters)
    if scheme in ("sqlite", "memory"):
        from .sql import SQLiteQueue

        return SQLiteQueue(url, prefix=prefix, dead_letters=dead_letters)
    raise ConfigurationError(f"QUEUE_URL: unsupported scheme {scheme!r}")
