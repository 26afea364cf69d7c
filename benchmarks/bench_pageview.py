"""Pageview capture cost per request: segment_mw's middleware vs a hand-written middleware
calling Segment's official library, both against the same bare app, in one process.

Django: a minimal in-script project (``settings.configure``) whose WSGI handler is called
directly with a realistic browser request (user agent, client hints, Accept-Language,
cookies with ``ajs_anonymous_id``, Sec-Fetch headers, a query string with UTM
parameters) — no network, no server. Three handlers differ only in ``MIDDLEWARE``:
none (bare), a hand-written middleware calling the official ``analytics.page()`` (its own
queue and consumer thread posting to a local sink in another process), and
``segment_mw.django.SegmentMiddleware`` with a Redis queue. ASGI: the same for a bare
Starlette app, called as a raw ASGI callable in an asyncio loop.

Each run times N requests *and* the work they leave behind: the official client's
``flush()`` (until its consumer thread has posted every event) and segment_mw's
``producer.drain()`` (until the buffer is in Redis). Wall time is per request; CPU time
(``time.process_time``, every thread of this process) shows the background threads'
share. Runs are interleaved across variants; figures are medians, and a per-round line
pairs each of our runs with the official run made just before it.

    .venv/bin/python benchmarks/bench_pageview.py [--requests 5000] [--runs 7]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import logging
import os
import sys
import time
import uuid
from urllib.parse import unquote

import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    REDIS_URL,
    WRITE_KEY,
    delete_prefix,
    environment,
    median,
    redis_client,
    require_official,
    running_sink,
    table,
    unique_prefix,
)

HOST = "shop.example.com"
PATH = "/products/blue-suede-shoes/"
QUERY = (
    "utm_source=newsletter&utm_medium=email&utm_campaign=spring_sale"
    "&utm_content=hero_banner&ref=homepage"
)
ANONYMOUS_ID = "0b9c3c2e-8f5d-4b0e-9a57-3f6d1c2b7e41"
USER_AGENT = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
HEADERS = {
    "host": HOST,
    "user-agent": USER_AGENT,
    "accept": (
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
        "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
    ),
    "accept-encoding": "gzip, deflate, br, zstd",
    "accept-language": "en-US,en;q=0.9,de;q=0.8",
    "cookie": (
        f"ajs_anonymous_id=%22{ANONYMOUS_ID}%22; csrftoken=Yx8Qm2Jd7kP0aZrT4vWc1nB6sE9hU3fL; "
        "sessionid=k2j3h4g5f6d7s8a9q0w1e2r3t4y5u6i7; _ga=GA1.1.1234567890.1712345678; "
        "_gid=GA1.2.987654321.1712345678"
    ),
    "referer": "https://www.google.com/",
    "sec-ch-ua": '"Chromium";v="124", "Google Chrome";v="124", "Not-A.Brand";v="99"',
    "sec-ch-ua-mobile": "?0",
    "sec-ch-ua-platform": '"macOS"',
    "sec-fetch-dest": "document",
    "sec-fetch-mode": "navigate",
    "sec-fetch-site": "cross-site",
    "sec-fetch-user": "?1",
    "upgrade-insecure-requests": "1",
}
CLIENT_IP = "203.0.113.7"
HTML = (
    b"<!doctype html><html><head><meta charset='utf-8'><title>Blue Suede Shoes &middot; "
    b"Shop</title></head><body><h1>Blue Suede Shoes</h1>"
    + b"<p>lorem ipsum</p>" * 50
    + b"</body></html>"
)

TARGET_FRACTION = 0.5

# The official library's client, shared by the hand-written middlewares below.
official_client = None


def official_page(
    anonymous_id: str | None, name: str | None, page: dict, ip: str | None, ua: str | None
):
    """What a hand-written integration does: one ``page()`` call with the basic context."""
    official_client.page(
        anonymous_id=anonymous_id or str(uuid.uuid4()),
        name=name,
        properties=page,
        context={"ip": ip, "userAgent": ua, "page": page},
    )


# -- Django --------------------------------------------------------------------------------


class OfficialSegmentMiddleware:
    """A hand-written Django middleware calling the official library's ``page()``."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (
            request.method == "GET"
            and response.status_code == 200
            and response.get("Content-Type", "").startswith("text/html")
        ):
            query = request.META.get("QUERY_STRING", "")
            page = {
                "path": request.path,
                "url": request.build_absolute_uri(),
                "search": f"?{query}" if query else "",
                "referrer": request.META.get("HTTP_REFERER", ""),
                "title": "",
            }
            match = request.resolver_match
            raw = request.COOKIES.get("ajs_anonymous_id")
            official_page(
                unquote(raw).strip('"') if raw else None,
                match.url_name if match else None,
                page,
                request.META.get("REMOTE_ADDR"),
                request.META.get("HTTP_USER_AGENT"),
            )
        return response


