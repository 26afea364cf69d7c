"""The process-wide client: settings, queue, producer and delivery, created lazily.

``configure()`` installs a client; every public call goes through the current one. Parts
that hold connections or threads are created on first use and again in a forked child,
so nothing needs special care under gunicorn, uWSGI or Celery prefork. A disabled client
(``ENABLED: False`` or ``SEGMENT_MW_ENABLED=0``) hands events to its listeners (the test
fixture) and counts them, but queues and sends nothing, and never opens the queue for it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import forks, hosting, metrics
from .config import Settings, load_settings
from .delivery import Deliverer
from .errors import ConfigurationError
from .events import Entry
from .flusher import InProcessFlusher
from .producer import Producer
from .queue import DeadLetterLimits, Queue, QueueStatus, open_queue

log = logging.getLogger("segment_mw")

WORKER_TIMEOUT = 10.0
WRITER_TIMEOUT = 1.0


class _Parts:
    """What a client makes in each process: its queues, producer, deliverer and flusher."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.queue: Queue | None = None
        self.push_queue: Queue | None = None
        self.writer_queue: Queue | None = None
        self.producer: Producer | None = None
        self.deliverer: Deliverer | None = None
        self.flusher: InProcessFlusher | None = None


class Client:
    def __init__(self, settings: Settings) -> None:
        if settings.in_process_flusher and not hosting.background_threads_run():
            raise ConfigurationError(
                "uWSGI runs without threads (no enable-threads), so the in-process flusher "
                "would never deliver: add enable-threads = true to the uWSGI options, or "
                "use a Redis QUEUE_URL delivered by Celery workers"
            )
        self.settings = settings
        self.on_kick: Callable[[], None] | None = None
        self.listeners: list[Callable[[Entry], None]] = []
        # Made on first use in each process: a forked child makes its own.
        self._parts: forks.ProcessLocal[_Parts] = forks.ProcessLocal(_Parts)

    def __repr__(self) -> str:
        scheme = self.settings.queue_url.split("://")[0]
        return f"Client(queue={scheme}://…, destinations={list(self.settings.destination_names)})"

    def _queue_with(self, attr: str, timeout: float) -> Queue:
        """The queue held in ``attr``, opened on first use with this network timeout.

        Backends without a network (SQLite, memory) share one object: a memory queue
        only exists inside that object.
        """
        parts = self._parts.get()
        found: Queue | None = getattr(parts, attr)
        if found is None:
            with parts.lock:
                found = getattr(parts, attr)
                if found is None:
                    if attr != "queue" and not self.settings.queue_url.startswith(
                        ("redis", "unix")
                    ):
                        found = self.queue
                    else:
                        found = open_queue(
                            self.settings.queue_url,
                            prefix=self.settings.queue_prefix,
                            timeout=timeout,
                            dead_letters=DeadLetterLimits(
                                self.settings.dead_letter_max_events,
                                self.settings.dead_letter_max_age,
                            ),
                            shards=self.settings.queue_shards,
                            wait_replicas=self.settings.queue_wait_replicas,
                        )
                    setattr(parts, attr, found)
        return found

    @property
    def queue(self) -> Queue:
        """The queue for consumers (generous timeouts)."""
        return self._queue_with("queue", WORKER_TIMEOUT)

    @property
    def push_queue(self) -> Queue:
        """The queue for writes from the request itself: ENQUEUE_TIMEOUT, no retry loop."""
        return self._queue_with("push_queue", self.settings.enqueue_timeout)

    @property
    def writer_queue(self) -> Queue:
        """The queue for the producer's background thread: off the request path."""
        return self._queue_with("writer_queue", WRITER_TIMEOUT)

    @property
    def producer(self) -> Producer:
        parts = self._parts.get()
        if parts.producer is None:
            with parts.lock:
                if parts.producer is None:
                    producer = Producer(
                        self.writer_queue,
                        self.settings,
                        self._kick,
                        direct_queue=self.push_queue,
                    )
                    producer.kick_available = self.can_kick
                    parts.producer = producer
        return parts.producer

    @property
    def deliverer(self) -> Deliverer:
        parts = self._parts.get()
        if parts.deliverer is None:
            with parts.lock:
                if parts.deliverer is None:
                    parts.deliverer = Deliverer(self.settings, self.queue)
        return parts.deliverer

    def can_kick(self) -> bool:
        """Whether this process can request a flush (Celery installed, or in-process)."""
        return self.on_kick is not None or self.settings.in_process_flusher

    def _kick(self) -> None:
        if self.on_kick is not None:
            self.on_kick()
        elif self.settings.in_process_flusher:
            self.flusher.notify()

    @property
    def flusher(self) -> InProcessFlusher:
        parts = self._parts.get()
        if parts.flusher is None:
            with parts.lock:
                if parts.flusher is None:
                    parts.flusher = InProcessFlusher(
                        self.deliverer, self.producer, self.settings.flush_delay
                    )
        return parts.flusher

    def emit(self, entry: Entry, *, durable: bool) -> None:
        """Queue a serialised message. Never raises: trouble is logged and counted.

        A durable write asked for on a thread that runs an event loop goes to the
        producer's buffer instead (counted as ``buffered_on_loop``): waiting on Redis there
        would stall every request the loop serves. ``segment_mw.aio`` has the awaitable
        calls that make the durable write off the loop.
        """
        if durable and _on_event_loop():
            durable = False
            metrics.count("buffered_on_loop")
        for listener in self.listeners:
            try:
                listener(entry)
            except Exception:
                log.exception("event listener failed")
        if not self.settings.enabled:
            metrics.count("disabled")
            _log_disabled_once()
            return
        try:
            parts = self._parts.get()
            producer = parts.producer or self.producer
            if parts.flusher is None and self.on_kick is None and self.settings.in_process_flusher:
                # Started with the first message, not the first kick: its exit hook must
                # deliver what this process queued even when the process ends before a
                # kick got through (a short script, a forked child).
                self.flusher.start()
            producer.submit(entry, durable=durable)
        except Exception:
            metrics.count("dropped")
            metrics.warn_once_per_interval(
                "emit_failed", "could not queue a message", exc_info=True
            )

    def flush(self, timeout: float | None = None) -> bool:
        """Push buffered messages and deliver everything deliverable now.

        Returns True when nothing is left queued for a destination that is not backing off.
        """
        deadline = time.monotonic() + (timeout if timeout is not None else 30.0)
        self.producer.drain(max(deadline - time.monotonic(), 0.0), kick=False)
        pending = set(self.deliverer.destinations)
        while pending and time.monotonic() < deadline:
            for name in sorted(pending):
                report = self.deliverer.flush_destination(name, deadline=deadline)
                if report.retry_at is not None or (not report.more and report.claim_in is None):
                    pending.discard(name)
            if pending:
                time.sleep(0.05)
        status = self.status()
        return all(
            d.queued == 0 or d.backoff_until is not None for d in status.destinations.values()
        )

    def status(self) -> QueueStatus:
        names = self.settings.destination_names
        status = self.queue.status(names)
        status.unconfigured = [n for n in self.queue.known_destinations() if n not in names]
        return status

    def forget(self, destination: str) -> None:
        """Drop what the queue keeps for a destination that was removed from the settings."""
        if destination in self.settings.destination_names:
            raise ConfigurationError(
                f"DESTINATIONS: {destination!r} is still configured; remove it first"
            )
        self.queue.forget(destination)

    def replay(self, destination: str | None = None) -> dict[str, int]:
        names = [destination] if destination else list(self.settings.destination_names)
        for name in names:
            self.settings.destination(name)  # a clear error for an unknown name
        moved = {name: self.queue.replay(name) for name in names}
        for name in names:
            if moved[name]:
                self.queue.clear_backoff(name)
        if any(moved.values()):
            self._kick()
        return moved

    def close(self) -> None:
        parts = self._parts.peek()  # only what this process made
        if parts is None:
            return
        # The producer first: its last push may wake the flusher, which then delivers it.
        if parts.producer is not None:
            parts.producer.close()
        if parts.flusher is not None:
            parts.flusher.close()
        if parts.deliverer is not None:
            parts.deliverer.close()
        queues = (parts.queue, parts.push_queue, parts.writer_queue)
        for queue in {id(q): q for q in queues if q}.values():
            queue.close()
        self._parts.reset()


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


_client: Client | None = None
_client_lock = threading.Lock()
_disabled_logged = False


def _log_disabled_once() -> None:
    global _disabled_logged
    if not _disabled_logged:
        _disabled_logged = True
        log.info(
            "segment_mw is disabled (ENABLED: False or SEGMENT_MW_ENABLED=0): events are "
            "checked, then counted as 'disabled'; nothing is queued or sent"
        )


def configure(settings: Mapping[str, Any] | None = None, **overrides: Any) -> Client:
    """Set up the process-wide client from a settings dict, overrides and the environment."""
    global _client
    new = Client(load_settings(settings, **overrides))
    with _client_lock:
        old, _client = _client, new
    if old is not None:
        new.on_kick = old.on_kick
        new.listeners = old.listeners
        old.close()
    return new


def get_client() -> Client:
    """The current client, configured from the environment on first use if nobody did."""
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                _client = Client(load_settings())
    return _client


def reset_client() -> None:
    """Close and forget the current client (tests, reconfiguration)."""
    global _client
    with _client_lock:
        old, _client = _client, None
    if old is not None:
        old.close()
