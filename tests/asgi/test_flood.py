"""Attacker-sized headers through the ASGI middleware in front of a Starlette app: the
process does not keep them (every request-keyed cache is bounded in bytes). Requests are
handed to the app as a server hands them (Starlette's TestClient costs ~3 ms each)."""

from __future__ import annotations

import asyncio
import gc
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from segment_mw import asgi
from segment_mw.asgi import SegmentMiddleware

from .conftest import HTML, NAVIGATION, call_asgi, http_scope

REQUESTS = 3_000
BOUND = 10 * 1024 * 1024  # "a few MB": every request-keyed cache together holds ~4 MiB


def resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def junk(chars: int) -> str:
    return os.urandom(chars // 2).hex()


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(HTML)


def hostile() -> dict[str, object]:
    headers = {
        **NAVIGATION,
        "host": "example.com",
        "user-agent": "Mozilla/5.0 " + junk(8192),
        "accept-language": junk(600),
        "sec-ch-ua": f'"{junk(600)}";v="1"',
        "cookie": f"ajs_anonymous_id={junk(600)}; ajs_user_id={junk(600)}",
        "x-forwarded-for": ", ".join(junk(30) for _ in range(10)),
        # Made-up header names: the middleware remembers the names browsers send.
        f"x-{junk(16)}": "1",
        junk(4096): "1",
    }
    return http_scope(headers=[(k.encode(), v.encode()) for k, v in headers.items()])


def test_a_flood_of_random_8kb_headers_does_not_grow_the_process(configure, redis_settings):
    configure(**redis_settings, TRUSTED_PROXIES=1)
    app = Starlette(routes=[Route("/", page)])
    app.add_middleware(SegmentMiddleware)

    async def flood(n: int) -> None:
        for _ in range(n):
            assert (await call_asgi(app, hostile())).status == 200

    asyncio.run(flood(300))  # warm-up
    gc.collect()
    before = resident()
    asyncio.run(flood(REQUESTS))
    gc.collect()
    grown = resident() - before
    assert grown < BOUND, f"{REQUESTS} hostile requests grew the process by {grown / 2**20:.1f} MiB"
    assert len(asgi._NAMES) <= asgi._MAX_NAMES
    assert max(map(len, asgi._NAMES)) <= asgi._MAX_NAME