def product_view(request, slug):
    from django.http import HttpResponse

    return HttpResponse(HTML, content_type="text/html; charset=utf-8")


def setup_django(prefix: str, sink_url: str) -> None:
    import django
    from django.conf import settings
    from django.urls import path

    global urlpatterns
    urlpatterns = [path("products/<slug:slug>/", product_view, name="product")]
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-only",
        ALLOWED_HOSTS=[HOST],
        ROOT_URLCONF="__main__",
        INSTALLED_APPS=["segment_mw.django"],
        MIDDLEWARE=[],
        USE_TZ=True,
        SEGMENT_MW={
            "QUEUE_URL": REDIS_URL,
            "QUEUE_PREFIX": prefix,
            "DESTINATIONS": {
                "Segment": {"type": "segment", "write_key": WRITE_KEY, "host": sink_url}
            },
        },
    )
    django.setup()


def wsgi_handler(middleware: list[str]):
    from django.conf import settings
    from django.core.handlers.wsgi import WSGIHandler

    settings.MIDDLEWARE = middleware
    return WSGIHandler()


BASE_ENVIRON = {
    "REQUEST_METHOD": "GET",
    "SCRIPT_NAME": "",
    "PATH_INFO": PATH,
    "QUERY_STRING": QUERY,
    "SERVER_NAME": HOST,
    "SERVER_PORT": "443",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REMOTE_ADDR": CLIENT_IP,
    "REMOTE_PORT": "51234",
    "wsgi.version": (1, 0),
    "wsgi.url_scheme": "https",
    "wsgi.errors": sys.stderr,
    "wsgi.multithread": True,
    "wsgi.multiprocess": True,
    "wsgi.run_once": False,
    **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in HEADERS.items()},
}


def _start_response(status, headers, exc_info=None):
    return None


def run_wsgi(handler, n: int) -> None:
    base = BASE_ENVIRON
    for _ in range(n):
        environ = dict(base)
        environ["wsgi.input"] = io.BytesIO(b"")
        response = handler(environ, _start_response)
        for _chunk in response:
            pass
        response.close()  # as a WSGI server does: request_finished fires here


# -- ASGI ----------------------------------------------------------------------------------


def starlette_app():
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    async def product(request):
        return HTMLResponse(HTML)

    return Starlette(routes=[Route("/products/{slug}/", product, name="product")])


