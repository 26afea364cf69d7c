"""The anonymous id cookie (read, minted, never overwritten), opt-out, and the user id."""

from __future__ import annotations

import re
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import segment_mw
from segment_mw import metrics
from segment_mw.asgi import SegmentMiddleware, user_id_from_scope
from segment_mw.errors import ConfigurationError

from .conftest import HTML, NAVIGATION

UUID4 = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
COOKIE = re.compile(
    rf"ajs_anonymous_id=(?P<id>{UUID4}); "
    r"expires=\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT; Max-Age=31536000; Path=/; "
    r"SameSite=Lax(?P<rest>.*)"
)


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(HTML)


async def page_with_track(request: Request) -> HTMLResponse:
    segment_mw.track("Page Rendered")
    return HTMLResponse(HTML)


async def page_setting_cookies(request: Request) -> HTMLResponse:
    response = HTMLResponse(HTML)
    response.set_cookie("sessionid", "abc")
    if request.query_params.get("own"):
        response.set_cookie("ajs_anonymous_id", "set-by-the-app")
    return response


def make_app(*, middleware: list[Middleware] | None = None, **options: Any) -> Starlette:
    return Starlette(
        routes=[
            Route("/", page),
            Route("/track", page_with_track),
            Route("/cookies", page_setting_cookies),
        ],
        middleware=middleware or [Middleware(SegmentMiddleware, **options)],
    )


def get(app: Starlette, url: str = "/", cookies: str | None = None, **headers: str) -> Any:
    sent = {**NAVIGATION, **headers}
    if cookies is not None:
        sent["cookie"] = cookies
    with TestClient(app) as http:
        response = http.get(url, headers=sent)
    assert response.status_code == 200
    return response


@pytest.mark.parametrize(
    "cookie",
    [
        "ajs_anonymous_id=5206-6f9c-browser",  # analytics.js 2.0: the raw id
        "ajs_anonymous_id=%225206-6f9c-browser%22",  # classic: URL-encoded JSON string
        'ajs_anonymous_id="5206-6f9c-browser"',
        "other=1; ajs_anonymous_id=5206-6f9c-browser; more=2",
    ],
)
def test_the_browser_anonymous_id_is_reused(segment_events, cookie):
    response = get(make_app(), cookies=cookie)
    assert "set-cookie" not in response.headers  # never overwritten
    [event] = segment_events.of_type("page")
    assert event["anonymousId"] == "5206-6f9c-browser"


def test_the_ajs_user_id_cookie_is_not_a_user_id(segment_events):
    # Any visitor can write it: their "Order Completed" must not land on user 12345.
    get(make_app(), "/track", cookies="ajs_anonymous_id=anon-1; ajs_user_id=%2212345%22")
    assert [e.get("userId") for e in segment_events] == [None, None]
    assert [e["anonymousId"] for e in segment_events] == ["anon-1", "anon-1"]


def test_reading_the_cookie_is_an_opt_in_for_pageviews_only(configure, segment_events):
    configure(USER_ID_FROM_COOKIE=True)
    get(make_app(), "/track", cookies="ajs_anonymous_id=anon-1; ajs_user_id=%22user-42%22")
    track, page = segment_events
    assert page["userId"] == "user-42"
    assert "userId" not in track


def test_a_new_anonymous_id_is_minted_and_set_in_the_analytics_js_format(segment_events):
    response = get(make_app())
    [cookie] = response.headers.get_list("set-cookie")
    match = COOKIE.fullmatch(cookie)
    assert match, cookie
    assert match["rest"] == ""
    [event] = segment_events.of_type("page")
    assert event["anonymousId"] == match["id"]


def test_the_minted_id_is_the_id_of_every_event_of_the_request(segment_events):
    response = get(make_app(), "/track")
    minted = COOKIE.fullmatch(response.headers["set-cookie"])["id"]
    assert [e["anonymousId"] for e in segment_events] == [minted, minted]
    assert [e["type"] for e in segment_events] == ["track", "page"]


def test_cookie_domain_and_secure(configure, segment_events):
    configure(COOKIE_DOMAIN=".example.com", COOKIE_SECURE=True)
    match = COOKIE.fullmatch(get(make_app()).headers["set-cookie"])
    assert match["rest"] == "; Domain=.example.com; Secure"


def test_no_cookie_when_set_cookie_is_off(configure, segment_events):
    configure(SET_COOKIE=False)
    response = get(make_app())
    assert "set-cookie" not in response.headers
    assert segment_events.of_type("page")[0]["anonymousId"]  # still identified


def test_no_cookie_on_excluded_paths(configure, segment_events):
    configure(PAGEVIEWS={"EXCLUDE_PATHS": [r"^/track$"]})
    app = make_app(exclude_paths=(r"^/cookies$",))
    assert "set-cookie" not in get(app, "/track").headers
    cookies = get(app, "/cookies").headers.get_list("set-cookie")
    assert [c.split("=", 1)[0] for c in cookies] == ["sessionid"]
    assert COOKIE.fullmatch(get(app, "/").headers["set-cookie"])


def test_the_app_cookies_are_kept(segment_events):
    cookies = get(make_app(), "/cookies").headers.get_list("set-cookie")
    assert len(cookies) == 2
    assert cookies[0].startswith("sessionid=abc")
    assert COOKIE.fullmatch(cookies[1])


