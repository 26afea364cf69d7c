"""The in-process flusher: delivery without Celery, for the embedded queue and scripts.

A daemon thread, started lazily in each process that emits (so a forked child starts its
own), wakes when messages are queued, waits ``FLUSH_DELAY`` to gather a batch, and
flushes every destination that is due — honouring each destination's back-off. At
interpreter exit it drains for a bounded time.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time

from . import forks
from .delivery import Deliverer
from .producer import KICK_LEASE, Producer

log = logging.getLogger("segment_mw.flusher")

IDLE_WAKE = 5.0
EXIT_TIMEOUT = 5.0


class _State:
    """One process's flusher thread."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.wake = threading.Event()
        self.stop = False
        self.lock = threading.Lock()
        self.due: dict[str, float] = {}
        self.closed = False  # closed in this process: it must not start again


class InProcessFlusher:
    def __init__(self, deliverer: Deliverer, producer: Producer, delay: float) -> None:
        self.deliverer = deliverer
        self.producer = producer
        self.delay = delay
        # A forked child starts a thread of its own (its parent's is not running in it).
        self._state: forks.ProcessLocal[_State] = forks.ProcessLocal(_State)
        self._exit_hook = False

    def notify(self) -> None:
        self.start()
        self._state.get().wake.set()

    def start(self) -> None:
        """Start the thread in this process if it is not running (and its exit hook)."""
        st = self._state.get()
        if st.thread is not None or st.closed:
            return
        # Under the lock: close() in another thread must not miss a thread starting now.
        with st.lock:
            if st.thread is not None or st.closed:
                return
            st.thread = threading.Thread(
                target=self._run, args=(st,), name="segment_mw-flusher", daemon=True
            )
            st.thread.start()
            if not self._exit_hook:
                self._exit_hook = True  # a forked child inherits it: close() acts there too
                atexit.register(self.close)

    def _run(self, st: _State) -> None:
        while not st.stop:
            now = time.time()
            waits = [max(t - now, 0.0) for t in st.due.values()]
            woke = st.wake.wait(min([*waits, IDLE_WAKE]))
            st.wake.clear()
            if st.stop:
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
        due = self._state.get().due
        now = time.time()
        for name in self.deliverer.destinations:
            if not force and due.get(name, 0.0) > now:
                continue
            try:
                report = self.deliverer.flush_destination(name)
            except Exception:
                log.exception("flushing destination %s failed", name)
                due[name] = time.time() + 1.0
                continue
            delay = report.next_run
            due[name] = time.time() + (IDLE_WAKE if delay is None else delay)

    def close(self, timeout: float = EXIT_TIMEOUT) -> None:
        st = self._state.peek()
        if st is None:
            return
        with st.lock:
            st.closed = True
            thread = st.thread
        if thread is None:
            return
        st.stop = True
        st.wake.set()
        thread.join(timeout)
        st.thread = None
        deadline = time.monotonic() + timeout
        self.producer.drain(timeout, kick=False)  # this flush delivers it
        try:
            self.deliverer.flush_all(deadline=deadline)
        except Exception:
            log.exception("final flush at exit failed")
