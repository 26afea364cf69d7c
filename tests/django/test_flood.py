"""Attacker-sized headers through the real middleware: the process does not grow with them.

A flood of requests with random 8 KB user agents (and random cookies, languages, client
hints, forwarded hosts and addresses) once grew a worker by hundreds of megabytes, each
distinct value kept by a cache. The requests go through Django's WSGI handler itself, as
a server calls it (the test client keeps a little of every request it makes, which would
blur the figure), and what is measured is the growth of the resident set.
"""

from __future__ import annotations

import gc
import io
import os
from typing import Any

import pytest
from django.core.handlers.wsgi import WSGIHandler

from .conftest import NAVIGATION

REQUESTS = 3_000
BOUND = 10 * 1024 * 1024  # "a few MB": every request-keyed cache together holds ~4 MiB


def resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def junk(chars: int) -> str:
    return os.urandom(chars // 2).hex()


def environ(headers: dict[str, str]) -> dict[str, Any]:
    env = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "10.0.0.1",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
        "wsgi.url_scheme": "http",
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }
    for name, value in headers.items():
        env["HTTP_" + name.upper().replace("-", "_")] = value
    return env


def hostile() -> dict[str, str]:
    forwarded = ", ".join(junk(30) for _ in range(10))
    return {
        **NAVIGATION,
        "Host": "testserver",
        "User-Agent": "Mozilla/5.0 " + junk(8192),
        "Accept-Language": junk(600),
        "Sec-CH-UA": f'"{junk(600)}";v="1"',
        "Cookie": f"ajs_anonymous_id={junk(600)}; ajs_user_id={junk(600)}",
        "X-Forwarded-Host": junk(8192),
        "X-Forwarded-For": f"{forwarded}, 198.51.100.7",
    }


def serve(handler: WSGIHandler, env: dict[str, Any]) -> int:
    status: list[str] = []
    body = handler(env, lambda s, h, exc_info=None: status.append(s))
    try:
        b"".join(body)
    finally:
        body.close()  # type: ignore[attr-defined]
    return int(status[0].split()[0])


@pytest.fixture
def handler(segment_settings: Any, redis_settings: dict[str, Any]) -> WSGIHandler:
    # A real Redis queue, forwarded addresses believed: every cache is on the path.
    segment_settings(**redis_settings, TRUSTED_PROXIES=1)
    return WSGIHandler()


# The WSGI handler closes stale database connections at each request's start: a test run
# after one that opened a connection would otherwise be refused database access.
@pytest.mark.django_db
def test_a_flood_of_random_8kb_headers_does_not_grow_the_process(handler):
    for _ in range(300):  # warm-up: imports, connections, Django's own caches, the heap
        assert serve(handler, environ(hostile())) == 200
    gc.collect()
    before = resident()
    for _ in range(REQUESTS):
        # Made one at a time: each request's memory is free for the next, as in a server.
        assert serve(handler, environ(hostile())) == 200
    gc.collect()
    grown = resident() - before
    assert grown < BOUND, f"{REQUESTS} hostile requests grew the process by {grown / 2**20:.1f} MiB"
