"""SQLite backend: the embedded default that needs no server, and ``memory://`` for tests.

The same model as the Redis backend — one log, a cursor and a pending list per
destination, dead letters, shared back-off and leases — in tables of one SQLite file in WAL
mode, so several processes on one machine (a dev server, a worker, the command line)
share it safely. ``memory://`` is the same schema in one process's memory.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .. import forks, metrics
from ..errors import ConfigurationError
from ..events import Entry
from .base import (
    DEFAULT_DEAD_LETTER_LIMITS,
    RETRY_CONSUMER,
    Backoff,
    DeadLetterLimits,
    DestinationStatus,
    Lease,
    Queue,
    QueueStatus,
    Record,
    Records,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {p}log (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, body BLOB NOT NULL,
    integrations BLOB, only TEXT);
CREATE TABLE IF NOT EXISTS {p}cursor (destination TEXT PRIMARY KEY, last_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS {p}pending (
    destination TEXT NOT NULL, id INTEGER NOT NULL, consumer TEXT NOT NULL,
    delivered_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (destination, id));
CREATE TABLE IF NOT EXISTS {p}dead (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, destination TEXT NOT NULL, body BLOB NOT NULL,
    integrations BLOB, error TEXT, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS {p}state (
    destination TEXT PRIMARY KEY, until REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, delivered INTEGER NOT NULL DEFAULT 0,
    last_error TEXT, last_error_at REAL);
CREATE TABLE IF NOT EXISTS {p}lease (name TEXT PRIMARY KEY, expires REAL NOT NULL, owner TEXT);
CREATE TABLE IF NOT EXISTS {p}counts (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS {p}dead_dropped (
    destination TEXT PRIMARY KEY, dropped INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS {p}dead_by_destination ON {p}dead (destination, seq);
CREATE INDEX IF NOT EXISTS {p}dead_by_age ON {p}dead (at);
"""


