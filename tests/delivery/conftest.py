"""Fixtures for the delivery tests: Celery workers (in a thread and as processes), extra
sinks, a private redis-server that can be killed, and polling helpers.

Every test gets its own Celery queue name and Redis key prefix: other test runs share the
broker and Redis databases.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

import segment_mw
import segment_mw.celery

from ..celery_worker import in_process_worker
from ..sink import Sink, running_sink

ROOT = Path(__file__).resolve().parents[2]
BROKER = os.environ.get("SEGMENT_MW_TEST_BROKER", "redis://127.0.0.1:6379/10")

# Small timings so failures, claims and retries happen within a test's patience.
FAST = {
    "FLUSH_DELAY": 0.05,
    "CLAIM_IDLE": 3.0,  # destinations' timeouts default to 2 s then (CLAIM_IDLE / 1.5)
    "FLUSH_TIME_LIMIT": 10.0,
}


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 15.0,
    message: str = "condition",
    worker: WorkerProcess | None = None,
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f"\nworker log:\n{worker.output[-4000:]}" if worker is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message}{detail}")
        time.sleep(0.02)


def message_ids(sink: Sink, path: str | None = None) -> list[str]:
    """messageIds of every event the sink accepted (optionally on one path), in order."""
    with sink.lock:
        requests = [r for r in sink.requests if path is None or r.path == path]
    return [e["messageId"] for r in requests for e in r.body.get("batch", [])]


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: this one's, less what would reconfigure it.

    Other tests leave ``DJANGO_SETTINGS_MODULE`` set, and Celery's Django fix-up would then
    set up that project (and segment_mw from its settings) inside a worker.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "DJANGO_SETTINGS_MODULE" and not k.startswith("SEGMENT_")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sink_on_port(port: int) -> contextlib.AbstractContextManager[Sink]:
    """A sink listening on a given port (a destination that comes back where it was)."""
    return running_sink(port)


@pytest.fixture
def sinks() -> Iterator[Callable[[], Sink]]:
    """Make as many extra sinks as a test needs (one per destination, to fail them apart)."""
    with contextlib.ExitStack() as stack:
        yield lambda: stack.enter_context(running_sink())


@pytest.fixture
def fast_settings(redis_settings: dict[str, Any]) -> dict[str, Any]:
    """Redis queue with a private prefix, and fast timings."""
    return {**redis_settings, **FAST}


@pytest.fixture
def celery_queue(redis_url: str) -> Iterator[str]:
    name = f"smw-delivery-{uuid.uuid4().hex[:12]}"
    yield name
    broker = redis.Redis.from_url(BROKER)
    keys = list(broker.scan_iter(f"*{name}*", count=1000))
    if keys:
        broker.delete(*keys)
    broker.zrem("_kombu.binding_deadlines", name)


@pytest.fixture
def celery_app(celery_queue: str) -> Iterator[Celery]:
    """A Celery app of its own for the test, on the shared broker with a private queue."""
    app = Celery(
        f"segment_mw_delivery_{celery_queue}",
        broker=BROKER,
        set_as_current=False,
        fixups=[],  # not the Django fix-up: this is no Django project's worker
    )
    app.conf.update(
        task_default_queue=celery_queue,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    yield app
    segment_mw.celery.uninstall()
    app.close()


@pytest.fixture
def setup(
    fast_settings: dict[str, Any], celery_app: Celery
) -> Callable[..., segment_mw.client.Client]:
    """Configure the process-wide client (Redis, fast timings) and wire it to Celery."""

    def _setup(celery: bool = True, **overrides: Any) -> segment_mw.client.Client:
        client = segment_mw.configure({**fast_settings, **overrides})
        if celery:
            segment_mw.celery.install(celery_app)
        return client

    return _setup


@pytest.fixture
def worker(celery_app: Celery) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """A real Celery worker in a thread of this process (solo pool)."""

    def _worker() -> contextlib.AbstractContextManager[Any]:
        return in_process_worker(
            celery_app,
            pool="solo",
            concurrency=1,
            perform_ping_check=False,
            loglevel="WARNING",
            shutdown_timeout=30.0,
        )

    return _worker


class WorkerProcess:
    """``celery -A tests.celery_app worker`` as a child process of its own session."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.output}")
            return " ready." in self.output

        wait_until(ready, timeout, "the worker to start")

    def kill(self) -> None:
        """SIGKILL the worker and every process it forked (the pool's children too)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown; SIGKILL if it takes too long."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def worker_process(celery_queue: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def _start(
        settings: dict[str, Any],
        pool: str = "solo",
        concurrency: int = 1,
        extra: Sequence[str] = (),
    ) -> WorkerProcess:
        n = len(started)
        env = child_env(
            SEGMENT_MW_TEST_SETTINGS=json.dumps(settings),
            SEGMENT_MW_TEST_CELERY_QUEUE=celery_queue,
            SEGMENT_MW_TEST_BROKER=BROKER,
        )
        log = tmp_path / f"worker-{n}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "tests.celery_app",
                    "worker",
                    f"--pool={pool}",
                    f"--concurrency={concurrency}",
                    "--without-mingle",
                    "--without-gossip",
                    "--without-heartbeat",
                    "--loglevel=INFO",
                    f"--hostname=w{n}-{celery_queue}@%h",
                    *extra,
                ],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = WorkerProcess(proc, log)
        started.append(worker)
        return worker

    yield _start
    for worker in started:
        worker.stop(timeout=5.0)


class RedisServer:
    """A redis-server of the test's own, on a free port, that the test may kill."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(up, 10.0, "redis-server to start")
        client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()
