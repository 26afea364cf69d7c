"""Responses pass through intact and unbuffered; other protocols and exceptions untouched."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

import segment_mw
from segment_mw import asgi as asgi_mod
from segment_mw import metrics
from segment_mw import scope as scope_mod
from segment_mw.asgi import SegmentMiddleware

from ..starlette_versions import route_name
from .conftest import HTML, NAVIGATION, call_asgi, http_scope

CHUNKS = [b"<html><head><title>Streamed</title></head><body>", b"one", b"two", b"</body></html>"]


def streaming_app(gate: asyncio.Event | None = None) -> Starlette:
    async def chunks() -> AsyncIterator[bytes]:
        yield CHUNKS[0]
        if gate is not None:
            # Only a chunk already delivered to the server can open the gate: a middleware
            # holding it back would deadlock here.
            await asyncio.wait_for(gate.wait(), 5)
        for chunk in CHUNKS[1:]:
            yield chunk

    async def stream(request: Request) -> StreamingResponse:
        return StreamingResponse(chunks(), media_type="text/html")

    app = Starlette(routes=[Route("/stream", stream, name="stream")])
    app.add_middleware(SegmentMiddleware)
    return app


async def test_a_stream_passes_through_chunk_by_chunk(segment_events):
    gate = asyncio.Event()

    def on_send(message: dict[str, Any]) -> None:
        if message.get("body") == CHUNKS[0]:
            gate.set()

    exchange = await call_asgi(streaming_app(gate), http_scope("/stream"), on_send=on_send)
    assert exchange.status == 200
    bodies = [m.get("body", b"") for m in exchange.body_messages]
    assert bodies == [*CHUNKS, b""]  # each chunk its own message, then the end
    assert [m.get("more_body", False) for m in exchange.body_messages] == [True] * 4 + [False]
    event = segment_events.of_type("page")[0]
    assert event.get("name") == route_name("stream")
    assert event["properties"]["title"] == ""  # never read from a stream
    assert len(segment_events) == 1


async def test_the_pageview_is_queued_once_the_stream_has_ended(segment_events):
    seen_before_end: list[int] = []

    def on_send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body"):
            seen_before_end.append(len(segment_events))

    await call_asgi(streaming_app(), http_scope("/stream"), on_send=on_send)
    assert seen_before_end == [0]
    assert len(segment_events) == 1


def test_a_large_stream_arrives_intact(segment_events):
    blob = bytes(range(256)) * 4096  # 1 MiB, not HTML: nothing to look at

    async def stream(request: Request) -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            for start in range(0, len(blob), 65536):
                yield blob[start : start + 65536]

        return StreamingResponse(parts(), media_type="application/octet-stream")

    app = Starlette(routes=[Route("/", stream)])
    app.add_middleware(SegmentMiddleware)
    with TestClient(app) as http:
        response = http.get("/", headers=NAVIGATION)
    assert response.content == blob
    assert segment_events.of_type("page") == []


def file_app(directory: Path) -> Starlette:
    async def serve(request: Request) -> FileResponse:
        return FileResponse(directory / request.path_params["name"])

    app = Starlette(routes=[Route("/files/{name}", serve)])
    app.add_middleware(SegmentMiddleware)
    return app


def test_file_responses(tmp_path, segment_events):
    (tmp_path / "page.html").write_text("<html><title>From Disk</title></html>")
    data = bytes(range(256)) * 1000
    (tmp_path / "data.bin").write_bytes(data)
    with TestClient(file_app(tmp_path)) as http:
        assert http.get("/files/data.bin", headers=NAVIGATION).content == data
        page = http.get("/files/page.html", headers=NAVIGATION)
    assert page.text == "<html><title>From Disk</title></html>"
    [event] = segment_events.of_type("page")
    assert event["properties"]["path"] == "/files/page.html"
    assert event["properties"]["title"] == "From Disk"


async def test_a_file_sent_by_the_server_pathsend(tmp_path, segment_events):
    (tmp_path / "page.html").write_text(HTML)
    scope = http_scope("/files/page.html", extensions={"http.response.pathsend": {}})
    exchange = await call_asgi(file_app(tmp_path), scope)
    assert [m["type"] for m in exchange.messages] == [
        "http.response.start",
        "http.response.pathsend",
    ]
    assert exchange.messages[1]["path"] == str(tmp_path / "page.html")
    [event] = segment_events.of_type("page")
    assert event["properties"]["title"] == ""


def test_websockets_pass_through(segment_events):
    seen_scope: list[Any] = []

    async def echo(websocket: WebSocket) -> None:
        seen_scope.append(scope_mod.current())
        await websocket.accept()
        await websocket.send_text(await websocket.receive_text())
        await websocket.close()

    app = Starlette(routes=[WebSocketRoute("/ws", echo)])
    app.add_middleware(SegmentMiddleware)
    with TestClient(app) as http, http.websocket_connect("/ws", headers=NAVIGATION) as ws:
        ws.send_text("ping")
        assert ws.receive_text() == "ping"
    assert seen_scope == [None]
    assert list(segment_events) == []


def test_the_lifespan_protocol_passes_through():
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = Starlette(routes=[], lifespan=lifespan)
    app.add_middleware(SegmentMiddleware)
    with TestClient(app):
        assert events == ["startup"]
    assert events == ["startup", "shutdown"]


@pytest.mark.parametrize("kind", ["lifespan", "websocket"])
async def test_other_scopes_reach_the_app_untouched(kind):
    seen: list[Any] = []
    sent: list[Any] = []
    messages = [{"type": f"{kind}.startup.complete"}, {"type": f"{kind}.shutdown.complete"}]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive))
        for message in messages:
            await send(message)

    async def receive() -> dict[str, Any]:
        return {"type": f"{kind}.startup"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": kind, "asgi": {"version": "3.0"}, "headers": [], "path": "/"}
    frozen = dict(scope)
    await SegmentMiddleware(app)(scope, receive, send)
    assert seen == [(scope, receive)]
    assert seen[0][1] is receive
    # Lifespan's send is observed (to hand the buffer over at shutdown), never changed.
    assert sent == messages
    assert all(a is b for a, b in zip(sent, messages, strict=True))
    assert scope == frozen


async def test_lifespan_shutdown_pushes_the_buffer_before_completing(configure, segment_events):
    client = configure()
    order: list[str] = []
    real_drain = client.producer.drain

    def drain(timeout: float = 2.0) -> bool:
        order.append("drain")
        return real_drain(timeout)

    client.producer.drain = drain  # type: ignore[method-assign]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "lifespan.shutdown.complete"})

    async def send(message: Any) -> None:
        order.append(message["type"])

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.shutdown"}

    await SegmentMiddleware(app)({"type": "lifespan"}, receive, send)
    assert order == ["drain", "lifespan.shutdown.complete"]


class Boom(Exception):
    pass


async def test_an_exception_in_the_app_propagates_unchanged(segment_events):
    raised = Boom("the app failed")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        segment_mw.track("Started")
        raise raised

    with pytest.raises(Boom) as caught:
        await call_asgi(SegmentMiddleware(app))
    assert caught.value is raised
    assert [e["type"] for e in segment_events] == ["track"]  # no pageview
    assert scope_mod.current() is None


async def test_an_exception_mid_stream_means_no_pageview(segment_events):
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/html")],
            }
        )
        await send({"type": "http.response.body", "body": b"<html>", "more_body": True})
        raise Boom("lost the database")

    with pytest.raises(Boom):
        await call_asgi(SegmentMiddleware(app))
    assert list(segment_events) == []


def test_a_starlette_error_page_is_not_a_pageview(segment_events):
    async def fail(request: Request) -> HTMLResponse:
        raise Boom("oops")

    app = Starlette(routes=[Route("/", fail)])
    app.add_middleware(SegmentMiddleware)
    with TestClient(app, raise_server_exceptions=False) as http:
        assert http.get("/", headers=NAVIGATION).status_code == 500
    with TestClient(app) as http, pytest.raises(Boom):
        http.get("/", headers=NAVIGATION)
    assert list(segment_events) == []


@pytest.mark.parametrize("broken", ["capture", "skip_reason", "extract_title", "emit_pageview"])
def test_middleware_errors_never_reach_the_app(monkeypatch, caplog, segment_events, broken):
    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"bug in {broken}")

    monkeypatch.setattr(asgi_mod, broken, explode)

    async def home(request: Request) -> HTMLResponse:
        return HTMLResponse(HTML)

    app = Starlette(routes=[Route("/", home)])
    app.add_middleware(SegmentMiddleware)
    with TestClient(app) as http:
        response = http.get("/", headers=NAVIGATION)
    assert response.status_code == 200
    assert response.text == HTML
    assert metrics.counts()["middleware_error"] == 1
    assert [r.name for r in caplog.records] == ["segment_mw.asgi"]
    assert f"bug in {broken}" in caplog.text
