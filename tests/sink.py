"""A real local HTTP server standing in for Segment or a webhook, that can fail on command."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    raw: bytes  # the body as it arrived (maybe gzipped)
    body: Any  # parsed JSON (an object for Segment's batches; {} when not JSON)
    at: float


@dataclass
class Failure:
    status: int
    times: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"success": false}'
    delay: float = 0.0


class Sink:
    """Records every POST; ``fail(...)`` queues failures answered before successes."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.failures: list[Failure] = []
        self.attempts: list[Received] = []  # every request, failed ones included
        self.reject_when: Any = None  # callable(event) -> bool: answer 400 for such batches
        self.delay = 0.0  # seconds every accepted batch takes to be answered (a slow host)
        self.answer = b'{"success": true}'  # the body of a success (tools' SDKs read theirs)
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [
                e
                for r in self.requests
                if isinstance(r.body, dict)
                for e in r.body.get("batch", [])
            ]

    def fail(
        self,
        status: int,
        times: int = 1,
        *,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
        body: bytes = b'{"success": false}',
    ) -> None:
        with self.lock:
            self.failures.append(Failure(status, times, headers or {}, body, delay))

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.events
            if len(events) >= count:
                return events
            time.sleep(0.02)
        raise AssertionError(f"expected {count} events, got {len(self.events)}")

    def handler(self) -> type[BaseHTTPRequestHandler]:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                data = (
                    gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
                )
                try:
                    body = json.loads(data)
                except ValueError:
                    body = {}
                received = Received(self.path, dict(self.headers.items()), raw, body, time.time())
                with sink.lock:
                    sink.attempts.append(received)
                    failure = None
                    if sink.failures:
                        failure = sink.failures[0]
                        failure.times -= 1
                        if failure.times <= 0:
                            sink.failures.pop(0)
                    rejected = (
                        sink.reject_when is not None
                        and isinstance(body, dict)
                        and any(sink.reject_when(e) for e in body.get("batch", []))
                    )
                if failure is not None:
                    if failure.delay:
                        time.sleep(failure.delay)
                    self._answer(failure.status, failure.body, failure.headers)
                    return
                if rejected:
                    self._answer(400, b'{"success": false, "message": "bad event"}', {})
                    return
                with sink.lock:
                    sink.requests.append(received)
                    delay, answer = sink.delay, sink.answer
                if delay:
                    time.sleep(delay)
                self._answer(200, answer, {})

            def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (timeout tests)

        return Handler


@contextmanager
def running_sink(port: int = 0) -> Iterator[Sink]:
    """A sink on 127.0.0.1 (on ``port``, for a destination that comes back where it was)."""
    sink = Sink()
    server = ThreadingHTTPServer(("127.0.0.1", port), sink.handler())
    server.daemon_threads = True
    sink.server = server
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()