class OfficialAsgiMiddleware:
    """A hand-written pure ASGI middleware calling the official library's ``page()``."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or ())
                content_type = headers.get(b"content-type", b"").decode()
                if (
                    scope["method"] == "GET"
                    and message["status"] == 200
                    and content_type.startswith("text/html")
                ):
                    request_headers = dict(scope["headers"])
                    query = scope["query_string"].decode()
                    host = request_headers.get(b"host", b"").decode()
                    page = {
                        "path": scope["path"],
                        "url": f"{scope['scheme']}://{host}{scope['path']}"
                        + (f"?{query}" if query else ""),
                        "search": f"?{query}" if query else "",
                        "referrer": request_headers.get(b"referer", b"").decode(),
                        "title": "",
                    }
                    anonymous_id = None
                    for part in request_headers.get(b"cookie", b"").decode().split(";"):
                        key, _, value = part.strip().partition("=")
                        if key == "ajs_anonymous_id":
                            anonymous_id = unquote(value).strip('"')
                    route = scope.get("route")
                    official_page(
                        anonymous_id,
                        getattr(route, "name", None),
                        page,
                        scope["client"][0] if scope.get("client") else None,
                        request_headers.get(b"user-agent", b"").decode() or None,
                    )
            await send(message)

        await self.app(scope, receive, send_wrapper)


ASGI_HEADERS = [(k.encode(), v.encode()) for k, v in HEADERS.items()]


async def _receive():
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message):
    return None


async def _run_asgi(app, n: int) -> None:
    for _ in range(n):
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "https",
            "path": PATH,
            "raw_path": PATH.encode(),
            "query_string": QUERY.encode(),
            "root_path": "",
            "headers": list(ASGI_HEADERS),
            "client": (CLIENT_IP, 51234),
            "server": (HOST, 443),
            "state": {},
        }
        await app(scope, _receive, _send)


def run_asgi(app, n: int) -> None:
    asyncio.run(_run_asgi(app, n))


# -- the floor -----------------------------------------------------------------------------
# The work a pageview truly needs, with no framework and no library layers: read the
# headers and the cookie from the raw request, build the same event (the same context
# fields as segment_mw's), serialise it once, hand it to a buffer; the buffer is then
# pushed to Redis by pipelined XADDs (the settle step, timed too).

floor_buffer: list[bytes] = []
FLOOR_LIBRARY = {"name": "floor", "version": "0"}


def floor_event(
    headers: dict[str, str], scheme: str, path: str, query: str, ip: str | None
) -> bytes:
    anonymous_id = None
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == "ajs_anonymous_id":
            anonymous_id = unquote(value).strip('"')
    search = f"?{query}" if query else ""
    page = {
        "path": path,
        "referrer": headers.get("referer", ""),
        "search": search,
        "title": "",
        "url": f"{scheme}://{headers.get('host', '')}{path}{search}",
    }
    context: dict = {"page": page, "ip": ip, "userAgent": headers.get("user-agent")}
    brands = headers.get("sec-ch-ua")
    if brands:
        context["userAgentData"] = {
            "brands": [
                {"brand": b.split(";")[0].strip().strip('"'), "version": b.rsplit("=", 1)[-1]}
                for b in brands.split(",")
            ],
            "mobile": headers.get("sec-ch-ua-mobile") == "?1",
            "platform": headers.get("sec-ch-ua-platform", "").strip('"'),
        }
    context["locale"] = headers.get("accept-language", "").split(",")[0].split(";")[0]
    campaign = {}
    for part in query.split("&"):
        if part.startswith("utm_"):
            key, _, value = part.partition("=")
            campaign["name" if key == "utm_campaign" else key[4:]] = value
    context["campaign"] = campaign
    context["library"] = FLOOR_LIBRARY
    return orjson.dumps(
        {
            "type": "page",
            "name": "product",
            "properties": page,
            "anonymousId": anonymous_id,
            "messageId": str(uuid.uuid4()),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "context": context,
            "integrations": {},
            "channel": "server",
        }
    )


def floor_wsgi(_target, n: int) -> None:
    base = BASE_ENVIRON
    for _ in range(n):
        environ = dict(base)
        headers = {
            key[5:].lower().replace("_", "-"): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        floor_buffer.append(
            floor_event(
                headers,
                environ["wsgi.url_scheme"],
                environ["PATH_INFO"],
                environ["QUERY_STRING"],
                environ["REMOTE_ADDR"],
            )
        )


def floor_asgi(_target, n: int) -> None:
    for _ in range(n):
        scope = {"headers": list(ASGI_HEADERS), "client": (CLIENT_IP, 51234)}
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        floor_buffer.append(
            floor_event(headers, "https", PATH, QUERY.encode().decode(), scope["client"][0])
        )


def settle_floor(stream: str) -> None:
    client = redis_client()
    for start in range(0, len(floor_buffer), 1000):
        pipe = client.pipeline(transaction=False)  # type: ignore[attr-defined]
        for body in floor_buffer[start : start + 1000]:
            pipe.xadd(stream, {"e": body})
        pipe.execute()
    floor_buffer.clear()


# -- timing ----------------------------------------------------------------------------


def wait_producer_idle(timeout: float = 5.0) -> None:
    """Until the producer has pushed everything (``drain`` waits for a push in flight)."""
    import segment_mw

    producer = segment_mw.get_client().producer
    if not producer.drain(timeout, kick=False):
        raise RuntimeError(f"{producer.buffered} message(s) still buffered")


FLOOR_STREAM = ""  # set in main(): the floor's stream, under this run's prefix


def settle(kind: str) -> None:
    """Finish the work the requests left behind (included in the timing)."""
    if kind == "official":
        official_client.flush()
    elif kind == "ours":
        wait_producer_idle()
    elif kind == "floor":
        settle_floor(FLOOR_STREAM)


def timed(run, target, kind: str, n: int) -> dict[str, float]:
    gc.collect()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    run(target, n)
    wall1 = time.perf_counter()
    settle(kind)
    wall2, cpu2 = time.perf_counter(), time.process_time()
    return {
        "wall": (wall2 - wall0) / n * 1e6,
        "cpu": (cpu2 - cpu0) / n * 1e6,
        "settle": (wall2 - wall1) * 1e3,
    }


def measure(
    variants, run, n: int, runs: int, warmup: int, floor_run
) -> tuple[dict[str, dict[str, float]], dict[str, list[dict[str, float]]]]:
    """The medians per variant, and every run's figures (a round runs each variant once)."""
    runners = {kind: run for kind in variants} | {"floor": floor_run}
    targets = {kind: target for kind, (_label, target) in variants.items()} | {"floor": None}
    for kind, target in targets.items():
        runners[kind](target, warmup)
        settle(kind)
    samples: dict[str, list[dict[str, float]]] = {k: [] for k in targets}
    for _ in range(runs):
        for kind, target in targets.items():
            samples[kind].append(timed(runners[kind], target, kind, n))
    medians = {
        kind: {key: median([s[key] for s in rows]) for key in rows[0]}
        for kind, rows in samples.items()
    }
    return medians, samples