# Columns added since the first release, for files made before: (table, column, type).
_ADDED_COLUMNS = (
    ("pending", "attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("lease", "owner", "TEXT"),
)


def _add_missing_columns(conn: sqlite3.Connection, t: str) -> None:
    for table, column, decl in _ADDED_COLUMNS:
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({t}{table})")}
        if column not in have:
            try:
                conn.execute(f"ALTER TABLE {t}{table} ADD COLUMN {column} {decl}")
            except sqlite3.OperationalError as exc:  # another process added it just now
                if "duplicate column" not in str(exc):
                    raise


class _SQLiteLease(Lease):
    def __init__(self, queue: SQLiteQueue, name: str, ttl: float, owner: str) -> None:
        super().__init__(name, ttl)
        self._queue = queue
        self._owner = owner

    def renew(self) -> bool:
        now = time.time()
        with self._queue._tx() as conn:
            cur = conn.execute(
                f"UPDATE {self._queue.t}lease SET expires = ? "
                "WHERE name = ? AND owner = ? AND expires > ?",
                (now + self.ttl, self.name, self._owner, now),
            )
            return cur.rowcount == 1

    def release(self) -> None:
        self._queue._q(
            "DELETE FROM {p}lease WHERE name = ? AND owner = ?", (self.name, self._owner)
        )


class SQLiteQueue(Queue):
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "segment_mw",
        dead_letters: DeadLetterLimits = DEFAULT_DEAD_LETTER_LIMITS,
    ) -> None:
        parts = urlsplit(url)
        self.memory = parts.scheme == "memory" or parts.path in ("", "/:memory:")
        self.path = ":memory:" if self.memory else (parts.netloc + parts.path)
        if not self.memory and url.startswith("sqlite:////"):
            self.path = "/" + url[len("sqlite:////") :]
        elif not self.memory:
            self.path = url[len("sqlite:///") :]
        self.t = re.sub(r"\W", "_", prefix) + "_"
        self.dead_letters = dead_letters
        self._lock = threading.RLock()
        # A connection must not cross a fork: the child opens its own, and never closes
        # the parent's (that would drop the parent's locks on the file).
        self._conn: forks.ProcessLocal[sqlite3.Connection] = forks.ProcessLocal(self._open)
        # SQLite keeps per-process state about the files it has open (locks, the WAL
        # index): a fork taken while another thread is inside a transaction leaves the
        # child believing a lock is held that nobody will release ("database is locked"
        # for good). So a fork waits until no thread is inside SQLite.
        forks.at_fork(
            before=self._before_fork,
            after_in_parent=self._after_fork_in_parent,
            after_in_child=self._after_fork_in_child,
        )

    def __repr__(self) -> str:
        return f"SQLiteQueue(path={self.path!r})"

    def _before_fork(self) -> None:
        self._lock.acquire()

    def _after_fork_in_parent(self) -> None:
        self._lock.release()

    def _after_fork_in_child(self) -> None:
        self._lock = threading.RLock()

    @property
    def conn(self) -> sqlite3.Connection:
        return self._conn.get()

    def _open(self) -> sqlite3.Connection:
        """Connect and create the tables; a file that cannot be opened is a settings error."""
        try:
            if not self.memory:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            try:
                if not self.memory:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(_SCHEMA.format(p=self.t))
                _add_missing_columns(conn, self.t)
            except BaseException:
                conn.close()
                raise
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise  # another process holds it: transient, not a settings problem
            raise self._unusable(exc) from None
        except (OSError, sqlite3.DatabaseError) as exc:
            raise self._unusable(exc) from None
        return conn

    def _unusable(self, exc: Exception) -> ConfigurationError:
        error = ConfigurationError(
            f"QUEUE_URL: cannot open the SQLite queue {self.path!r} "
            f"({type(exc).__name__}: {exc}). Set QUEUE_URL (or SEGMENT_MW_QUEUE_URL) to a "
            "writable sqlite:///path or a redis:// URL; with QUEUE_URL unset, set "
            "XDG_STATE_HOME to a writable directory"
        )
        metrics.count("misconfigured")
        metrics.warn_once_per_interval("misconfigured", "%s", error)
        return error

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _q(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self.conn.execute(sql.format(p=self.t), args).fetchall()

    # -- producers ---------------------------------------------------------------------
    def push(self, entries: Sequence[Entry], *, only: str | None = None) -> None:
        if not entries:
            return
        now = time.time()
        with self._tx() as conn:
            conn.executemany(
                f"INSERT INTO {self.t}log (at, body, integrations, only) VALUES (?, ?, ?, ?)",
                [(now, e.body, e.integrations, only) for e in entries],
            )

    # -- consumers ---------------------------------------------------------------------
    def ensure_destinations(self, names: Sequence[str]) -> None:
        with self._tx() as conn:
            conn.executemany(
                f"INSERT OR IGNORE INTO {self.t}cursor (destination, last_id) VALUES (?, 0)",
                [(n,) for n in names],
            )

    @staticmethod
    def _record(row: Sequence[Any]) -> Record:
        return Record(
            id=str(row[0]),
            body=bytes(row[1]),
            integrations=row[2],
            only=row[3],
            enqueued_at=row[4],
            attempts=row[5] if len(row) > 5 else 0,
        )

    def read_new(self, destination: str, consumer: str, count: int) -> Records:
        self.ensure_destinations([destination])
        t = self.t
        with self._tx() as conn:
            (last,) = conn.execute(
                f"SELECT last_id FROM {t}cursor WHERE destination = ?", (destination,)
            ).fetchone()
            rows = conn.execute(
                f"SELECT id, body, integrations, only, at FROM {t}log WHERE id > ? "
                "ORDER BY id LIMIT ?",
                (last, count),
            ).fetchall()
            if rows:
                now = time.time()
                conn.execute(
                    f"UPDATE {t}cursor SET last_id = ? WHERE destination = ?",
                    (rows[-1][0], destination),
                )
                conn.executemany(
                    f"INSERT OR REPLACE INTO {t}pending (destination, id, consumer, delivered_at) "
                    "VALUES (?, ?, ?, ?)",
                    [(destination, r[0], consumer, now) for r in rows],
                )
        return Records.of(map(self._record, rows))

    def _take_pending(
        self, destination: str, consumer: str, where: str, args: Sequence[Any], count: int
    ) -> Records:
        t = self.t
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT l.id, l.body, l.integrations, l.only, l.at, p.attempts FROM {t}pending p "
                f"JOIN {t}log l ON l.id = p.id WHERE p.destination = ? AND {where} "
                "ORDER BY p.id LIMIT ?",
                (destination, *args, count),
            ).fetchall()
            if rows:
                conn.executemany(
                    f"UPDATE {t}pending SET consumer = ?, delivered_at = ? "
                    "WHERE destination = ? AND id = ?",
                    [(consumer, time.time(), destination, r[0]) for r in rows],
                )
        return Records.of(map(self._record, rows))

    def claim_idle(self, destination: str, consumer: str, min_idle: float, count: int) -> Records:
        # Not the messages parked for retry: idle by design, and the holder of the retry
        # lease may be sending them right now.
        return self._take_pending(
            destination,
            consumer,
            "p.delivered_at <= ? AND p.consumer != ?",
            (time.time() - min_idle, RETRY_CONSUMER),
            count,
        )

    def read_retry(self, destination: str, count: int) -> Records:
        return self._take_pending(
            destination, RETRY_CONSUMER, "p.consumer = ?", (RETRY_CONSUMER,), count
        )

    def oldest_pending_idle(self, destination: str) -> float | None:
        (oldest,) = self._q(
            "SELECT MIN(delivered_at) FROM {p}pending WHERE destination = ? AND consumer != ?",
            (destination, RETRY_CONSUMER),
        )[0]
        return None if oldest is None else max(time.time() - oldest, 0.0)

    def touch(self, destination: str, consumer: str, ids: Sequence[str]) -> list[str]:
        held: list[str] = []
        now = time.time()
        with self._tx() as conn:
            for i in ids:
                cur = conn.execute(
                    f"UPDATE {self.t}pending SET delivered_at = ? "
                    "WHERE destination = ? AND id = ? AND consumer = ?",
                    (now, destination, int(i), consumer),
                )
                if cur.rowcount:
                    held.append(i)
        return held

    def hold_for_retry(self, destination: str, ids: Sequence[str], *, attempts: int = 0) -> None:
        with self._tx() as conn:
            conn.executemany(
                f"UPDATE {self.t}pending SET consumer = ?, attempts = ? "
                "WHERE destination = ? AND id = ?",
                [(RETRY_CONSUMER, attempts, destination, int(i)) for i in ids],
            )

    def _bump(self, conn: sqlite3.Connection, destination: str, **values: Any) -> None:
        conn.execute(
            f"INSERT OR IGNORE INTO {self.t}state (destination) VALUES (?)", (destination,)
        )
        sets = ", ".join(f"{k} = {k} + ?" if k == "delivered" else f"{k} = ?" for k in values)
        conn.execute(
            f"UPDATE {self.t}state SET {sets} WHERE destination = ?",
            (*values.values(), destination),
        )

    def ack(self, destination: str, ids: Sequence[str], *, delivered: int = 0) -> None:
        if not ids:
            return
        with self._tx() as conn:
            conn.executemany(
                f"DELETE FROM {self.t}pending WHERE destination = ? AND id = ?",
                [(destination, int(i)) for i in ids],
            )
            if delivered:
                self._bump(conn, destination, delivered=delivered)

    def _cap_dead_letters(
        self, conn: sqlite3.Connection, destination: str | None, now: float
    ) -> int:
        """Drop dead letters past the caps (one destination's, or everyone's); count them."""
        t, limits = self.t, self.dead_letters
        dropped: dict[str, int] = {}
        where, args = ("destination = ? AND ", (destination,)) if destination else ("", ())
        cutoff = now - limits.max_age
        for name, n in conn.execute(
            f"SELECT destination, COUNT(*) FROM {t}dead WHERE {where}at < ? GROUP BY 1",
            (*args, cutoff),
        ).fetchall():
            dropped[name] = n
        if dropped:
            conn.execute(f"DELETE FROM {t}dead WHERE {where}at < ?", (*args, cutoff))
        names = (
            [destination]
            if destination
            else [r[0] for r in conn.execute(f"SELECT DISTINCT destination FROM {t}dead")]
        )
        for name in names:
            (count,) = conn.execute(
                f"SELECT COUNT(*) FROM {t}dead WHERE destination = ?", (name,)
            ).fetchone()
            over = count - limits.max_events
            if over > 0:
                conn.execute(
                    f"DELETE FROM {t}dead WHERE seq IN (SELECT seq FROM {t}dead "
                    "WHERE destination = ? ORDER BY seq LIMIT ?)",
                    (name, over),
                )
                dropped[name] = dropped.get(name, 0) + over
        conn.executemany(
            f"INSERT INTO {t}dead_dropped VALUES (?, ?) "
            "ON CONFLICT(destination) DO UPDATE SET dropped = dropped + excluded.dropped",
            list(dropped.items()),
        )
        return sum(dropped.values())

    def dead_letter(self, destination: str, records: Sequence[Record], error: str) -> int:
        if not records:
            return 0
        now = time.time()
        with self._tx() as conn:
            conn.executemany(
                f"INSERT INTO {self.t}dead (destination, body, integrations, error, at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(destination, r.body, r.integrations, error, now) for r in records],
            )
            conn.executemany(
                f"DELETE FROM {self.t}pending WHERE destination = ? AND id = ?",
                [(destination, int(r.id)) for r in records],
            )
            self._bump(conn, destination, last_error=error, last_error_at=now)
            return self._cap_dead_letters(conn, destination, now)

    def replay(self, destination: str) -> int:
        t = self.t
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT seq, body, integrations FROM {t}dead WHERE destination = ? ORDER BY seq",
                (destination,),
            ).fetchall()
            now = time.time()
            conn.executemany(
                f"INSERT INTO {t}log (at, body, integrations, only) VALUES (?, ?, ?, ?)",
                [(now, r[1], r[2], destination) for r in rows],
            )
            conn.execute(f"DELETE FROM {t}dead WHERE destination = ?", (destination,))
        return len(rows)

    def trim(self) -> None:
        t = self.t
        with self._tx() as conn:
            floors = conn.execute(
                f"SELECT MIN(COALESCE((SELECT MIN(id) FROM {t}pending p "
                f"WHERE p.destination = c.destination), c.last_id + 1)) FROM {t}cursor c"
            ).fetchone()
            if floors and floors[0] is not None:
                conn.execute(f"DELETE FROM {t}log WHERE id < ?", (floors[0],))
            else:  # no cursor at all: nothing will ever read the log
                conn.execute(f"DELETE FROM {t}log")
            self._cap_dead_letters(conn, None, time.time())

    # -- shared state ------------------------------------------------------------------
    def get_backoff(self, destination: str) -> Backoff:
        rows = self._q("SELECT until, attempts FROM {p}state WHERE destination = ?", (destination,))
        return Backoff(until=rows[0][0], attempts=rows[0][1]) if rows else Backoff()

    def set_backoff(self, destination: str, backoff: Backoff, error: str | None) -> None:
        values: dict[str, Any] = {"until": backoff.until, "attempts": backoff.attempts}
        if error:
            values.update(last_error=error, last_error_at=time.time())
        with self._tx() as conn:
            self._bump(conn, destination, **values)

    def clear_backoff(self, destination: str) -> None:
        with self._tx() as conn:
            self._bump(conn, destination, until=0.0, attempts=0)

    def acquire(self, name: str, ttl: float) -> bool:
        return self._insert_lease(name, ttl, None)

    def _insert_lease(self, name: str, ttl: float, owner: str | None) -> bool:
        now = time.time()
        with self._tx() as conn:
            conn.execute(f"DELETE FROM {self.t}lease WHERE name = ? AND expires <= ?", (name, now))
            cur = conn.execute(
                f"INSERT OR IGNORE INTO {self.t}lease (name, expires, owner) VALUES (?, ?, ?)",
                (name, now + ttl, owner),
            )
            return cur.rowcount == 1

    def release(self, name: str) -> None:
        self._q("DELETE FROM {p}lease WHERE name = ?", (name,))

    def take_lease(self, name: str, ttl: float) -> Lease | None:
        owner = uuid.uuid4().hex
        return (
            _SQLiteLease(self, name, ttl, owner) if self._insert_lease(name, ttl, owner) else None
        )

    def add_counts(self, counts: dict[str, int]) -> None:
        with self._tx() as conn:
            conn.executemany(
                f"INSERT INTO {self.t}counts VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                list(counts.items()),
            )

    def known_destinations(self) -> list[str]:
        return [row[0] for row in self._q("SELECT destination FROM {p}cursor ORDER BY 1")]

    def forget(self, destination: str) -> None:
        with self._tx() as conn:
            for table in ("cursor", "pending", "dead", "state", "dead_dropped"):
                conn.execute(f"DELETE FROM {self.t}{table} WHERE destination = ?", (destination,))

    def get_counts(self) -> dict[str, int]:
        return dict(self._q("SELECT name, value FROM {p}counts"))

    def status(self, destinations: Sequence[str]) -> QueueStatus:
        # Index lookups only, nothing that scans the backlog: ids are consecutive (the log
        # only ever loses its oldest rows), so what a cursor has not read is a subtraction.
        result = QueueStatus(depth=0, oldest_age=None)
        now = time.time()
        # Two queries: SQLite answers MIN() or MAX() alone from the index, not both at once.
        ((low,),) = self._q("SELECT MIN(id) FROM {p}log")
        ((high,),) = self._q("SELECT MAX(id) FROM {p}log")
        result.stored = 0 if high is None else high - low + 1
        for name in destinations:
            dest = DestinationStatus(name=name)
            cursor = self._q("SELECT last_id FROM {p}cursor WHERE destination = ?", (name,))
            last = cursor[0][0] if cursor else 0
            lag = 0 if high is None else max(high - max(last, low - 1), 0)
            (pending, retrying, first_pending) = self._q(
                "SELECT COUNT(*), SUM(consumer = ?), MIN(id) FROM {p}pending WHERE destination = ?",
                (RETRY_CONSUMER, name),
            )[0]
            dest.queued = lag + pending
            dest.retrying = retrying or 0
            # The oldest needed: a pending message (read before anything unread), else the
            # first unread one.
            oldest = self._q(
                "SELECT at FROM {p}log WHERE id >= ? ORDER BY id LIMIT 1",
                (first_pending if first_pending is not None else last + 1,),
            )
            if dest.queued and oldest:
                result.oldest_age = max(result.oldest_age or 0.0, now - oldest[0][0])
            (dead,) = self._q("SELECT COUNT(*) FROM {p}dead WHERE destination = ?", (name,))[0]
            dest.dead = dead
            dropped = self._q("SELECT dropped FROM {p}dead_dropped WHERE destination = ?", (name,))
            dest.dead_dropped = dropped[0][0] if dropped else 0
            state = self._q(
                "SELECT until, delivered, last_error, last_error_at FROM {p}state "
                "WHERE destination = ?",
                (name,),
            )
            if state:
                until, dest.delivered, dest.last_error, dest.last_error_at = state[0]
                dest.backoff_until = until if until > now else None
            result.depth = max(result.depth, dest.queued)
            result.destinations[name] = dest
        result.counters = self.get_counts()
        return result

    def close(self) -> None:
        with self._lock:
            conn = self._conn.reset()
            if conn is not None:
                conn.close()
