"""Handing messages to the queue without making the request wait on the network.

``submit`` appends to an in-memory buffer (a deque append) and a writer thread pushes
the buffer to the queue in pipelined batches, then kicks a flush (debounced across all
processes by a lease in the queue). While messages keep coming it pushes at most once
per ``BUFFER_MAX_DELAY`` (5 ms), gathering what arrives meanwhile into the same batch:
that, plus a push or two, is how long a message lives in memory only (what a hard crash
can lose).
The buffer doubles as the bounded spill: while the queue is unreachable messages stay in
it and are pushed when it returns; past ``SPILL_MAX_EVENTS`` new ones are dropped,
counted and logged once per interval. ``submit(durable=True)`` writes synchronously (for
business events such as charges) and falls back to the spill on failure. The thread is
started lazily per process, so a fork (gunicorn, uWSGI, Celery prefork) gets a fresh one,
and the buffer is drained at exit within a bounded time.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
from collections.abc import Callable

from . import metrics
from .config import Settings
from .events import Entry
from .queue import Queue

log = logging.getLogger("segment_mw.producer")

KICK_LEASE = "kick"
KICK_TTL = 60.0  # a kick lost with its task is retried after this long
# Large: under load the thread gets the GIL back only every few ms after each socket
# call, so it must move many messages per round trip to keep up.
PUSH_CHUNK = 5000
EXIT_TIMEOUT = 2.0
UNROUTED_TRIM_INTERVAL = 1.0  # seconds between trims by a process that names no destination


class Producer:
    def __init__(
        self,
        queue: Queue,
        settings: Settings,
        on_kick: Callable[[], None] | None = None,
        *,
        direct_queue: Queue | None = None,
    ) -> None:
        # The writer thread may wait longer than a request ever should: a pipelined push of
        # a thousand messages must not time out (and be re-sent) under load. Durable
        # writes from the request itself use ``direct_queue``, with ENQUEUE_TIMEOUT.
        self.queue = queue
        self.direct_queue = direct_queue or queue
        # Whether a flush can be requested from this process now (Celery installed, or
        # the in-process flusher); the client decides, and it may change after start.
        self.kick_available: Callable[[], bool] = lambda: True
        self.settings = settings
        self.on_kick = on_kick
        self._pid = -1
        self._reset()

    def _reset(self) -> None:
        # After a fork the parent's buffer belongs to the parent: start empty.
        self._pid = os.getpid()
        self._buf: collections.deque[Entry] = collections.deque()
        self._wake = threading.Event()
        self._idle = False
        self._kick_wanted = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        # Held while a chunk is out of the buffer but not yet in the queue, so that drain()
        # (flush(), exit) waits for the writer thread's push in flight instead of seeing an
        # empty buffer and reporting everything pushed too early.
        self._push_lock = threading.Lock()
        self._ensured: set[int] = set()
        self._untrimmed = False  # pushed since the last trim (processes with no destination)
        self._trim_at = 0.0

    # -- request path ------------------------------------------------------------------
    def submit(self, entry: Entry, *, durable: bool = False) -> None:
        if self._pid != os.getpid():
            self._reset()
        if durable:
            try:
                self._ensure_destinations(self.direct_queue)
                self.direct_queue.push([entry])
            except Exception as exc:
                metrics.count("spilled")
                metrics.warn_once_per_interval(
                    "spilled",
                    "queue unreachable (%s); holding messages in memory",
                    type(exc).__name__,
                )
            else:
                self._kick_wanted = True
                self._untrimmed = True
                self._ensure_thread()
                self._wake.set()
                return
        if len(self._buf) >= self.settings.spill_max_events:
            metrics.count("dropped")
            metrics.warn_once_per_interval(
                "dropped",
                "in-memory spill full (%d messages); message dropped",
                self.settings.spill_max_events,
            )
            return
        self._buf.append(entry)
        if self._thread is None:
            self._ensure_thread()
        if self._idle:
            self._wake.set()

    @property
    def buffered(self) -> int:
        return len(self._buf) if self._pid == os.getpid() else 0

    # -- writer thread -----------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                self._stopping = False
                thread = threading.Thread(target=self._run, name="segment_mw-producer", daemon=True)
                self._thread = thread
                thread.start()
                atexit.register(self.close)

    def _run(self) -> None:
        failures = 0
        pushed_at = 0.0
        while True:
            self._idle = True
            if not self._buf and not self._kick_wanted:
                if self._stopping:
                    return
                self._wake.wait(1.0)
                self._wake.clear()
            self._idle = False
            if self._buf:
                self._gather(pushed_at)
                pushed_at = time.monotonic()
                if not self._push_some(kick=True):
                    # Keep the messages, wait, try again: the queue may come back.
                    failures += 1
                    if self._back_off(failures):
                        return
                    continue
            if self._kick_wanted and not self._buf:
                self._kick_wanted = False
                if not self._kick():  # the queue did not answer the lease
                    failures += 1
                    if self._back_off(failures):
                        return
                    continue
            failures = 0
            if self._untrimmed:
                self._trim_unrouted()

    def _back_off(self, failures: int) -> bool:
        """Wait after a failure (never spin: the app's threads need the GIL); True to stop."""
        self._wake.wait(min(0.05 * 2**failures, 2.0))
        self._wake.clear()
        return self._stopping

    def _gather(self, pushed_at: float) -> None:
        """While busy, push at most once per ``BUFFER_MAX_DELAY``: many messages a round trip.

        The first message after a quiet spell goes at once. Waiting here also keeps
        ``submit`` a plain append (no wake-ups), and the thread off the GIL.
        """
        wait = pushed_at + self.settings.buffer_max_delay - time.monotonic()
        if wait > 0 and len(self._buf) < PUSH_CHUNK and not self._stopping:
            time.sleep(wait)

    def _push_some(self, *, kick: bool = False) -> bool:
        with self._push_lock:
            return self._push_chunk(kick=kick)

    def _push_chunk(self, *, kick: bool) -> bool:
        chunk: list[Entry] = []
        while self._buf and len(chunk) < PUSH_CHUNK:
            chunk.append(self._buf.popleft())
        # From the writer thread, and where the queue can, the kick's lease is tried in the
        # push's own round trip (one round trip instead of two).
        push_and_acquire = (
            getattr(self.queue, "push_and_acquire", None) if kick and self._can_kick() else None
        )
        leased: bool | None = None
        try:
            self._ensure_destinations(self.queue)
            if push_and_acquire is not None:
                leased = bool(push_and_acquire(chunk, KICK_LEASE, KICK_TTL))
            else:
                self.queue.push(chunk)
        except Exception as exc:
            self._buf.extendleft(reversed(chunk))
            metrics.count("push_failed")
            metrics.warn_once_per_interval(
                "push_failed",
                "queue unreachable (%s: %s); %d message(s) held in memory until it returns",
                type(exc).__name__,
                str(exc)[:200],
                len(self._buf),
            )
            return False
        self._untrimmed = True
        if leased is None:
            self._kick_wanted = True  # acquired once the buffer is empty, by _kick
        elif leased:
            self._request_flush()
        # else: a flush is already on its way and will see these messages
        self._report_counts()
        return True

    def _report_counts(self) -> None:
        pending = metrics.take_unreported()
        if not pending:
            return
        add = getattr(self.queue, "add_counts", None)
        try:
            if add is not None:
                add(pending)
        except Exception:
            metrics.restore_unreported(pending)

    def _kick(self) -> bool:
        """Request a flush unless one is on its way; False when the queue did not answer."""
        if not self._can_kick():
            return True
        try:
            if not self.queue.acquire(KICK_LEASE, KICK_TTL):
                return True  # a flush is already on its way and will see these messages
        except Exception:
            self._kick_wanted = True
            return False
        self._request_flush()
        return True

    def _trim_unrouted(self, *, now: bool = False) -> None:
        """In a process that names no destination, trim the log at most once a second.

        Its messages are for whatever destinations other processes (workers) name, and
        trimming keeps what their cursors still need; when no process names any, nothing
        will read them, and a staging deployment without a write key must not fill Redis.
        """
        if self.settings.destinations:
            self._untrimmed = False
            return
        if not now and time.monotonic() < self._trim_at:
            return
        self._untrimmed = False
        self._trim_at = time.monotonic() + UNROUTED_TRIM_INTERVAL
        try:
            self.queue.trim()
        except Exception:
            self._untrimmed = True
            log.debug("trim failed", exc_info=True)

    def _ensure_destinations(self, queue: Queue) -> None:
        """Once per process and queue: a cursor for every configured destination.

        Consumers create them too, but a producer must not rely on that: a destination
        added in a deploy whose web processes start before its workers would otherwise
        have no cursor while an old worker trims the log past what it has not read.
        """
        key = id(queue)
        if key not in self._ensured:
            queue.ensure_destinations(list(self.settings.destination_names))
            self._ensured.add(key)

    def _can_kick(self) -> bool:
        # Only take the shared lease when this process can act on it: a lease held by a
        # process with no way to request a flush would mute every other process's kicks.
        return self.on_kick is not None and self.kick_available()

    def _request_flush(self) -> None:
        """With the kick lease held: ask for a flush; give the lease back if that fails."""
        if self.on_kick is None:
            return
        try:
            self.on_kick()
        except Exception as exc:
            # The flush could not be requested (broker down?): let the next push try.
            try:
                self.queue.release(KICK_LEASE)
            except Exception:
                log.debug("could not release the kick lease", exc_info=True)
            metrics.count("kick_failed")
            metrics.warn_once_per_interval(
                "kick_failed", "could not request a flush (%s)", type(exc).__name__
            )

    # -- lifecycle ---------------------------------------------------------------------
    def drain(self, timeout: float = EXIT_TIMEOUT) -> bool:
        """Push everything buffered now (from the calling thread); True when empty."""
        deadline = time.monotonic() + timeout
        while self._pid == os.getpid():
            left = deadline - time.monotonic()
            if left <= 0 or not self._push_lock.acquire(timeout=left):
                break
            try:
                if not self._buf:
                    return True  # and no push is in flight: it held the lock
                pushed = self._push_chunk(kick=False)
            finally:
                self._push_lock.release()
            if not pushed:
                time.sleep(0.05)
        return not self.buffered

    def close(self, timeout: float = EXIT_TIMEOUT) -> None:
        if self._pid != os.getpid():
            return
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self._buf and not self.drain(timeout):
            metrics.count("dropped", len(self._buf))
            log.error("exiting with %d message(s) the queue could not take", len(self._buf))
        if self._untrimmed:
            self._trim_unrouted(now=True)
        self._thread = None