def paired(samples: dict[str, list[dict[str, float]]], measure: str) -> list[tuple[float, float]]:
    """(official, ours) µs added, per round: the two ran seconds apart, so a drift of the
    machine's speed over the minutes of a run (this VM's moves by up to 2x within the hour)
    touches both alike."""
    return [
        (official[measure] - bare[measure], ours[measure] - bare[measure])
        for bare, official, ours in zip(
            samples["bare"], samples["official"], samples["ours"], strict=True
        )
    ]


def report(title: str, variants, results, samples) -> bool:
    bare = results["bare"]
    rows = []
    for kind, (label, _target) in variants.items():
        r = results[kind]
        added = r["wall"] - bare["wall"]
        added_cpu = r["cpu"] - bare["cpu"]
        rows.append(
            [
                label,
                r["wall"],
                "-" if kind == "bare" else f"{added:+.1f}",
                r["cpu"],
                "-" if kind == "bare" else f"{added_cpu:+.1f}",
                r["settle"],
            ]
        )
    floor = results["floor"]
    rows.append(
        [
            "floor: the same event, no framework, no layers",
            floor["wall"],
            "-",
            floor["cpu"],
            "-",
            floor["settle"],
        ]
    )
    print()
    print(title)
    print(
        table(
            [
                "variant",
                "wall µs/req",
                "added µs",
                "CPU µs/req",
                "added CPU µs",
                "drain ms/run",
            ],
            rows,
        )
    )
    met = True
    for measure in ("wall", "cpu"):
        official_added = results["official"][measure] - bare[measure]
        ours_added = results["ours"][measure] - bare[measure]
        limit = official_added * TARGET_FRACTION
        met = met and ours_added <= limit
        print(
            f"target ({measure}): segment_mw adds <= half of the official library's added "
            f"cost ({ours_added:.1f} µs vs limit {limit:.1f} µs = {official_added:.1f} / 2): "
            f"{'MET' if ours_added <= limit else 'NOT MET'}"
            f" (ours/official = {ours_added / official_added:.2f})"
        )
    for measure in ("wall", "cpu"):
        pairs = paired(samples, measure)
        ratios = [ours / official for official, ours in pairs]
        print(
            f"per round ({measure}, µs added, official -> ours): "
            + ", ".join(f"{official:.0f} -> {ours:.0f}" for official, ours in pairs)
            + f"\n  ours/official {' '.join(f'{r:.2f}' for r in ratios)}; median "
            f"{median(ratios):.2f}, at most {TARGET_FRACTION} in "
            f"{sum(r <= TARGET_FRACTION for r in ratios)} of {len(ratios)} rounds"
        )
    ours_wall = results["ours"]["wall"] - bare["wall"]
    ours_cpu = results["ours"]["cpu"] - bare["cpu"]
    print(
        f"floor: segment_mw adds {ours_wall / floor['wall']:.1f}x the floor's wall time, "
        f"{ours_cpu / floor['cpu']:.1f}x its CPU (aim: <= 2x)"
    )
    return met


