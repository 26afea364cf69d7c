"""The pageview decision, route names and ``@pageview`` options, titles; Starlette and FastAPI."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse as FastAPIHTMLResponse
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, Router
from starlette.testclient import TestClient

from segment_mw.asgi import SegmentMiddleware
from segment_mw.errors import ConfigurationError
from segment_mw.pageviews import pageview, set_pageview

from ..starlette_versions import route_name
from .conftest import BROWSER_UA, HTML, NAVIGATION, call_asgi, http_scope


async def home(request: Request) -> HTMLResponse:
    return HTMLResponse(HTML)


async def api(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


@pageview("Checkout", category="Shop", properties={"step": 2}, integrations={"Mixpanel": False})
async def checkout(request: Request) -> HTMLResponse:
    return HTMLResponse(HTML)


@pageview(skip=True)
async def hidden(request: Request) -> HTMLResponse:
    return HTMLResponse(HTML)


@pageview("Decorated")
async def renamed(request: Request) -> HTMLResponse:
    set_pageview(name="Set In The View", properties={"variant": "b"})
    return HTMLResponse(HTML)


@pageview(skip=True)
async def unskipped(request: Request) -> HTMLResponse:
    set_pageview(skip=False)
    return HTMLResponse(HTML)


@pageview("Account", category="Settings")
class Account(HTTPEndpoint):
    async def get(self, request: Request) -> HTMLResponse:
        return HTMLResponse(HTML)


async def titled(request: Request) -> HTMLResponse:
    return HTMLResponse(
        "<html><head><TITLE lang=en>\n  Fish &amp; Chips\n  caf\u00e9 </TITLE></head></html>"
    )


async def xhtml(request: Request) -> Response:
    return Response("<html><title>X</title></html>", media_type="application/xhtml+xml")


async def not_found_html(request: Request) -> HTMLResponse:
    return HTMLResponse(HTML, status_code=404)


async def healthz(request: Request) -> HTMLResponse:
    return HTMLResponse(HTML)


def make_app(**options: Any) -> Starlette:
    app = Starlette(
        routes=[
            Route("/", home, name="home"),
            Route("/api", api, name="api"),
            Route("/form", home, methods=["GET", "POST"], name="form"),
            Route("/checkout", checkout, name="checkout"),
            Route("/hidden", hidden),
            Route("/renamed", renamed),
            Route("/unskipped", unskipped),
            Route("/account", Account, name="account"),
            Route("/titled", titled),
            Route("/xhtml", xhtml),
            Route("/missing", not_found_html),
            Route("/healthz", healthz),
            Route("/admin/{rest:path}", home, name="admin"),
            Mount("/docs", routes=[Route("/{page}", home, name="doc")], name="docs"),
        ]
    )
    app.add_middleware(SegmentMiddleware, **options)
    return app


def visit(url: str = "/", *, method: str = "GET", app: Any = None, **headers: str) -> Any:
    with TestClient(app or make_app()) as http:
        response = http.request(method, url, headers={**NAVIGATION, **headers})
    assert response.status_code in (200, 404)
    return response


def one_page(segment_events: Any) -> dict[str, Any]:
    pages = segment_events.of_type("page")
    assert len(pages) == 1, pages
    return pages[0]


def test_a_navigation_to_an_html_page_is_a_pageview(segment_events):
    visit()
    event = one_page(segment_events)
    assert event.get("name") == route_name("home")
    assert "category" not in event


@pytest.mark.parametrize(
    ("url", "method", "headers"),
    [
        pytest.param(
            "/", "GET", {"user-agent": "Googlebot/2.1 (+http://www.google.com/bot.html)"}, id="bot"
        ),
        pytest.param("/", "GET", {"user-agent": ""}, id="no user agent"),
        pytest.param("/healthz", "GET", {}, id="default excluded path"),
        pytest.param("/api", "GET", {}, id="not HTML"),
        pytest.param("/missing", "GET", {}, id="404"),
        pytest.param("/nowhere", "GET", {}, id="no route"),
        pytest.param("/form", "POST", {}, id="POST"),
        pytest.param("/", "HEAD", {}, id="HEAD"),
        pytest.param("/", "GET", {"sec-purpose": "prefetch"}, id="prefetch"),
        pytest.param("/", "GET", {"purpose": "prefetch"}, id="legacy prefetch"),
        pytest.param("/", "GET", {"sec-fetch-mode": "cors", "sec-fetch-dest": "empty"}, id="fetch"),
        pytest.param("/", "GET", {"sec-fetch-mode": "no-cors"}, id="no-cors"),
        pytest.param("/", "GET", {"x-requested-with": "XMLHttpRequest"}, id="XHR"),
        pytest.param("/", "GET", {"sec-fetch-dest": "image"}, id="not a document"),
        pytest.param("/hidden", "GET", {}, id="@pageview(skip=True)"),
    ],
)
def test_what_is_not_a_pageview(segment_events, url, method, headers):
    visit(url, method=method, **headers)
    assert segment_events.of_type("page") == []


def test_excluded_paths_setting(configure, segment_events):
    configure(PAGEVIEWS={"EXCLUDE_PATHS": [r"^/docs/"]})
    visit("/docs/intro")
    visit("/healthz")  # the setting replaces the defaults
    assert [e["properties"]["path"] for e in segment_events.of_type("page")] == ["/healthz"]


def test_excluded_paths_argument_adds_to_the_setting(segment_events):
    app = make_app(exclude_paths=[r"^/admin/"])
    visit("/admin/users", app=app)
    visit("/healthz", app=app)
    assert segment_events.of_type("page") == []
    visit("/", app=app)
    assert len(segment_events.of_type("page")) == 1


def test_a_bad_exclude_path_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="exclude_paths"):
        SegmentMiddleware(home, exclude_paths=["("])


def test_pageviews_can_be_switched_off_and_settings_apply_per_request(configure, segment_events):
    app = make_app()
    configure(PAGEVIEWS=False)
    visit(app=app)
    assert segment_events.of_type("page") == []
    configure(PAGEVIEWS={"NAME": None})
    visit(app=app)
    assert "name" not in one_page(segment_events)


def test_xhtml_is_html(segment_events):
    visit("/xhtml")
    assert one_page(segment_events)["properties"]["title"] == "X"


def test_the_route_name_of_a_mounted_route(segment_events):
    visit("/docs/intro")
    assert one_page(segment_events).get("name") == route_name("doc")


def test_pageview_decorator_options(segment_events):
    visit("/checkout")
    event = one_page(segment_events)
    assert event["name"] == "Checkout"
    assert event["category"] == "Shop"
    assert event["properties"]["step"] == 2
    assert event["properties"]["path"] == "/checkout"
    assert event["integrations"] == {"Mixpanel": False}


def test_set_pageview_in_the_view_wins_over_the_decorator(segment_events):
    visit("/renamed")
    event = one_page(segment_events)
    assert event["name"] == "Set In The View"
    assert event["properties"]["variant"] == "b"
    visit("/unskipped")
    assert len(segment_events.of_type("page")) == 2


def test_pageview_decorator_on_an_endpoint_class(segment_events):
    visit("/account")
    event = one_page(segment_events)
    assert (event["name"], event["category"]) == ("Account", "Settings")


def test_the_title_is_read_from_a_small_html_body(segment_events):
    visit("/titled")
    assert one_page(segment_events)["properties"]["title"] == "Fish & Chips café"
    assert segment_events[0]["context"]["page"]["title"] == "Fish & Chips café"


def test_no_title_when_switched_off(configure, segment_events):
    configure(PAGEVIEWS={"TITLE": False})
    visit("/titled")
    assert one_page(segment_events)["properties"]["title"] == ""


def test_no_title_from_a_compressed_body(segment_events):
    app = Starlette(routes=[Route("/", titled)])
    app.add_middleware(GZipMiddleware, minimum_size=1)
    app.add_middleware(SegmentMiddleware)  # outside GZip: it sees the compressed body
    response = visit(app=app, **{"accept-encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    assert "Fish &amp; Chips" in response.text
    assert one_page(segment_events)["properties"]["title"] == ""


# -- FastAPI, through httpx --------------------------------------------------------------
def make_fastapi(**options: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/", response_class=FastAPIHTMLResponse)
    async def index() -> str:
        return HTML

    @app.get("/orders/{order_id}", response_class=FastAPIHTMLResponse, name="order_detail")
    @pageview(category="Orders", properties={"section": "orders"})
    async def order(order_id: int) -> str:
        return f"<html><title>Order {order_id}</title></html>"

    @app.get("/items")
    async def items() -> list[int]:
        return [1, 2]

    @app.get("/sync", response_class=FastAPIHTMLResponse)
    def sync_page() -> str:
        return HTML

    app.add_middleware(SegmentMiddleware, **options)
    return app


def fastapi_client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("198.51.100.20", 5000))
    return httpx.AsyncClient(
        transport=transport, base_url="https://shop.example", headers=NAVIGATION
    )


async def test_fastapi_pageviews(segment_events):
    async with fastapi_client(make_fastapi()) as http:
        assert (await http.get("/")).status_code == 200
        assert (await http.get("/orders/12?utm_source=mail")).status_code == 200
        assert (await http.get("/items")).json() == [1, 2]
        assert (await http.get("/sync")).status_code == 200
    index, order, sync = segment_events.of_type("page")
    assert index["name"] == "index"
    assert index["context"]["ip"] == "198.51.100.20"
    assert index["properties"]["url"] == "https://shop.example/"
    assert order["name"] == "order_detail"
    assert order["category"] == "Orders"
    assert order["properties"]["section"] == "orders"
    assert order["properties"]["title"] == "Order 12"
    assert order["context"]["campaign"] == {"source": "mail"}
    assert sync["name"] == "sync_page"


async def test_fastapi_bot_is_not_a_pageview(segment_events):
    async with fastapi_client(make_fastapi()) as http:
        await http.get("/", headers={"user-agent": "python-httpx/0.28"})
    assert segment_events.of_type("page") == []


# -- a bare ASGI callable ------------------------------------------------------------------
async def test_around_a_bare_asgi_app(segment_events):
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/html")],
            }
        )
        await send({"type": "http.response.body", "body": b"<title>Bare</title>"})

    exchange = await call_asgi(SegmentMiddleware(app), http_scope("/bare"))
    assert exchange.body == b"<title>Bare</title>"
    event = one_page(segment_events)
    assert event["properties"]["title"] == "Bare"
    assert "name" not in event  # no router, no route name


async def test_around_a_starlette_router(segment_events):
    router = Router(
        routes=[Route("/", home, name="root"), Route("/text", lambda r: PlainTextResponse("x"))]
    )
    wrapped = SegmentMiddleware(router)
    await call_asgi(wrapped, http_scope("/"))
    await call_asgi(wrapped, http_scope("/text"))
    assert one_page(segment_events).get("name") == route_name("root")
    assert one_page(segment_events)["context"]["userAgent"] == BROWSER_UA
