"""Celery integration: the flush and replay tasks, the debounced kick, and context in tasks.

Celery runs the flushes; it does not carry the events (they stay in the queue's own
stream). ``install(app)`` — called explicitly, nothing happens at import — makes every
enqueue request a flush (at most one pending per short interval across all processes),
starts in each worker a small watchdog that hands orphaned or forgotten work to a flush
(so no beat schedule is needed), and carries the current request's identity and context
into tasks sent from it (``before_task_publish`` → ``task_prerun`` / ``task_postrun``).

Worker settings the library cannot set for you: ``worker_prefetch_multiplier = 1`` is
recommended so a long flush does not hold other tasks back; flush tasks use late acks and
are re-queued if their worker process is lost.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

try:
    from celery import Celery, Task, shared_task, signals
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("segment_mw.celery needs Celery: pip install 'segment-mw[celery]'") from exc

from . import forks
from . import scope as scope_mod
from .client import get_client
from .producer import KICK_LEASE

log = logging.getLogger("segment_mw.celery")

FLUSH_TASK = "segment_mw.flush"
REPLAY_TASK = "segment_mw.replay"
SCOPE_HEADER = "segment_mw_scope"
QUEUED_TTL = 60.0  # a queued flush lost with its message stops blocking new ones then

_app: Celery | None = None


def _queued_lease(destination: str) -> str:
    return f"queued:{destination}"


def _sched_lease(destination: str) -> str:
    return f"scheduled:{destination}"


def request_flush(destination: str, delay: float = 0.0, *, scheduled: bool = False) -> bool:
    """Send a flush of one destination unless one is already waiting; True if sent."""
    client = get_client()
    lease = _sched_lease(destination) if scheduled else _queued_lease(destination)
    ttl = delay + QUEUED_TTL
    if not client.queue.acquire(lease, ttl):
        return False
    try:
        _send(FLUSH_TASK, kwargs={"destination": destination, "scheduled": scheduled}, delay=delay)
    except Exception:
        client.queue.release(lease)
        raise
    return True


class _Publisher:
    """Sends the library's tasks over a broker connection of its own that tries once.

    Through the app's pooled connections kombu keeps reconnecting to a broker that is
    down for seconds (``broker_connection_timeout``) on every send, stalling the
    producer's writer thread that kicks; here a send fails at once and is counted.
    The connection (and its lock) belong to the process that opened it: a forked child
    opens its own and never touches its parent's.
    """

    def __init__(self) -> None:
        self._state: forks.ProcessLocal[_Connection] = forks.ProcessLocal(_Connection)

    def send(self, app: Celery, name: str, **options: Any) -> None:
        state = self._state.get()
        with state.lock:
            if state.conn is not None and state.app is not app:
                state.drop()
            if state.conn is None:
                state.conn = app.connection_for_write(transport_options={"max_retries": 0})
                state.app = app
            try:
                app.send_task(name, connection=state.conn, **options)
            except Exception:
                state.drop()
                raise


class _Connection:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conn: Any = None
        self.app: Celery | None = None  # the connection's app (held: ids get reused)

    def drop(self) -> None:
        conn, self.conn, self.app = self.conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.release()


_publisher = _Publisher()


def _send(name: str, *, kwargs: dict[str, Any], delay: float) -> None:
    app = _app
    if app is None:
        from celery import current_app

        # The app itself, not the proxy (whose identity never changes).
        app = current_app._get_current_object()  # type: ignore[attr-defined]
    if app.conf.task_always_eager:
        # No worker reads a broker for an always-eager app (tests, demos), and send_task
        # would only warn (AlwaysEagerIgnored) and publish anyway. Not run inline either:
        # a kick comes from the producer's writer thread, and a flush that schedules its
        # next run would recurse. This process's in-process flusher delivers instead.
        get_client().flusher.notify()
        return
    # No publish retry loop: a kick that cannot be sent is retried by the next push.
    _publisher.send(
        app, name, kwargs=kwargs, countdown=delay or None, retry=False, ignore_result=True
    )


@shared_task(
    name=FLUSH_TASK,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def flush(destination: str | None = None, scheduled: bool = False) -> dict[str, int]:
    """Deliver queued messages: all destinations (fanned out), or one."""
    client = get_client()
    queue = client.queue
    if destination is None:
        # Release the kick first: anything pushed from now on requests a new flush, and
        # anything pushed before is read by the flushes sent below.
        queue.release(KICK_LEASE)
        names = client.settings.destination_names
        queue.ensure_destinations(list(names))
        for name in names:
            try:
                request_flush(name)
            except Exception:
                log.warning("could not request a flush of %s", name, exc_info=True)
        return {}
    try:
        queue.release(_sched_lease(destination) if scheduled else _queued_lease(destination))
        report = client.deliverer.flush_destination(destination)
    except Exception:
        # The queue failed mid-flush (an outage, a failover): the lease this flush should
        # have cleared may still be set, holding off every new request for QUEUED_TTL.
        # A follow-up of its own, sent past the lease, takes over once the queue is back.
        try:
            _send(
                FLUSH_TASK,
                kwargs={"destination": destination},
                delay=max(client.settings.claim_idle / 3, client.settings.flush_delay),
            )
        except Exception:
            log.warning("could not send the follow-up of a failed flush", exc_info=True)
        raise
    delay = report.next_run
    if delay is not None:
        try:
            request_flush(destination, delay, scheduled=delay > client.settings.flush_delay)
        except Exception:
            log.warning("could not schedule the next flush of %s", destination, exc_info=True)
    return {"delivered": report.delivered, "dead": report.dead}


@shared_task(name=REPLAY_TASK, ignore_result=True)
def replay(destination: str | None = None) -> dict[str, int]:
    """Put dead letters back into delivery (one destination or all) and flush them."""
    client = get_client()
    moved = client.replay(destination)
    for name, count in moved.items():
        if count:
            request_flush(name)
    return moved


# -- context into tasks ------------------------------------------------------------------
def _before_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
    current = scope_mod.current()
    if current is not None and headers is not None and SCOPE_HEADER not in headers:
        headers[SCOPE_HEADER] = current.to_headers()


_tokens: dict[str, Any] = {}


def _prerun(task_id: str | None = None, task: Task[Any, Any] | None = None, **_: Any) -> None:
    if task is None or task_id is None:
        return
    if getattr(task.request, "is_eager", False):
        return  # run inline (apply(), always-eager): the caller's scope is already bound
    data = getattr(task.request, SCOPE_HEADER, None)
    if data is None:
        headers = getattr(task.request, "headers", None) or {}
        data = headers.get(SCOPE_HEADER)
    # Always bind, even None: a task must never inherit the previous task's context.
    _tokens[task_id] = scope_mod.bind(scope_mod.Scope.from_headers(data) if data else None)


def _postrun(task_id: str | None = None, **_: Any) -> None:
    token = _tokens.pop(task_id or "", None)
    if token is not None:
        try:
            scope_mod.reset(token)
        except ValueError:  # created in another context (eager or odd pools)
            scope_mod.bind(None)


# -- worker watchdog -----------------------------------------------------------------------
class Watchdog:
    """In a worker's main process: hands orphaned or forgotten messages to a flush.

    A worker killed mid-batch leaves messages pending; once idle past ``CLAIM_IDLE`` any
    flush can claim them, so this asks for one. It also covers a kick lost with a broker
    hiccup. It runs in the main process, which prefork children never inherit threads from.
    """

    def __init__(self, interval: float | None = None) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="segment_mw-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            client = get_client()
            interval = self.interval or max(client.settings.claim_idle / 3, 1.0)
            try:
                self.check()
            except Exception:
                log.debug("watchdog check failed", exc_info=True)
            self._stop.wait(interval)

    def check(self) -> None:
        # request_flush is deduplicated by a lease, so asking while a flush is already
        # waiting costs one SET; a running flush that finds nothing new is cheap too.
        client = get_client()
        for name, dest in client.status().destinations.items():
            if dest.queued and dest.backoff_until is None:
                request_flush(name)
        # Housekeeping that must not wait for traffic: dead letters past DEAD_LETTER_MAX_AGE,
        # and a log no destination reads (a deployment with none configured).
        client.queue.trim()


_watchdog: Watchdog | None = None


def _worker_ready(**_: Any) -> None:
    global _watchdog
    try:
        _send(FLUSH_TASK, kwargs={}, delay=0.0)  # a starting worker picks up what is waiting
    except Exception:
        log.warning("could not request the start-up flush", exc_info=True)
    if _watchdog is None:
        _watchdog = Watchdog()
        _watchdog.start()


def _worker_shutdown(**_: Any) -> None:
    global _watchdog
    if _watchdog is not None:
        _watchdog.stop()
        _watchdog = None
    get_client().close()


def _process_shutdown(**_: Any) -> None:
    # A prefork child leaves through os._exit (also when --max-tasks-per-child recycles
    # it): no exit hook runs, so what its tasks buffered is pushed, and a flush requested,
    # here.
    get_client().close()


def _kick() -> None:
    _send(FLUSH_TASK, kwargs={}, delay=get_client().settings.flush_delay)


def install(app: Celery, *, propagate_context: bool = True, watchdog: bool = True) -> None:
    """Wire segment_mw into a Celery app: kicks, worker and pool-process life, context."""
    global _app
    _app = app
    client = get_client()
    client.on_kick = _kick
    signals.worker_process_shutdown.connect(
        _process_shutdown, weak=False, dispatch_uid="segment_mw.process_shutdown"
    )
    if propagate_context:
        signals.before_task_publish.connect(
            _before_publish, weak=False, dispatch_uid="segment_mw.publish"
        )
        signals.task_prerun.connect(_prerun, weak=False, dispatch_uid="segment_mw.prerun")
        signals.task_postrun.connect(_postrun, weak=False, dispatch_uid="segment_mw.postrun")
    if watchdog:
        signals.worker_ready.connect(_worker_ready, weak=False, dispatch_uid="segment_mw.ready")
        signals.worker_shutdown.connect(
            _worker_shutdown, weak=False, dispatch_uid="segment_mw.shutdown"
        )


def uninstall() -> None:
    """Undo :func:`install` (tests)."""
    global _app
    _app = None
    get_client().on_kick = None
    for signal, uid in (
        (signals.before_task_publish, "segment_mw.publish"),
        (signals.task_prerun, "segment_mw.prerun"),
        (signals.task_postrun, "segment_mw.postrun"),
        (signals.worker_ready, "segment_mw.ready"),
        (signals.worker_shutdown, "segment_mw.shutdown"),
        (signals.worker_process_shutdown, "segment_mw.process_shutdown"),
    ):
        signal.disconnect(dispatch_uid=uid)


def wait_until_delivered(timeout: float = 30.0) -> bool:
    """Block until nothing deliverable is queued (scripts and tests that run a worker)."""
    client = get_client()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client.producer.drain(1.0)
        status = client.status()
        if all(d.queued == 0 or d.backoff_until for d in status.destinations.values()):
            return True
        time.sleep(0.05)
    return False