def main() -> None:
    global official_client
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="per run (multiple of 100)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--no-asgi", action="store_true")
    parser.add_argument("--no-django", action="store_true")
    args = parser.parse_args()
    # Keep the official consumer's batches full (100 events): no upload_interval wait.
    n = max(100, args.requests // 100 * 100)
    runs = args.runs
    logging.getLogger("segment").setLevel(logging.CRITICAL)
    require_official()
    redis = redis_client()
    prefix = unique_prefix("pageview")

    print(f"bench_pageview: {n:,} requests per run, median of {runs} interleaved runs")
    print(environment())
    with running_sink() as sink:
        from segment.analytics.client import Client

        import segment_mw

        official_client = Client(WRITE_KEY, host=sink.url, send=True, sync_mode=False)
        try:
            setup_django(prefix, sink.url)
            client = segment_mw.get_client()
            assert client.settings.queue_prefix == prefix, "SEGMENT_MW was not applied"
            variants = {
                "bare": ("bare Django view (WSGIHandler)", wsgi_handler([])),
                "official": (
                    "+ hand-written middleware, official page()",
                    wsgi_handler(["__main__.OfficialSegmentMiddleware"]),
                ),
                "ours": (
                    "+ segment_mw.django.SegmentMiddleware (Redis)",
                    wsgi_handler(["segment_mw.django.SegmentMiddleware"]),
                ),
            }
            stream = f"{prefix}:log"
            global FLOOR_STREAM
            FLOOR_STREAM = f"{prefix}:floor"
            django_met = None
            if not args.no_django:
                sent_before = sink.stats()["events"]
                results, samples = measure(
                    variants, run_wsgi, n, runs, warmup=500, floor_run=floor_wsgi
                )
                django_met = report(
                    "Django (WSGI handler called directly)", variants, results, samples
                )
                expected = 500 + n * runs
                queued = redis.xlen(stream)
                official_events = sink.wait_for(sent_before + expected)["events"] - sent_before
                print(
                    f"check: official delivered {official_events:,} page events, segment_mw "
                    f"queued {queued:,} in Redis (expected {expected:,} each)"
                )

            asgi_met = None
            asgi_available = os.path.exists(
                os.path.join(os.path.dirname(segment_mw.__file__), "asgi.py")
            )
            if not args.no_asgi and asgi_available:
                from segment_mw.asgi import SegmentMiddleware

                app = starlette_app()
                variants = {
                    "bare": ("bare Starlette app (raw ASGI)", app),
                    "official": (
                        "+ hand-written ASGI middleware, official page()",
                        OfficialAsgiMiddleware(app),
                    ),
                    "ours": ("+ segment_mw.asgi.SegmentMiddleware (Redis)", SegmentMiddleware(app)),
                }
                before = redis.xlen(stream)
                results, samples = measure(
                    variants, run_asgi, n, runs, warmup=500, floor_run=floor_asgi
                )
                asgi_met = report(
                    "ASGI (Starlette called as an ASGI callable)", variants, results, samples
                )
                print(f"check: segment_mw queued {redis.xlen(stream) - before:,} page events")
            elif not asgi_available:
                print("\n(segment_mw/asgi.py not present: ASGI variant skipped)")
        finally:
            official_client.flush()
            official_client.join()
            segment_mw.get_client().close()
            delete_prefix(prefix)
    print()
    print(
        "Notes: CPU is this process only (all its threads); Redis and the sink run in their "
        "own processes.\nThe official client posts to the sink from its consumer thread in "
        "this process; segment_mw\nhands events to Redis and leaves delivery to a worker "
        "(see bench_delivery.py)."
    )
    parts = []
    if django_met is not None:
        parts.append(f"Django target {'MET' if django_met else 'NOT MET'}")
    if asgi_met is not None:
        parts.append(f"ASGI target {'MET' if asgi_met else 'NOT MET'}")
    print("summary: " + ", ".join(parts))


urlpatterns: list = []

if __name__ == "__main__":
    main()
