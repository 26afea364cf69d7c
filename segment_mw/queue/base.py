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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, overload

from ..config import DEFAULTS
from ..events import Entry

RETRY_CONSUMER = "__retry__"


class Record(NamedTuple):
    """A queued message as a consumer sees it (reads hand them out as :class:`Records`)."""

    id: str
    body: bytes
    integrations: bytes | None
    only: str | None  # set by replay: the one destination this copy is for
    # Seconds since the epoch, where the backend stores it apart from the id; None where
    # the id tells it (Redis): Queue.enqueued_at answers for either.
    enqueued_at: float | None
    # Times it was sent to this destination and failed (X-Retry-Count): set by read_retry.
    attempts: int = 0


class Records(Sequence[Record]):
    """What a read hands out: its records, stored by column.

    A read holds thousands of messages, and delivery needs them as columns (the bodies to
    send, the ids to acknowledge). Held as an object per message, they kept the cyclic
    collector busy: an instance of a named tuple is never untracked, so every collection
    of its generation visited it: 45-60 ms of delivery's time per 100,000 messages (8-12 ms
    since).
    A column of strings or bytes is one tracked list whose items the collector need not
    follow. Indexing and iterating give :class:`Record` objects, made on demand; slicing
    gives ``Records``.

    Never changed once made: derived ``Records`` (``join`` of one part, ``with_ids``,
    ``with_bodies``) share the columns they did not change.
    """

    __slots__ = ("attempts", "bodies", "enqueued_at", "ids", "integrations", "only")

    def __init__(
        self,
        ids: list[str],
        bodies: list[bytes],
        integrations: list[bytes | None] | None = None,
        only: list[str | None] | None = None,
        enqueued_at: list[float | None] | None = None,
        attempts: list[int] | None = None,
    ) -> None:
        """The columns, each as long as ``ids``; a column left out holds None (0 tries)."""
        n = len(ids)
        self.ids = ids
        self.bodies = bodies
        self.integrations: list[bytes | None] = [None] * n if integrations is None else integrations
        self.only: list[str | None] = [None] * n if only is None else only
        self.enqueued_at: list[float | None] = [None] * n if enqueued_at is None else enqueued_at
        self.attempts = [0] * n if attempts is None else attempts
        if not n == len(bodies) == len(self.integrations) == len(self.only):
            raise ValueError("the columns of Records differ in length")
        if not n == len(self.enqueued_at) == len(self.attempts):
            raise ValueError("the columns of Records differ in length")

    @classmethod
    def of(cls, records: Iterable[Record]) -> Records:
        """Records holding these (in order)."""
        rows = list(records)
        if not rows:
            return cls([], [])
        ids, bodies, integrations, only, enqueued_at, attempts = map(list, zip(*rows, strict=True))
        return cls(ids, bodies, integrations, only, enqueued_at, attempts)

    @classmethod
    def join(cls, parts: Iterable[Records]) -> Records:
        """One read's records from the parts it was read in (in order)."""
        parts = list(parts)
        if len(parts) == 1:
            return parts[0]
        out = cls([], [])
        for part in parts:
            out.ids.extend(part.ids)
            out.bodies.extend(part.bodies)
            out.integrations.extend(part.integrations)
            out.only.extend(part.only)
            out.enqueued_at.extend(part.enqueued_at)
            out.attempts.extend(part.attempts)
        return out

    def with_ids(self, ids: list[str]) -> Records:
        """The same records under other ids (a backend made of several logs tags them)."""
        return Records(ids, *self._columns()[1:])

    def with_bodies(self, bodies: list[bytes]) -> Records:
        """The same records with other bodies (their messages made whole)."""
        columns = self._columns()
        return Records(columns[0], bodies, *columns[2:])

    def _columns(
        self,
    ) -> tuple[
        list[str], list[bytes], list[bytes | None], list[str | None], list[float | None], list[int]
    ]:
        return self.ids, self.bodies, self.integrations, self.only, self.enqueued_at, self.attempts

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> Records: ...

    def __getitem__(self, index: int | slice) -> Record | Records:
        if isinstance(index, slice):
            ids, bodies, integrations, only, enqueued_at, attempts = self._columns()
            return Records(
                ids[index],
                bodies[index],
                integrations[index],
                only[index],
                enqueued_at[index],
                attempts[index],
            )
        return Record._make(column[index] for column in self._columns())

    def __iter__(self) -> Iterator[Record]:
        return map(Record, *self._columns())

    def __add__(self, other: Records) -> Records:
        if not isinstance(other, Records):
            return NotImplemented
        return Records.join([self, other])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Records, list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to lists, which are unhashable

    def __repr__(self) -> str:
        # Bodies hold personal data: the count and the ids only.
        return f"Records({len(self)} message(s): {self.ids[:3]!r}{'...' if len(self) > 3 else ''})"


@dataclass(frozen=True, slots=True)
class Push:
    """Entries a failed push may have stored in part, to finish with ``Queue.push_again``.

    ``origin`` and ``first`` name them for a backend that stores each at most once: the
    ordinal of ``entries[0]`` under that origin, the rest following on.
    """

    entries: tuple[Entry, ...]
    only: str | None = None
    origin: str = ""
    first: int = 0


