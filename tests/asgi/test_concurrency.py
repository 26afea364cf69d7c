"""Per-request scopes under concurrency, and queueing that never runs on the event loop."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

import segment_mw
from segment_mw import scope as scope_mod
from segment_mw.asgi import SegmentMiddleware
from segment_mw.client import get_client

from ..starlette_versions import route_name
from .conftest import HTML, NAVIGATION


def scope_json() -> dict[str, Any]:
    current = scope_mod.current()
    assert current is not None
    return {
        "anonymous_id": current.anonymous_id,
        "user_id": current.user_id,
        "path": current.context["page"]["path"],
    }


def make_app(arrived: list[str], all_in: asyncio.Event) -> Starlette:
    async def who(request: Request) -> JSONResponse:
        if "u" in request.query_params:
            segment_mw.set_user(request.query_params["u"])
        arrived.append(request.url.path)
        if len(arrived) == 2:
            all_in.set()
        await asyncio.wait_for(all_in.wait(), 5)  # both requests are in flight now
        await asyncio.sleep(0)
        return JSONResponse(scope_json())

    def who_sync(request: Request) -> JSONResponse:
        return JSONResponse(scope_json())  # runs in a worker thread

    app = Starlette(routes=[Route("/who/{n}", who), Route("/sync", who_sync)])
    app.add_middleware(SegmentMiddleware)
    return app


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test", headers=NAVIGATION
    )


async def test_concurrent_requests_never_see_each_other(segment_events):
    app = make_app([], asyncio.Event())
    async with client(app) as http:
        first, second = await asyncio.gather(
            http.get("/who/1?u=u-1", headers={"cookie": "ajs_anonymous_id=anon-1"}),
            http.get("/who/2", headers={"cookie": "ajs_anonymous_id=anon-2; ajs_user_id=u-1"}),
        )
    # set_user names the user of its own request only; the browser's ajs_user_id cookie
    # names nobody.
    assert first.json() == {"anonymous_id": "anon-1", "user_id": "u-1", "path": "/who/1"}
    assert second.json() == {"anonymous_id": "anon-2", "user_id": None, "path": "/who/2"}
    assert scope_mod.current() is None


async def test_the_scope_is_reset_after_the_response(segment_events):
    async with client(make_app([], asyncio.Event())) as http:
        # httpx runs the app in this very task, so a leaked binding would show here.
        response = await http.get("/sync", headers={"cookie": "ajs_anonymous_id=anon-s"})
        assert scope_mod.current() is None
    assert response.json()["anonymous_id"] == "anon-s"  # sync endpoints see it too


async def test_tracked_calls_in_the_endpoint_carry_the_request(segment_events):
    @segment_mw.tracked("Thing Done")
    async def do_thing() -> None:
        await asyncio.sleep(0)

    async def endpoint(request: Request) -> HTMLResponse:
        await do_thing()
        return HTMLResponse(HTML)

    app = Starlette(routes=[Route("/", endpoint)])
    app.add_middleware(SegmentMiddleware)
    async with client(app) as http:
        await http.get("/?utm_source=ads", headers={"cookie": "ajs_anonymous_id=anon-t"})
    track, page = segment_events
    assert (track["type"], page["type"]) == ("track", "page")
    assert track["event"] == "Thing Done"
    assert track["anonymousId"] == page["anonymousId"] == "anon-t"
    assert track["context"]["campaign"] == {"source": "ads"}
    assert track["context"]["page"]["path"] == "/"


async def test_queueing_never_happens_on_the_event_loop(configure, tmp_path, monkeypatch):
    out = tmp_path / "events.jsonl"
    configure(DESTINATIONS={"file": {"type": "jsonl", "path": str(out)}})
    queue = get_client().push_queue
    original = queue.push
    pushed_from: list[tuple[str, bool]] = []
    entered, release = threading.Event(), threading.Event()

    def push(entries: Any) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        pushed_from.append((threading.current_thread().name, on_loop))
        entered.set()
        release.wait(5)  # a queue that hangs: the request must not wait for it
        return original(entries)

    monkeypatch.setattr(queue, "push", push)

    async def home(request: Request) -> HTMLResponse:
        return HTMLResponse(HTML)

    app = Starlette(routes=[Route("/", home, name="home")])
    app.add_middleware(SegmentMiddleware)
    async with client(app) as http:
        response = await http.get("/")
    assert response.status_code == 200  # answered while the queue is stuck
    assert not release.is_set()
    assert await asyncio.to_thread(entered.wait, 5)
    assert pushed_from == [("segment_mw-producer", False)]
    release.set()
    assert await asyncio.to_thread(segment_mw.flush, 10)
    [event] = [json.loads(line) for line in out.read_text().splitlines()]
    assert (event["type"], event.get("name")) == ("page", route_name("home"))


async def test_pageviews_reach_redis_from_the_producer_thread(configure, redis_settings, tmp_path):
    out = tmp_path / "events.jsonl"
    configure(**redis_settings, DESTINATIONS={"file": {"type": "jsonl", "path": str(out)}})

    async def home(request: Request) -> HTMLResponse:
        return HTMLResponse(HTML)

    app = Starlette(routes=[Route("/", home, name="home")])
    app.add_middleware(SegmentMiddleware)
    async with client(app) as http:
        responses = await asyncio.gather(*(http.get(f"/?n={n}") for n in range(5)))
    assert all(r.status_code == 200 for r in responses)
    assert await asyncio.to_thread(segment_mw.flush, 10)
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(e["properties"]["search"] for e in events) == [f"?n={n}" for n in range(5)]
