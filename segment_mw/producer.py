"""Handing messages to the queue without making the request wait on the network.

``submit`` appends to an in-memory buffer (a deque append) and a writer thread pushes
the buffer to the queue in pipelined batches, then kicks a flush (debounced across all
processes by a lease in the queue). While messages keep coming it pushes at most once
per ``BUFFER_MAX_DELAY`` (20 ms), gathering what arrives meanwhile into the same batch:
that, plus a push or two, is how long a message lives in memory only (what a hard crash
can lose). Each push wakes the thread, which then takes the GIL from the app's threads:
at 5 ms those wake-ups cost a busy process more than the pushes themselves.
The buffer doubles as the bounded spill: while the queue is unreachable messages stay in
it and are pushed when it returns; past ``SPILL_MAX_EVENTS`` new ones are dropped,
counted and logged once per interval. ``submit(durable=True)`` writes synchronously (for
business events such as charges) and falls back to the spill on failure. A push that
failed after it was sent (a reply later than the timeout, a connection lost mid-way) is
kept apart and finished with ``push_again``, which stores only what the queue lacks, so
nothing is stored twice. The buffer and the thread belong to the process that made them
(a fork starts afresh), and at exit the buffer is pushed, and a flush requested, within
a bounded time. Where no background thread can run (uWSGI without threads), each
message is pushed from the calling thread instead.
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import time
from collections.abc import Callable

from . import forks, hosting, metrics
from .config import Settings
from .events import Entry
from .queue import Push, PushFailed, Queue

log = logging.getLogger("segment_mw.producer")

KICK_LEASE = "kick"
KICK_TTL = 60.0  # a kick lost with its task is retried after this long
# Large: under load the thread gets the GIL back only every few ms after each socket
# call, so it must move many messages per round trip to keep up.
PUSH_CHUNK = 5000
EXIT_TIMEOUT = 2.0
UNROUTED_TRIM_INTERVAL = 1.0  # seconds between trims by a process that names no destination


class _State:
    """One process's buffer and writer thread."""

    def __init__(self) -> None:
        self.buf: collections.deque[Entry] = collections.deque()
        # Pushes that failed after they were sent, oldest first: finished by push_again.
        self.unsure: collections.deque[Push] = collections.deque()
        self.unsure_lock = threading.Lock()
        self.wake = threading.Event()
        self.idle = False
        self.kick_wanted = False
        self.lease_held = False  # a durable write took the kick lease: request the flush
        self.stopping = False
        self.thread: threading.Thread | None = None
        self.start_lock = threading.Lock()
        # Held while a chunk is out of the buffer but not yet in the queue, so that drain()
        # (flush(), exit) waits for the writer thread's push in flight instead of seeing an
        # empty buffer and reporting everything pushed too early.
        self.push_lock = threading.Lock()
        self.ensured: set[int] = set()
        self.untrimmed = False  # pushed since the last trim (processes with no destination)
        self.trim_at = 0.0
        self.threads_run = hosting.background_threads_run()
        self.inline_retry_at = 0.0  # without a thread: no push from requests before then

    @property
    def held(self) -> int:
        return len(self.buf) + sum(len(p.entries) for p in self.unsure)

    def keep_unsure(self, pushes: tuple[Push, ...]) -> None:
        with self.unsure_lock:
            self.unsure.extend(pushes)

    def take_unsure(self) -> list[Push]:
        with self.unsure_lock:
            pushes = list(self.unsure)
            self.unsure.clear()
        return pushes

    def restore_unsure(self, pushes: list[Push]) -> None:
        with self.unsure_lock:
            self.unsure.extendleft(reversed(pushes))


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
        # After a fork the parent's buffer belongs to the parent: the child starts empty.
        self._state: forks.ProcessLocal[_State] = forks.ProcessLocal(_State)
        self._exit_hook = False

    # -- request path ------------------------------------------------------------------
    def submit(self, entry: Entry, *, durable: bool = False) -> None:
        st = self._state.get()
        if durable:
            try:
                self._ensure_destinations(st, self.direct_queue)
                # The kick lease is tried in the write's own round trip: tried on its own
                # after it (nearly always finding a flush on its way) it cost as much again.
                leased = (
                    self.direct_queue.push_and_acquire([entry], KICK_LEASE, KICK_TTL)
                    if self._can_kick()
                    else self.direct_queue.push([entry])
                )
            except PushFailed as exc:
                # It may be stored: finished by push_again later, never pushed anew.
                self._spilled(exc)
                if self._room(st):
                    st.keep_unsure(exc.unsure)
                self._lease_maybe_taken(st)
                self._wake(st)
                return
            except Exception as exc:
                self._spilled(exc)  # nothing was stored: it joins the buffer below
            else:
                st.untrimmed = True
                if leased is not False:  # False: a flush is on its way and will see it
                    # Taken: the writer thread asks for the flush (off the caller's time).
                    st.lease_held = st.lease_held or leased is True
                    st.kick_wanted = True
                self._wake(st)
                return
        if (st.unsure or len(st.buf) >= self.settings.spill_max_events) and not self._room(st):
            return
        st.buf.append(entry)
        if not st.threads_run:
            self._push_inline(st)
            return
        if st.thread is None:
            self._ensure_thread(st)
        if st.idle:
            st.wake.set()

    def _room(self, st: _State) -> bool:
        """Whether the spill can hold one more message; if not it is dropped and counted."""
        if st.held < self.settings.spill_max_events:
            return True
        metrics.count("dropped")
        metrics.warn_once_per_interval(
            "dropped",
            "in-memory spill full (%d messages); message dropped",
            self.settings.spill_max_events,
        )
        return False

    def _wake(self, st: _State) -> None:
        if not st.threads_run:
            self._push_inline(st)
            return
        self._ensure_thread(st)
        st.wake.set()

    def _spilled(self, exc: Exception) -> None:
        metrics.count("spilled")
        metrics.warn_once_per_interval(
            "spilled", "queue unreachable (%s); holding messages in memory", type(exc).__name__
        )

    def _push_inline(self, st: _State) -> None:
        """No background thread runs here: push from the calling thread, at ENQUEUE_TIMEOUT.

        After a failure, requests only buffer for a while (the queue is likely still
        away); the next push after that takes what was held, and exit pushes the rest.
        """
        self._register_exit_hook()
        self._act_on_lease(st, self.direct_queue)
        if time.monotonic() < st.inline_retry_at:
            return
        if self._push_some(st, self.direct_queue, kick=True):
            st.inline_retry_at = 0.0
            if st.kick_wanted and not st.held:
                st.kick_wanted = False
                self._kick(self.direct_queue)
        else:
            st.inline_retry_at = time.monotonic() + 1.0

    @property
    def buffered(self) -> int:
        st = self._state.peek()
        return st.held if st is not None else 0

    # -- writer thread -----------------------------------------------------------------
    def _ensure_thread(self, st: _State) -> None:
        if st.thread is not None or not st.threads_run:
            return
        with st.start_lock:
            if st.thread is None:
                st.stopping = False
                thread = threading.Thread(
                    target=self._run, args=(st,), name="segment_mw-producer", daemon=True
                )
                st.thread = thread
                thread.start()
                self._register_exit_hook()

    def _register_exit_hook(self) -> None:
        if not self._exit_hook:
            # Registered once: a forked child inherits it, and close() then acts on the
            # child's own buffer.
            self._exit_hook = True
            atexit.register(self.close)

    def _act_on_lease(self, st: _State, queue: Queue) -> None:
        """Ask for the flush a durable write took the kick lease for, once it is stored.

        At once: while this process holds the lease, every push (its own included) finds
        a flush "on its way", and none is until this one asks.
        """
        if st.lease_held and not st.unsure:
            st.lease_held = False
            self._request_flush(queue)

    def _run(self, st: _State) -> None:
        failures = 0
        pushed_at = 0.0
        while True:
            st.idle = True
            if not st.buf and not st.unsure and not st.kick_wanted:
                if st.stopping:
                    return
                st.wake.wait(1.0)
                st.wake.clear()
            st.idle = False
            self._act_on_lease(st, self.queue)
            if st.buf or st.unsure:
                self._gather(st, pushed_at)
                pushed_at = time.monotonic()
                if not self._push_some(st, self.queue, kick=True):
                    # Keep the messages, wait, try again: the queue may come back.
                    failures += 1
                    if self._back_off(st, failures):
                        return
                    continue
            if st.kick_wanted and not st.buf and not st.unsure:
                st.kick_wanted = False
                if not self._kick(self.queue):  # the queue did not answer the lease
                    failures += 1
                    if self._back_off(st, failures):
                        return
                    continue
            failures = 0
            if st.untrimmed:
                self._trim_unrouted(st)

    def _back_off(self, st: _State, failures: int) -> bool:
        """Wait after a failure (never spin: the app's threads need the GIL); True to stop."""
        st.wake.wait(min(0.05 * 2**failures, 2.0))
        st.wake.clear()
        return st.stopping

    def _gather(self, st: _State, pushed_at: float) -> None:
        """While busy, push at most once per ``BUFFER_MAX_DELAY``: many messages a round trip.

        The first message after a quiet spell goes at once. Waiting here also keeps
        ``submit`` a plain append (no wake-ups), and the thread off the GIL.
        """
        wait = pushed_at + self.settings.buffer_max_delay - time.monotonic()
        if wait > 0 and len(st.buf) < PUSH_CHUNK and not st.stopping:
            st.wake.wait(wait)  # cut short by close() (and by a durable write's kick)
            st.wake.clear()

    def _push_some(self, st: _State, queue: Queue, *, kick: bool = False) -> bool:
        """Finish unsure pushes, then push a chunk of the buffer; False on failure."""
        with st.push_lock:
            return self._push_held(st, queue, kick=kick)

    def _push_held(self, st: _State, queue: Queue, *, kick: bool) -> bool:
        """``_push_some`` with the push lock held."""
        if st.unsure and not self._push_unsure(st, queue):
            return False
        if not st.buf:
            return True
        chunk: list[Entry] = []
        while st.buf and len(chunk) < PUSH_CHUNK:
            chunk.append(st.buf.popleft())
        # Where it may kick, the lease is tried in the push's own round trip.
        leased: bool | None = None
        try:
            self._ensure_destinations(st, queue)
            if kick and self._can_kick():
                leased = queue.push_and_acquire(chunk, KICK_LEASE, KICK_TTL)
            else:
                queue.push(chunk)
        except PushFailed as exc:
            st.keep_unsure(exc.unsure)
            self._push_failed(st, exc)
            if kick:
                self._lease_maybe_taken(st)
            return False
        except Exception as exc:
            st.buf.extendleft(reversed(chunk))
            self._push_failed(st, exc)
            return False
        st.untrimmed = True
        if leased is None:
            st.kick_wanted = True  # acquired once the buffer is empty, by _kick
        elif leased:
            self._request_flush(queue)
        # else: a flush is already on its way and will see these messages
        self._report_counts(queue)
        return True

    def _push_unsure(self, st: _State, queue: Queue) -> bool:
        pushes = st.take_unsure()
        try:
            queue.push_again(pushes)
        except Exception as exc:
            st.restore_unsure(pushes)
            self._push_failed(st, exc)
            return False
        st.kick_wanted = st.untrimmed = True
        return True

    def _push_failed(self, st: _State, exc: Exception) -> None:
        metrics.count("push_failed")
        metrics.warn_once_per_interval(
            "push_failed",
            "queue unreachable (%s: %s); %d message(s) held in memory until it returns",
            type(exc).__name__,
            str(exc)[:200],
            st.held,
        )

    def _report_counts(self, queue: Queue) -> None:
        pending = metrics.take_unreported()
        if not pending:
            return
        try:
            queue.add_counts(pending)
        except Exception:
            metrics.restore_unreported(pending)

    def _lease_maybe_taken(self, st: _State) -> None:
        """A push that tried the kick lease failed unanswered: Redis may have given it us.

        Then every other process finds it held and asks for no flush until it lapses; so
        this one asks for the flush once the push is finished (at worst one flush more).
        """
        if self._can_kick():
            st.lease_held = True
            st.kick_wanted = True

    def _kick(self, queue: Queue) -> bool:
        """Request a flush unless one is on its way; False when the queue did not answer."""
        if not self._can_kick():
            return True
        st = self._state.peek()
        if st is not None and st.lease_held:
            self._act_on_lease(st, queue)
            return True
        try:
            if not queue.acquire(KICK_LEASE, KICK_TTL):
                return True  # a flush is already on its way and will see these messages
        except Exception:
            st = self._state.peek()
            if st is not None:
                st.kick_wanted = True
            return False
        self._request_flush(queue)
        return True

    def _trim_unrouted(self, st: _State, *, now: bool = False) -> None:
        """In a process that names no destination, trim the log at most once a second.

        Its messages are for whatever destinations other processes (workers) name, and
        trimming keeps what their cursors still need; when no process names any, nothing
        will read them, and a staging deployment without a write key must not fill Redis.
        """
        if self.settings.destinations:
            st.untrimmed = False
            return
        if not now and time.monotonic() < st.trim_at:
            return
        st.untrimmed = False
        st.trim_at = time.monotonic() + UNROUTED_TRIM_INTERVAL
        try:
            self.queue.trim()
        except Exception:
            st.untrimmed = True
            log.debug("trim failed", exc_info=True)

    def _ensure_destinations(self, st: _State, queue: Queue) -> None:
        """Once per process and queue: a cursor for every configured destination.

        Consumers create them too, but a producer must not rely on that: a destination
        added in a deploy whose web processes start before its workers would otherwise
        have no cursor while an old worker trims the log past what it has not read.
        """
        key = id(queue)
        if key not in st.ensured:
            queue.ensure_destinations(list(self.settings.destination_names))
            st.ensured.add(key)

    def _can_kick(self) -> bool:
        # Only take the shared lease when this process can act on it: a lease held by a
        # process with no way to request a flush would mute every other process's kicks.
        return self.on_kick is not None and self.kick_available()

    def _request_flush(self, queue: Queue) -> None:
        """With the kick lease held: ask for a flush; give the lease back if that fails."""
        if self.on_kick is None:
            return
        try:
            self.on_kick()
        except Exception as exc:
            # The flush could not be requested (broker down?): let the next push try.
            try:
                queue.release(KICK_LEASE)
            except Exception:
                log.debug("could not release the kick lease", exc_info=True)
            metrics.count("kick_failed")
            metrics.warn_once_per_interval(
                "kick_failed", "could not request a flush (%s)", type(exc).__name__
            )

    # -- lifecycle ---------------------------------------------------------------------
    def drain(self, timeout: float = EXIT_TIMEOUT, *, kick: bool = True) -> bool:
        """Push everything buffered now (from the calling thread); True when empty.

        Then, with ``kick``, request a flush of what was pushed, as the writer thread would
        have: a process on its way out must not leave its last messages waiting for a
        worker's watchdog.
        """
        st = self._state.peek()
        if st is None:
            return True
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not st.push_lock.acquire(timeout=left):
                break
            try:
                if not st.buf and not st.unsure:
                    break  # and no push is in flight: it held the lock
                pushed = self._push_held(st, self.queue, kick=kick)
            finally:
                st.push_lock.release()
            if not pushed:
                time.sleep(0.05)
        if kick and st.kick_wanted and not st.held:
            st.kick_wanted = False
            self._kick(self.queue)
        return not st.held

    def close(self, timeout: float = EXIT_TIMEOUT) -> None:
        st = self._state.peek()
        if st is None:
            return
        st.stopping = True
        st.wake.set()
        thread = st.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if (st.buf or st.unsure or st.kick_wanted) and not self.drain(timeout):
            metrics.count("dropped", st.held)
            log.error("exiting with %d message(s) the queue could not take", st.held)
            # Counted as dropped: a second close (the exit hook after an explicit one) must
            # neither count them again nor push them after all.
            st.buf.clear()
            st.take_unsure()
        if st.untrimmed:
            self._trim_unrouted(st, now=True)
        st.thread = None