class PushFailed(Exception):
    """A push failed after it was sent: the queue may hold none, some or all of it.

    ``unsure`` must be finished with :meth:`Queue.push_again`, never pushed as new entries
    (which would store twice what got through).
    """

    def __init__(self, unsure: Sequence[Push], cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.unsure = tuple(unsure)
        self.cause = cause

    @property
    def count(self) -> int:
        return sum(len(push.entries) for push in self.unsure)


class Lease(abc.ABC):
    """A named lease with an owner: only its holder can renew or release it."""

    def __init__(self, name: str, ttl: float) -> None:
        self.name = name
        self.ttl = ttl
        self.lost = False
        self._renewed = time.monotonic()

    def keep(self) -> bool:
        """Whether it is still ours for two thirds of its ttl or more; False once lost.

        Renews it (one round trip) only once a third of the ttl has passed since it was
        taken or last renewed: until then nobody else can have it.
        """
        if self.lost:
            return False
        now = time.monotonic()
        if now - self._renewed < self.ttl / 3:
            return True
        if not self.renew():
            self.lost = True
            return False
        self._renewed = now
        return True

    @abc.abstractmethod
    def renew(self) -> bool:
        """Extend it to the full ttl from now if still ours; False when it was lost."""

    @abc.abstractmethod
    def release(self) -> None:
        """Give it up if still ours (never someone else's that took it after it lapsed)."""


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

    # Whether reads may run in one thread while others send and acknowledge (with a
    # connection each): delivery then reads the next batches while it sends one.
    concurrent_reads: bool = False

    # -- producers ---------------------------------------------------------------------
    @abc.abstractmethod
    def push(self, entries: Sequence[Entry], *, only: str | None = None) -> None:
        """Append ``entries``; raise on failure (the producer spills and retries).

        A failure after the entries may have reached storage raises :class:`PushFailed`;
        any other exception means nothing was stored.
        """

    def push_again(self, pushes: Sequence[Push]) -> None:
        """Finish pushes that raised :class:`PushFailed`: store what each still lacks, once.

        The default is for backends whose push is all or nothing (a failed one stored
        nothing): it pushes them whole.
        """
        for push in pushes:
            self.push(push.entries, only=push.only)

    def push_and_acquire(self, entries: Sequence[Entry], lease: str, ttl: float) -> bool | None:
        """``push``, then ``acquire`` (in the same round trip where the backend can).

        True or False: whether the lease was taken; None when the entries were stored but
        the lease could not be tried (ask again later, never push again).
        """
        self.push(entries)
        try:
            return self.acquire(lease, ttl)
        except Exception:
            return None

    # -- consumers ---------------------------------------------------------------------
    @abc.abstractmethod
    def ensure_destinations(self, names: Sequence[str]) -> None:
        """Create a cursor at the start of the log for each destination that has none."""

    @abc.abstractmethod
    def read_new(self, destination: str, consumer: str, count: int) -> Records:
        """Hand ``consumer`` up to ``count`` messages this destination has not seen."""

    @abc.abstractmethod
    def claim_idle(self, destination: str, consumer: str, min_idle: float, count: int) -> Records:
        """Take over pending messages idle for ``min_idle`` seconds (their consumer died)."""

    @abc.abstractmethod
    def oldest_pending_idle(self, destination: str) -> float | None:
        """Seconds the longest-idle pending message (not held for retry) has been idle."""

    @abc.abstractmethod
    def touch(self, destination: str, consumer: str, ids: Sequence[str]) -> list[str]:
        """Reset the idle time of the pending messages ``consumer`` still holds among ``ids``.

        So that a batch still being worked on is not claimed as an orphan. Returns the ids
        still held; the others were claimed by another consumer (theirs to send now).
        """

    @abc.abstractmethod
    def hold_for_retry(self, destination: str, ids: Sequence[str], *, attempts: int = 0) -> None:
        """Park pending messages for the next retry of this destination.

        ``attempts``: how many times they were sent to it and failed (0 for messages parked
        without being sent), handed back by ``read_retry`` as ``Record.attempts``.
        """

    @abc.abstractmethod
    def read_retry(self, destination: str, count: int) -> Records:
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
        """Set a named marker shared by every process; False when it is already set.

        A marker debounces (one flush requested at a time) and anyone may clear it with
        :meth:`release`: the flush it asked for clears it. Work that only one process may do
        at a time takes a :meth:`take_lease` instead.
        """

    @abc.abstractmethod
    def release(self, name: str) -> None: ...

    @abc.abstractmethod
    def take_lease(self, name: str, ttl: float) -> Lease | None:
        """Take the lease ``name`` for ``ttl`` seconds; None while someone else holds it."""

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

    def enqueued_at(self, record: Record) -> float:
        """When ``record``'s message was queued, in seconds since the epoch.

        Asked only of records whose retry budget is checked: a backend whose ids hold the
        time derives it here rather than for every record it reads.
        """
        if record.enqueued_at is None:
            raise ValueError(f"{type(self).__name__}: record {record.id} has no enqueued_at")
        return record.enqueued_at

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (called after fork and at exit)."""


def record_only_matches(record: Record, destination: str) -> bool:
    return record.only is None or record.only == destination