def test_an_anonymous_id_the_app_set_is_never_overwritten(segment_events):
    cookies = get(make_app(), "/cookies?own=1").headers.get_list("set-cookie")
    assert [c.split(";")[0] for c in cookies] == [
        "sessionid=abc",
        "ajs_anonymous_id=set-by-the-app",
    ]


def test_global_privacy_control_means_no_cookie_and_no_events(segment_events):
    response = get(make_app(), "/track", **{"sec-gpc": "1"})
    assert "set-cookie" not in response.headers
    assert response.text == HTML
    assert list(segment_events) == []
    assert metrics.counts()["opted_out"] == 1  # the endpoint's track() was not queued


def test_gpc_can_be_ignored_when_configured(configure, segment_events):
    configure(RESPECT_GPC=False)
    get(make_app(), **{"sec-gpc": "1"})
    assert len(segment_events.of_type("page")) == 1


def test_consent_callable_sees_the_request(configure, segment_events):
    configure(CONSENT=lambda info: info.cookies.get("consent") == "yes")
    get(make_app(), cookies="consent=no")
    assert list(segment_events) == []
    get(make_app(), cookies="consent=yes")
    assert len(segment_events.of_type("page")) == 1


# -- user id -------------------------------------------------------------------------------
class HeaderAuth(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        name = conn.headers.get("x-user")
        return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None


@pytest.mark.parametrize("segment_inside_auth", [True, False])
def test_user_id_from_the_authentication_middleware(segment_events, segment_inside_auth):
    auth = Middleware(AuthenticationMiddleware, backend=HeaderAuth())
    segment = Middleware(SegmentMiddleware)
    # Starlette's list runs outermost first: either order must find the user.
    stack = [auth, segment] if segment_inside_auth else [segment, auth]
    get(make_app(middleware=stack), "/track", **{"x-user": "alice"})
    track, pageview = segment_events
    # scope["user"] is read when each event is built, so either order sees it.
    assert track["userId"] == pageview["userId"] == "alice"


def test_an_unauthenticated_user_has_no_user_id(segment_events):
    stack = [
        Middleware(AuthenticationMiddleware, backend=HeaderAuth()),
        Middleware(SegmentMiddleware),
    ]
    get(make_app(middleware=stack))
    assert "userId" not in segment_events.of_type("page")[0]


def test_user_id_resolver_argument(segment_events):
    get(
        make_app(user_id=lambda scope: dict(scope["headers"]).get(b"x-account", b"").decode()),
        **{"x-account": "acct-7"},
    )
    assert segment_events.of_type("page")[0]["userId"] == "acct-7"


def test_user_id_setting_is_called_with_the_scope(configure, segment_events):
    seen = []

    def resolve(scope: Any) -> int:
        seen.append(scope["type"])
        return 1234

    configure(USER_ID=resolve)
    get(make_app())
    assert segment_events.of_type("page")[0]["userId"] == "1234"
    assert seen == ["http"]


def test_a_failing_resolver_is_logged_and_counted(segment_events, caplog):
    def resolve(scope: Any) -> str:
        raise LookupError("no database")

    response = get(make_app(user_id=resolve))
    assert response.text == HTML
    assert "userId" not in segment_events.of_type("page")[0]
    assert metrics.counts()["middleware_error"] >= 1
    assert any(r.name == "segment_mw.asgi" for r in caplog.records)


class Obj:
    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)


class NoIdentity:
    is_authenticated = True
    id = 99

    @property
    def identity(self) -> str:
        raise NotImplementedError


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        (None, None),
        (SimpleUser("bob"), "bob"),
        (Obj(is_authenticated=True, id=7, username="x"), "7"),
        (Obj(is_authenticated=True, username="carol"), "carol"),
        (Obj(is_authenticated=False, id=7), None),
        (Obj(is_authenticated=lambda: True, identity="dave"), "dave"),
        (NoIdentity(), "99"),
        (Obj(id=7), None),
    ],
)
def test_user_id_from_scope(user, expected):
    scope = {} if user is None else {"user": user}
    assert user_id_from_scope(scope) == expected


def test_an_async_resolver_argument_is_refused():
    async def resolve(scope: Any) -> str:
        return "u"

    with pytest.raises(ConfigurationError, match="user_id"):
        SegmentMiddleware(page, user_id=resolve)


def test_an_async_user_id_setting_is_counted_not_awaited(configure, segment_events, recwarn):
    async def resolve(scope: Any) -> str:
        return "u"

    configure(USER_ID=resolve)
    assert get(make_app()).text == HTML
    assert "userId" not in segment_events.of_type("page")[0]
    assert metrics.counts()["middleware_error"] >= 1
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


def test_a_resolver_returning_an_object_gives_no_user_id(segment_events):
    get(make_app(user_id=lambda scope: object()))
    assert "userId" not in segment_events.of_type("page")[0]


def test_an_unreadable_browser_cookie_is_not_overwritten(segment_events):
    response = get(make_app(), cookies="ajs_anonymous_id=has spaces and is not an id")
    assert "set-cookie" not in response.headers
    assert segment_events.of_type("page")[0]["anonymousId"]  # identified for this request


def test_crawlers_get_no_cookie():
    response = get(make_app(), **{"user-agent": "Mozilla/5.0 (compatible; bingbot/2.0)"})
    assert "set-cookie" not in response.headers
