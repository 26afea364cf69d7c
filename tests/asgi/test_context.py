"""Each context field of a pageview, taken from the ASGI scope as the Django middleware does."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from segment_mw import metrics
from segment_mw.asgi import SegmentMiddleware, request_info

from ..starlette_versions import from_client
from .conftest import BROWSER_UA, HTML, NAVIGATION, call_asgi, http_scope


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(HTML)


def make_app(**options: Any) -> Starlette:
    app = Starlette(routes=[Route("/{rest:path}", page, name="page")])
    app.add_middleware(SegmentMiddleware, **options)
    return app


def visit(
    segment_events: Any,
    url: str = "/",
    *,
    headers: dict[str, str] | None = None,
    client: tuple[str, int] = ("198.51.100.7", 4321),
    root_path: str = "",
) -> dict[str, Any]:
    with TestClient(from_client(make_app(), client), root_path=root_path) as http:
        response = http.get(url, headers={**NAVIGATION, **(headers or {})})
    assert response.status_code == 200
    assert response.text == HTML
    pages = segment_events.of_type("page")
    assert len(pages) == 1, pages
    return pages[0]


def test_ip_is_the_scope_client(segment_events):
    assert visit(segment_events)["context"]["ip"] == "198.51.100.7"


def test_x_forwarded_for_is_ignored_without_trusted_proxies(segment_events):
    event = visit(segment_events, headers={"x-forwarded-for": "203.0.113.9"})
    assert event["context"]["ip"] == "198.51.100.7"


@pytest.mark.parametrize("trusted", [["198.51.100.0/24"], 1])
def test_x_forwarded_for_is_honoured_from_trusted_proxies(configure, segment_events, trusted):
    configure(TRUSTED_PROXIES=trusted)
    event = visit(segment_events, headers={"x-forwarded-for": "203.0.113.9"})
    assert event["context"]["ip"] == "203.0.113.9"


def test_ip_settings_apply(configure, segment_events):
    configure(IP="anonymize")
    assert visit(segment_events)["context"]["ip"] == "198.51.100.0"


async def test_no_ip_without_a_client(segment_events):
    exchange = await call_asgi(make_app(), http_scope(client=None))
    assert exchange.status == 200
    assert "ip" not in segment_events.of_type("page")[0]["context"]


def test_user_agent_and_client_hints(segment_events):
    event = visit(
        segment_events,
        headers={
            "sec-ch-ua": '"Chromium";v="124", "Google Chrome";v="124", "Not-A.Brand";v="99"',
            "sec-ch-ua-mobile": "?0",
            "sec-ch-ua-platform": '"macOS"',
        },
    )
    context = event["context"]
    assert context["userAgent"] == BROWSER_UA
    assert context["userAgentData"] == {
        "brands": [
            {"brand": "Chromium", "version": "124"},
            {"brand": "Google Chrome", "version": "124"},
            {"brand": "Not-A.Brand", "version": "99"},
        ],
        "mobile": False,
        "platform": "macOS",
    }


def test_no_user_agent_data_without_client_hints(segment_events):
    assert "userAgentData" not in visit(segment_events)["context"]


def test_locale_from_accept_language(segment_events):
    event = visit(segment_events, headers={"accept-language": "fr-ca,fr;q=0.9,en;q=0.8"})
    assert event["context"]["locale"] == "fr-CA"


def test_page_fields(segment_events):
    event = visit(
        segment_events,
        "/shop/shoes?color=red",
        headers={"referer": "https://search.example/?q=shoes"},
    )
    expected = {
        "path": "/shop/shoes",
        "referrer": "https://search.example/?q=shoes",
        "search": "?color=red",
        "title": "Home",
        "url": "http://testserver/shop/shoes?color=red",
    }
    assert event["context"]["page"] == expected
    assert event["properties"] == expected
    assert event["type"] == "page"
    assert event["channel"] == "server"


def test_root_path_inside_path(segment_events):
    # Starlette's TestClient, like current servers, puts root_path inside path.
    event = visit(segment_events, "/app/items", root_path="/app")
    assert event["properties"]["path"] == "/app/items"
    assert event["properties"]["url"] == "http://testserver/app/items"


async def test_root_path_outside_path(segment_events):
    # Older servers gave the path below root_path; the page is still the full one.
    app = SegmentMiddleware(_bare_html)
    exchange = await call_asgi(app, http_scope("/items", root_path="/app", query_string=b"a=1"))
    assert exchange.status == 200
    page_props = segment_events.of_type("page")[0]["properties"]
    assert page_props["path"] == "/app/items"
    assert page_props["url"] == "https://example.com/app/items?a=1"


def test_campaign_from_utm_parameters(segment_events):
    event = visit(
        segment_events,
        "/?utm_source=newsletter&utm_medium=email&utm_campaign=spring%20sale&utm_term=red+shoes"
        "&utm_content=banner&other=1",
    )
    assert event["context"]["campaign"] == {
        "source": "newsletter",
        "medium": "email",
        "name": "spring sale",
        "term": "red shoes",
        "content": "banner",
    }


@pytest.mark.parametrize(
    ("path", "referrer", "secrets"),
    [
        (
            "/reset?token=s3cr3t&step=2",
            "https://user:pw@mail.example/inbox?password=hunter2&tab=1",
            (b"s3cr3t", b"hunter2", b"user:pw"),
        ),
        # A secret after a second "?" is a parameter of its own here.
        (
            "/reset?step=2?token=s3cr3t",
            "https://mail.example/inbox?tab=1?password=hunter2",
            (b"s3cr3t", b"hunter2"),
        ),
    ],
)
def test_secrets_are_scrubbed_from_query_and_referrer(segment_events, path, referrer, secrets):
    event = visit(segment_events, path, headers={"referer": referrer})
    page_fields = event["context"]["page"]
    assert page_fields["search"] == "?step=2"
    assert page_fields["url"] == "http://testserver/reset?step=2"
    assert page_fields["referrer"] == "https://mail.example/inbox?tab=1"
    raw = segment_events.entries[0].body
    for secret in secrets:
        assert secret not in raw


def test_authorization_and_cookie_are_never_captured(segment_events):
    visit(
        segment_events,
        headers={
            "authorization": "Bearer top-secret-token",
            "cookie": "sessionid=session-secret; ajs_anonymous_id=anon-1",
        },
    )
    raw = segment_events.entries[0].body
    assert b"top-secret-token" not in raw
    assert b"session-secret" not in raw
    assert b"Bearer" not in raw


async def _bare_html(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/html; charset=utf-8")],
        }
    )
    await send({"type": "http.response.body", "body": HTML.encode()})


async def test_malformed_header_bytes_never_raise(segment_events):
    headers = [
        (b"host", b"\xff\xfe.example"),
        (b"user-agent", BROWSER_UA.encode() + b" \xff\xc3\x28"),
        (b"accept-language", b"\x80\x81,\xe9"),
        (b"referer", b"https://\xff\xfe/\xc3?token=\x00"),
        (b"cookie", b"ajs_anonymous_id=\xe9\xff; \xff=\xfe; novalue"),
        (b"sec-ch-ua", b'"\xff";v="\xfe"'),
        (b"x-forwarded-for", b"\xff\xfe, 1.2.3"),
        (b"\xff\xfe-odd-name", b"caf\xc3\xa9"),
        (b"sec-fetch-mode", b"navigate"),
    ]
    exchange = await call_asgi(SegmentMiddleware(_bare_html), http_scope(headers=headers))
    assert exchange.status == 200
    assert exchange.body == HTML.encode()
    assert metrics.counts().get("middleware_error", 0) == 0
    [event] = segment_events.of_type("page")
    assert event["context"]["userAgent"].startswith(BROWSER_UA)
    assert event["properties"]["url"].startswith("https://example.com/")  # junk Host ignored
    assert event["anonymousId"]  # the garbled cookie was not an id: a new one was minted


async def _html_with_unusual_header_names(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (bytearray(b"Content-Type"), b"text/html; charset=utf-8"),
                ("Cache-Control", "no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": HTML.encode()})


async def test_response_header_names_of_any_type_are_read(segment_events):
    app = SegmentMiddleware(_html_with_unusual_header_names)
    exchange = await call_asgi(app, http_scope())
    assert exchange.status == 200
    assert metrics.counts().get("middleware_error", 0) == 0
    [event] = segment_events.of_type("page")  # the HTML content type was recognised
    assert event["type"] == "page"


def test_request_info_decodes_and_joins_headers():
    info = request_info(
        http_scope(
            headers=[
                (b"Host", b"example.com:8443"),
                (b"Accept", b"text/html"),
                (b"accept", b"*/*"),
                (b"cookie", b"a=1"),
                (b"Cookie", b"ajs_anonymous_id=x; b=2"),
                (b"user-agent", b"caf\xe9"),
                (b"authorization", b"Bearer secret-token"),
            ],
            query_string=b"q=%C3%A9",
        )
    )
    assert info.host == "example.com:8443"
    assert info.headers["accept"] == "text/html, */*"
    # Credentials never reach the core: cookies are parsed, the raw headers are dropped.
    assert "cookie" not in info.headers
    assert "authorization" not in info.headers
    assert info.cookies == {"a": "1", "ajs_anonymous_id": "x", "b": "2"}
    assert "secret-token" not in repr(info)
    assert "ajs_anonymous_id" in repr(info)  # names, not values
    assert "=x" not in repr(info)
    assert info.headers["user-agent"] == "caf\xe9"
    assert info.query_string == "q=%C3%A9"
    assert info.peer == "203.0.113.5"
    assert info.scheme == "https"
    assert info.method == "GET"


def test_request_info_reads_header_names_of_any_type_a_server_sends():
    # Servers send lower-case bytes; others send str or buffers, in any case.
    info = request_info(
        http_scope(
            headers=[
                (bytearray(b"User-Agent"), b"agent/1"),
                ("Accept-Language", "de-DE"),
                (memoryview(b"referer"), memoryview(b"https://ref.example/")),
                (b"X-Custom", b"1"),
            ]
        )
    )
    assert info.headers["user-agent"] == "agent/1"
    assert info.headers["accept-language"] == "de-DE"
    assert info.headers["referer"] == "https://ref.example/"
    assert info.headers["x-custom"] == "1"


def test_request_info_host_falls_back_to_the_server():
    scope = http_scope(headers=[])
    assert request_info(scope).host == "example.com"
    scope["server"] = ("::1", 8000)
    scope["scheme"] = "http"
    assert request_info(scope).host == "[::1]:8000"


def test_the_ga_cookies_give_the_browsers_ga4_client_and_session(segment_events):
    cookie = "_ga=GA1.1.1234567890.1700000000; _ga_ABC123DEF4=GS1.1.1700000500.3.1.1700000600.0.0.0"
    event = visit(segment_events, headers={"cookie": cookie})
    assert event["context"]["googleAnalytics"] == {
        "clientId": "1234567890.1700000000",
        "sessionIds": {"ABC123DEF4": "1700000500"},
    }
