"""The in-process flusher: delivery without Celery, for the embedded queue and scripts.

A daemon thread, started lazily in each process that emits (so a forked child starts its
own), wakes when messages are queued, waits ``FLUSH_DELAY`` to gather a batch, and
flushes every destination that is due — honouring each destination's back-off. At
interpreter exit it drains for a bounded time.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time

from .delivery import Deliverer
from .producer import KICK_LEASE, Producer

log = logging.getLogger("segment_mw.flusher")

IDLE_WAKE = 5.0
EXIT_TIMEOUT = 5.0


class InProcessFlusher:
    def __init__(self, deliverer: Deliverer, producer: Producer, delay: float) -> None:
        self.deliverer = deliverer
        self.producer = producer
        self.delay = delay
        self._pid = -1
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stop = False
        self._lock = threading.Lock()
        self._due: dict[str, float] = {}
        self._closed_in = -1  # the pid that closed this flusher: it must not start again

    def notify(self) -> None:
        self.start()
        self._wake.set()

    def start(self) -> None:
        """Start the thread in this process if it is not running (and its exit hook)."""
        if self._closed_in == os.getpid():
            return
        if self._pid != os.getpid() or self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._closed_in == os.getpid():
                return
            if self._pid == os.getpid() and self._thread is not None:
                return
            self._pid = os.getpid()
            self._stop = False
            self._wake = threading.Event()
            self._due = {}
            self._thread = threading.Thread(
                target=self._run, name="segment_mw-flusher", daemon=True
            )
            self._thread.start()
            atexit.register(self.close)

    def _run(self) -> None:
        while not self._stop:
            now = time.time()
            waits = [max(t - now, 0.0) for t in self._due.values()]
            woke = self._wake.wait(min([*waits, IDLE_WAKE]))
            self._wake.clear()
            if self._stop:
                return
            if woke and self.delay:
                time.sleep(self.delay)  # gather what arrives meanwhile into one batch
            # Like the Celery flush task: free the kick before reading, so what is pushed
            # from now on wakes a flusher again (this one or another process's) instead
            # of waiting out the lease.
            try:
                self.deliverer.queue.release(KICK_LEASE)
            except Exception:
                log.debug("could not release the kick lease", exc_info=True)
            self.run_once(force=woke)

    def run_once(self, *, force: bool = False) -> None:
        now = time.time()
        for name in self.deliverer.destinations:
            if not force and self._due.get(name, 0.0) > now:
                continue
            try:
                report = self.deliverer.flush_destination(name)
            except Exception:
                log.exception("flushing destination %s failed", name)
                self._due[name] = time.time() + 1.0
                continue
            delay = report.next_run
            self._due[name] = time.time() + (IDLE_WAKE if delay is None else delay)

    def close(self, timeout: float = EXIT_TIMEOUT) -> None:
        if self._pid != os.getpid():
            return
        # Under the lock: another thread may be in _start, between creating and starting it.
        with self._lock:
            self._closed_in = os.getpid()
            thread = self._thread
        if thread is None:
            return
        self._stop = True
        self._wake.set()
        thread.join(timeout)
        self._thread = None
        deadline = time.monotonic() + timeout
        self.producer.drain(timeout)
        try:
            self.deliverer.flush_all(deadline=deadline)
        except Exception:
            log.exception("final flush at exit failed")
