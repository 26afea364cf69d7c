"""Identity and context carried into Celery tasks run by a real worker (solo pool, in a
thread of its own, so the task sees only what travelled in the message headers)."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult

import segment_mw
import segment_mw.celery
from segment_mw import Scope, metrics

from . import tasks

TIMEOUT = 30

BROWSER_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0"


def scope(user_id: str | None, anonymous_id: str, ip: str) -> Scope:
    return Scope(
        user_id=user_id,
        anonymous_id=anonymous_id,
        context={
            "ip": ip,
            "userAgent": BROWSER_UA,
            "page": {"path": "/pay", "url": "https://shop.example/pay?utm_source=mail"},
            "campaign": {"source": "mail"},
        },
    )


def seen(scope: Scope) -> dict[str, Any]:
    return {"user_id": scope.user_id, "anonymous_id": scope.anonymous_id, "context": scope.context}


def test_a_task_runs_with_the_scope_it_was_sent_from(worker_app, segment_events):
    request = scope("u1", "anon-1", "203.0.113.1")
    with segment_mw.bound(request):
        result = tasks.bill.delay("inv-1")
    assert result.get(timeout=TIMEOUT) == seen(request)
    [event] = segment_events
    assert event["event"] == "Invoice Billed"
    assert event["userId"] == "u1"
    assert event["anonymousId"] == "anon-1"
    assert event["properties"] == {"invoice": "inv-1"}
    assert {k: event["context"][k] for k in ("ip", "userAgent", "page", "campaign")} == dict(
        request.context
    )


def test_back_to_back_tasks_do_not_share_context(worker_app, segment_events):
    first, third = scope("u1", "anon-1", "203.0.113.1"), scope(None, "anon-3", "203.0.113.3")
    with segment_mw.bound(first):
        a = tasks.bill.delay("inv-a")
    b = tasks.bill.delay("inv-b")  # sent with no scope bound: a billing job, say
    with segment_mw.bound(third):
        c = tasks.bill.delay("inv-c")
    d = tasks.bill.delay("inv-d")
    assert a.get(timeout=TIMEOUT) == seen(first)
    assert b.get(timeout=TIMEOUT) is None
    assert c.get(timeout=TIMEOUT) == seen(third)
    assert d.get(timeout=TIMEOUT) is None
    assert [
        (e["properties"]["invoice"], e.get("userId"), e["anonymousId"]) for e in segment_events
    ] == [
        ("inv-a", "u1", "anon-1"),
        ("inv-c", None, "anon-3"),
    ]
    assert metrics.counts().get("no_identity") == 2  # inv-b and inv-d, not sent


def test_resolvers_give_the_identity_of_a_task_sent_without_scope(worker_app, segment_events):
    assert tasks.charge.delay("cust-9", 250).get(timeout=TIMEOUT) == "ch_cust-9_250"
    [event] = segment_events
    assert event["userId"] == "cust-9"
    assert event["properties"] == {"amount": 250, "charge_id": "ch_cust-9_250"}
    assert "ip" not in event["context"]


def test_a_failing_task_reports_the_failure_and_still_fails(worker_app, segment_events):
    result = tasks.decline.delay("cust-1")
    with pytest.raises(tasks.CardDeclined, match="card of cust-1 declined"):
        result.get(timeout=TIMEOUT)
    assert result.state == "FAILURE"
    [event] = segment_events
    assert event["event"] == "Charge Failed"
    assert event["userId"] == "cust-1"
    assert event["properties"] == {"error_type": "CardDeclined"}


def test_a_bound_task_passes_itself_to_the_callables(worker_app, segment_events):
    result = tasks.bound.delay("cust-2")
    task_id = result.get(timeout=TIMEOUT)
    assert task_id == result.id
    assert segment_events[0]["userId"] == "cust-2"
    assert segment_events[0]["properties"] == {"task_id": result.id}


def session_cookie(user_id: str) -> str:
    """A signed-cookie session of a user logged in with ``user_id`` (no database needed)."""
    from django.contrib.auth import BACKEND_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.signed_cookies import SessionStore

    store = SessionStore()
    store[SESSION_KEY] = user_id
    store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    store.save()
    return str(store.session_key)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_from_a_django_view_through_the_queue_to_a_destination(
    worker_app, configure, redis_settings, sink, segment_events, mode
):
    from asgiref.sync import async_to_sync
    from django.conf import settings as django_settings
    from django.test import AsyncClient, Client, override_settings

    configure(
        **redis_settings,
        DESTINATIONS={"hook": {"type": "http", "url": sink.url}},
        FLUSH_DELAY=0,
        TRUSTED_PROXIES=["127.0.0.0/8"],  # the test clients' own address
    )
    url = "/checkout/?invoice=inv-dj&utm_source=news&utm_campaign=spring"
    headers = {"User-Agent": BROWSER_UA, "X-Forwarded-For": "198.51.100.20"}
    # Under the ASGI handler the sync view runs in a thread: the scope must follow it there.
    # The view never looks at request.user: the user comes from the session.
    with override_settings(
        ROOT_URLCONF="tests.tracked.urls",
        SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "segment_mw.django.SegmentMiddleware",
        ],
        ALLOWED_HOSTS=["testserver"],
    ):
        client = AsyncClient() if mode == "async" else Client()
        client.cookies["ajs_anonymous_id"] = "anon-dj"
        client.cookies["ajs_user_id"] = "someone-else"  # browser-written: never trusted
        client.cookies[django_settings.SESSION_COOKIE_NAME] = session_cookie("u-dj")
        if mode == "async":
            response = async_to_sync(client.get)(url, headers=headers)
        else:
            response = client.get(url, headers=headers)
    assert response.status_code == 200
    assert "Cookie" not in response.headers.get("Vary", "")
    seen_in_task = AsyncResult(response.json()["task_id"], app=worker_app).get(timeout=TIMEOUT)
    assert seen_in_task["user_id"] == "u-dj"
    # The worker queued the event durably in Redis and its flush delivered it.
    [event] = [e for e in sink.wait_for(1, timeout=TIMEOUT) if e["type"] == "track"]
    assert event["event"] == "Invoice Billed"
    assert event["userId"] == "u-dj"
    assert event["anonymousId"] == "anon-dj"
    assert event["properties"] == {"invoice": "inv-dj"}
    context = event["context"]
    assert context["ip"] == "198.51.100.20"
    assert context["userAgent"] == BROWSER_UA
    assert context["page"]["path"] == "/checkout/"
    assert context["campaign"] == {"source": "news", "name": "spring"}
    assert event["messageId"] == segment_events.named("Invoice Billed")[0]["messageId"]


PERSONAL = ("ip", "userAgent", "page", "campaign")


def test_a_task_about_another_user_takes_nothing_of_the_senders_request(worker_app, segment_events):
    staff = scope("staff-1", "anon-staff", "203.0.113.7")
    staff.opted_out = True  # the staff member's browser sends Sec-GPC: 1
    with segment_mw.bound(staff):
        other = tasks.charge.delay("cust-77", 100)  # a charge made for a customer
        own = tasks.charge.delay("staff-1", 5)  # the staff member's own purchase
    assert other.get(timeout=TIMEOUT) == "ch_cust-77_100"
    assert own.get(timeout=TIMEOUT) == "ch_staff-1_5"
    [event] = segment_events  # the staff's own one honours their opt-out
    assert event["userId"] == "cust-77"
    assert "anonymousId" not in event
    assert not any(key in event["context"] for key in PERSONAL)
    assert metrics.counts()["opted_out"] == 1


def test_a_task_naming_the_senders_own_user_keeps_everything(worker_app, segment_events):
    customer = scope("cust-9", "anon-9", "203.0.113.9")
    with segment_mw.bound(customer):
        tasks.charge.delay("cust-9", 40).get(timeout=TIMEOUT)
    [event] = segment_events
    assert (event["userId"], event["anonymousId"]) == ("cust-9", "anon-9")
    assert {k: event["context"][k] for k in PERSONAL} == dict(customer.context)


def test_a_task_naming_a_user_from_an_anonymous_request_keeps_the_link(worker_app, segment_events):
    visitor = scope(None, "anon-guest", "203.0.113.8")  # a guest checkout creating an account
    with segment_mw.bound(visitor):
        tasks.charge.delay("cust-new", 30).get(timeout=TIMEOUT)
    [event] = segment_events
    assert (event["userId"], event["anonymousId"]) == ("cust-new", "anon-guest")
    assert event["context"]["ip"] == "203.0.113.8"


def test_set_user_in_a_task_names_the_user_of_what_follows(worker_app, segment_events):
    assert tasks.renew_for.delay("cust-5", "pro").get(timeout=TIMEOUT) == "pro"
    [event] = segment_events
    assert event["userId"] == "cust-5"
    assert event["properties"] == {"plan": "pro"}
    # The binding ended with the task: the next one, sent without scope, names nobody.
    assert tasks.bill.delay("inv-x").get(timeout=TIMEOUT) is None


def test_from_a_starlette_endpoint_to_a_task(worker_app, segment_events):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from segment_mw.asgi import SegmentMiddleware

    from ..starlette_versions import from_client

    async def checkout(request: Request) -> JSONResponse:
        result = tasks.bill.delay(request.query_params["invoice"])
        return JSONResponse({"task_id": result.id})

    app = Starlette(routes=[Route("/checkout", checkout)])
    app.add_middleware(SegmentMiddleware, user_id=lambda scope: "u-star")
    with TestClient(
        from_client(app, ("198.51.100.30", 5000)), cookies={"ajs_anonymous_id": "anon-star"}
    ) as http:
        response = http.get(
            "/checkout?invoice=inv-star&utm_source=ads&utm_medium=cpc",
            headers={"user-agent": BROWSER_UA},
        )
    assert response.status_code == 200
    seen_in_task = AsyncResult(response.json()["task_id"], app=worker_app).get(timeout=TIMEOUT)
    assert (seen_in_task["user_id"], seen_in_task["anonymous_id"]) == ("u-star", "anon-star")
    [event] = segment_events.named("Invoice Billed")
    assert event["userId"] == "u-star"
    assert event["anonymousId"] == "anon-star"
    assert event["context"]["ip"] == "198.51.100.30"
    assert event["context"]["userAgent"] == BROWSER_UA
    assert event["context"]["page"]["path"] == "/checkout"
    assert event["context"]["campaign"] == {"source": "ads", "medium": "cpc"}


def test_an_eager_task_keeps_the_callers_scope(segment_events):
    app = Celery("tracked-eager", broker="memory://", set_as_current=False)
    app.conf.task_always_eager = True
    segment_mw.celery.install(app, watchdog=False)
    segment_mw.get_client().on_kick = None  # no flushes to request: nothing is delivered here
    try:
        request = scope("u-eager", "anon-eager", "203.0.113.50")
        with segment_mw.bound(request):
            assert app.tasks["tests.tracked.bill"].apply(("inv-e",)).get() == seen(request)
            assert segment_mw.scope.current() is request
    finally:
        segment_mw.celery.uninstall()
    assert segment_events[0]["userId"] == "u-eager"
