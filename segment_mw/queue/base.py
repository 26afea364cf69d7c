"""The interface every queue backend implements, and the records it hands out.

The queue is one append-only log with an independent cursor per destination: each
destination reads every message, takes the ones routed to it, and acknowledges them when
delivered or dead-lettered. A message leaves storage once every destination is past it.
Messages a consumer holds but has not acknowledged are *pending*; a consumer that died is
detected by how long its messages have been idle, and others claim them. Storage is
bounded: the log is trimmed past what every cursor is done with (everything, when the
queue has no cursor at all), and each destination's dead letters are capped by count and
by age, what the caps drop being counted.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import DEFAULTS
from ..events import Entry

RETRY_CONSUMER = "__retry__"


@dataclass(frozen=True, slots=True)
class Record:
    """A queued message as a consumer sees it."""

    id: str
    body: bytes
    integrations: bytes | None
    only: str | None  # set by replay: the one destination this copy is for
    enqueued_at: float  # seconds since the epoch


@dataclass(frozen=True)
class DeadLetterLimits:
    """How many dead letters a destination keeps (the newest) and for how long (seconds)."""

    max_events: int
    max_age: float


DEFAULT_DEAD_LETTER_LIMITS = DeadLetterLimits(
    DEFAULTS["DEAD_LETTER_MAX_EVENTS"], DEFAULTS["DEAD_LETTER_MAX_AGE"]
)


@dataclass(frozen=True)
class ServerWarning:
    """A property of the server that puts the queue at risk (``kind`` names which)."""

    kind: str  # "evicts-queue" or "evicts-leases"
    message: str


@dataclass
class DestinationStatus:
    name: str
    queued: int = 0
    delivered: int = 0
    retrying: int = 0
    dead: int = 0
    dead_dropped: int = 0  # dead letters the DEAD_LETTER_MAX_* caps dropped, ever
    last_error: str | None = None
    last_error_at: float | None = None
    backoff_until: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "queued": self.queued,
            "delivered": self.delivered,
            "retrying": self.retrying,
            "dead": self.dead,
            "dead_dropped": self.dead_dropped,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "backoff_until": self.backoff_until,
        }


@dataclass
class QueueStatus:
    depth: int
    oldest_age: float | None
    destinations: dict[str, DestinationStatus] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    # Destinations the queue keeps a cursor for that the settings no longer name: their
    # cursor holds the log back from trimming until ``segment-mw forget`` drops it.
    unconfigured: list[str] = field(default_factory=list)
    stored: int = 0  # messages the log holds, for every destination together
    warnings: list[str] = field(default_factory=list)  # from check_server()

    def as_dict(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "oldest_age": self.oldest_age,
            "stored": self.stored,
            "destinations": {n: d.as_dict() for n, d in self.destinations.items()},
            "counters": dict(self.counters),
            "unconfigured": list(self.unconfigured),
            "warnings": list(self.warnings),
        }


@dataclass
class Backoff:
    until: float = 0.0
    attempts: int = 0

    @property
    def active(self) -> bool:
        return self.until > time.time()


class Queue(abc.ABC):
    """A durable, multi-consumer log of serialised messages."""

    url_schemes: tuple[str, ...] = ()

    # -- producers ---------------------------------------------------------------------
    @abc.abstractmethod
    def push(self, entries: Sequence[Entry], *, only: str | None = None) -> None:
        """Append ``entries``; raise on failure (the producer spills and retries)."""

    # -- consumers ---------------------------------------------------------------------
    @abc.abstractmethod
    def ensure_destinations(self, names: Sequence[str]) -> None:
        """Create a cursor at the start of the log for each destination that has none."""

    @abc.abstractmethod
    def read_new(self, destination: str, consumer: str, count: int) -> list[Record]:
        """Hand ``consumer`` up to ``count`` messages this destination has not seen."""

    @abc.abstractmethod
    def claim_idle(
        self, destination: str, consumer: str, min_idle: float, count: int
    ) -> list[Record]:
        """Take over pending messages idle for ``min_idle`` seconds (their consumer died)."""

    @abc.abstractmethod
    def oldest_pending_idle(self, destination: str) -> float | None:
        """Seconds the longest-idle pending message (not held for retry) has been idle."""

    @abc.abstractmethod
    def hold_for_retry(self, destination: str, ids: Sequence[str]) -> None:
        """Park pending messages for the next retry of this destination."""

    @abc.abstractmethod
    def read_retry(self, destination: str, count: int) -> list[Record]:
        """The messages parked for retry, oldest first."""

    @abc.abstractmethod
    def ack(self, destination: str, ids: Sequence[str], *, delivered: int = 0) -> None:
        """Mark messages done for ``destination``; count ``delivered`` of them as delivered."""

    @abc.abstractmethod
    def dead_letter(self, destination: str, records: Sequence[Record], error: str) -> int:
        """Move ``records`` to the destination's dead letters (and acknowledge them).

        Past ``DEAD_LETTER_MAX_EVENTS`` the oldest dead letters are dropped, and counted as
        ``dead_dropped``; returns how many were.
        """

    @abc.abstractmethod
    def replay(self, destination: str) -> int:
        """Put the destination's dead letters back into delivery for it alone."""

    @abc.abstractmethod
    def trim(self) -> None:
        """Drop messages every cursor is done with, and dead letters past the age cap.

        With no cursor at all (no process names a destination) nothing will ever read the
        log, so everything in it is dropped.
        """

    # -- shared state ------------------------------------------------------------------
    @abc.abstractmethod
    def get_backoff(self, destination: str) -> Backoff: ...

    @abc.abstractmethod
    def set_backoff(self, destination: str, backoff: Backoff, error: str | None) -> None: ...

    @abc.abstractmethod
    def clear_backoff(self, destination: str) -> None: ...

    @abc.abstractmethod
    def acquire(self, name: str, ttl: float) -> bool:
        """Take a named lease shared by every process; False when someone else holds it."""

    @abc.abstractmethod
    def release(self, name: str) -> None: ...

    @abc.abstractmethod
    def status(self, destinations: Sequence[str]) -> QueueStatus:
        """Counts for an operator, at the same cost whatever the backlog: nothing reads it."""

    def check_server(self) -> list[ServerWarning]:
        """What puts the queue at risk on its server; ConfigurationError if it cannot hold it.

        Backends without a server have nothing to report.
        """
        return []

    @abc.abstractmethod
    def known_destinations(self) -> list[str]:
        """Every destination the queue keeps a cursor for."""

    @abc.abstractmethod
    def forget(self, destination: str) -> None:
        """Drop a destination's cursor, pending messages, dead letters and counters."""

    @abc.abstractmethod
    def add_counts(self, counts: dict[str, int]) -> None:
        """Add process-local counters (drops, invalid events) to the shared totals."""

    @abc.abstractmethod
    def get_counts(self) -> dict[str, int]: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (called after fork and at exit)."""


def record_only_matches(record: Record, destination: str) -> bool:
    return record.only is None or record.only == destination
