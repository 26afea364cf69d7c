"""Queue backends: Redis Streams for production, SQLite (file or memory) embedded."""

from __future__ import annotations

from urllib.parse import urlsplit

from ..errors import ConfigurationError
from .base import Backoff, DestinationStatus, Lease, Push, PushFailed, Queue, QueueStatus, Record

__all__ = [
    "Backoff",
    "DestinationStatus",
    "Lease",
    "Push",
    "PushFailed",
    "Queue",
    "QueueStatus",
    "Record",
    "open_queue",
]


def open_queue(url: str, *, prefix: str = "segment_mw", timeout: float = 5.0) -> Queue:
    """Open the backend named by ``url`` (``redis://``, ``sqlite:///path``, ``memory://``)."""
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisQueue

        return RedisQueue(url, prefix=prefix, timeout=timeout)
    if scheme in ("sqlite", "memory"):
        from .sql import SQLiteQueue

        return SQLiteQueue(url, prefix=prefix)
    raise ConfigurationError(f"QUEUE_URL: unsupported scheme {scheme!r}")
