"""Fixtures for the ASGI middleware: a memory queue per test, browser headers, a raw harness."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

BROWSER_UA = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
# What a browser sends for a top-level navigation.
NAVIGATION = {
    "user-agent": BROWSER_UA,
    "accept": "text/html,application/xhtml+xml",
    "sec-fetch-mode": "navigate",
    "sec-fetch-dest": "document",
}
HTML = "<!doctype html><html><head><title>Home</title></head><body>hello</body></html>"


@pytest.fixture
def configure(configure: Callable[..., Any]) -> Callable[..., Any]:
    """The shared fixture, without the in-process flusher: tests deliver with flush()."""

    def _configure(**settings: Any) -> Any:
        # Its gathering delay would make every client close (each teardown) wait for it.
        settings.setdefault("IN_PROCESS_FLUSHER", False)
        return configure(**settings)

    return _configure


@pytest.fixture(autouse=True)
def _memory_queue(configure: Callable[..., Any]) -> None:
    configure()


@dataclass
class Exchange:
    """What an ASGI app sent for one request, message by message."""

    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def start(self) -> dict[str, Any]:
        return next(m for m in self.messages if m["type"] == "http.response.start")

    @property
    def status(self) -> int:
        return int(self.start["status"])

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(bytes(k), bytes(v)) for k, v in self.start.get("headers", [])]

    def header_values(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k.lower() == name]

    @property
    def body_messages(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == "http.response.body"]

    @property
    def body(self) -> bytes:
        return b"".join(bytes(m.get("body", b"")) for m in self.body_messages)


def http_scope(
    path: str = "/",
    *,
    method: str = "GET",
    headers: Iterable[tuple[bytes, bytes]] | None = None,
    query_string: bytes = b"",
    root_path: str = "",
    client: tuple[str, int] | None = ("203.0.113.5", 50000),
    scheme: str = "https",
    extensions: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if headers is None:
        headers = [(b"host", b"example.com")] + [
            (k.encode(), v.encode()) for k, v in NAVIGATION.items()
        ]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": path,
        "raw_path": path.encode(),
        "root_path": root_path,
        "query_string": query_string,
        "headers": list(headers),
        "client": client,
        "server": ("example.com", 443),
        "extensions": extensions or {},
        "state": {},
    }


async def call_asgi(
    app: Any,
    scope: dict[str, Any] | None = None,
    *,
    on_send: Callable[[dict[str, Any]], Any] | None = None,
) -> Exchange:
    """Run one request through ``app`` as a server would, recording every ``send``."""
    exchange = Exchange()
    finished = asyncio.Event()
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await finished.wait()  # the client stays connected until the response is complete
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        exchange.messages.append(dict(message))
        if on_send is not None:
            on_send(dict(message))
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            finished.set()

    try:
        await app(scope or http_scope(), receive, send)
    finally:
        finished.set()
    return exchange
