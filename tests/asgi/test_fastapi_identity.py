"""FastAPI apps that authenticate in a dependency name their user with ``set_user``; events
about someone else take nothing of the request; cacheable responses get no cookie.

No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations, which
name a dependency local to ``make_app``.
"""

import threading
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI, Header
from fastapi.responses import HTMLResponse
from starlette.testclient import TestClient

import segment_mw
from segment_mw.asgi import SegmentMiddleware

from .conftest import HTML, NAVIGATION

TOKENS = {"tok-ada": "user-ada", "tok-staff": "staff-1"}
PERSONAL = ("ip", "userAgent", "userAgentData", "page", "campaign", "locale")


async def async_current_user(authorization: Annotated[str | None, Header()] = None) -> str | None:
    user = TOKENS.get((authorization or "").removeprefix("Bearer "))
    if user is not None:
        segment_mw.set_user(user)
    return user


threads: list[str] = []


def sync_current_user(authorization: Annotated[str | None, Header()] = None) -> str | None:
    threads.append(threading.current_thread().name)  # FastAPI runs it in a thread pool
    user = TOKENS.get((authorization or "").removeprefix("Bearer "))
    if user is not None:
        segment_mw.set_user(user)
    return user


@segment_mw.tracked("Charge Completed", properties=lambda result, amount: {"amount": amount})
async def charge(amount: int) -> str:
    return "ch_1"


@segment_mw.tracked("Refund Issued", user_id=lambda customer: customer)
def refund(customer: str) -> None:
    return None


def make_app(dependency: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/pay", response_class=HTMLResponse)
    async def pay(user: Annotated[str | None, Depends(dependency)]) -> str:
        await charge(250)
        return HTML

    @app.get("/back-office", response_class=HTMLResponse)
    def back_office(user: Annotated[str | None, Depends(dependency)]) -> str:
        segment_mw.track("Order Completed", {"revenue": 99}, user_id="cust-77")
        refund("cust-78")
        segment_mw.identify("cust-79", {"plan": "pro"})
        return HTML

    @app.get("/cached", response_class=HTMLResponse)
    async def cached() -> HTMLResponse:
        return HTMLResponse(HTML, headers={"Cache-Control": "public, max-age=600"})

    @app.get("/private", response_class=HTMLResponse)
    async def private() -> HTMLResponse:
        return HTMLResponse(HTML, headers={"Cache-Control": "private, max-age=600"})

    app.add_middleware(SegmentMiddleware)
    return app


def get(app: FastAPI, path: str, **headers: str) -> Any:
    with TestClient(app) as http:
        response = http.get(
            path,
            headers={**NAVIGATION, "cookie": "ajs_anonymous_id=anon-1", **headers},
            params={"utm_source": "mail"},
        )
    assert response.status_code == 200
    return response


@pytest.mark.parametrize("dependency", [async_current_user, sync_current_user])
def test_set_user_in_a_dependency_reaches_the_pageview_and_tracked_calls(
    segment_events, dependency
):
    threads.clear()
    get(make_app(dependency), "/pay", authorization="Bearer tok-ada")
    track, page = segment_events
    assert (track["event"], page["type"]) == ("Charge Completed", "page")
    assert track["userId"] == page["userId"] == "user-ada"
    assert track["anonymousId"] == page["anonymousId"] == "anon-1"
    if dependency is sync_current_user:
        assert threads
        assert threads[0] != threading.current_thread().name


def test_no_token_no_user(segment_events):
    get(make_app(async_current_user), "/pay")
    assert [e.get("userId") for e in segment_events] == [None, None]


@pytest.mark.parametrize("dependency", [async_current_user, sync_current_user])
def test_events_about_customers_take_nothing_of_the_staff_request(segment_events, dependency):
    get(make_app(dependency), "/back-office", authorization="Bearer tok-staff", **{"sec-gpc": "1"})
    # The staff member opted out: no pageview of theirs; the customers' events still go.
    assert [(e["type"], e["userId"]) for e in segment_events] == [
        ("track", "cust-77"),
        ("track", "cust-78"),
        ("identify", "cust-79"),
    ]
    for event in segment_events:
        assert "anonymousId" not in event
        assert not any(key in event["context"] for key in PERSONAL)


def test_an_anonymous_request_naming_a_user_keeps_its_anonymous_id(segment_events):
    get(make_app(async_current_user), "/back-office")  # a sign-up, say
    identify = segment_events.of_type("identify")[0]
    assert (identify["userId"], identify["anonymousId"]) == ("cust-79", "anon-1")
    assert identify["context"]["campaign"] == {"source": "mail"}


def test_a_publicly_cacheable_response_gets_no_cookie(segment_events):
    app = make_app(async_current_user)
    with TestClient(app) as http:
        cached = http.get("/cached", headers=NAVIGATION)
        private = http.get("/private", headers=NAVIGATION)
    assert "ajs_anonymous_id" not in cached.headers.get("set-cookie", "")
    assert private.headers["set-cookie"].startswith("ajs_anonymous_id=")
    first, second = segment_events.of_type("page")
    assert first["anonymousId"] != second["anonymousId"]
