"""userId: from the user the app loaded (never loading it ourselves), a USER_ID callable,
or the ``ajs_user_id`` cookie; and no ``Vary: Cookie`` from the middleware."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from segment_mw import metrics

pytestmark = pytest.mark.django_db


@pytest.fixture
def user():
    return User.objects.create_user("ada", password="pw")


def vary(response):
    return response.headers.get("Vary", "")


def test_user_id_from_the_ajs_user_id_cookie(browser, segment_events):
    browser.client.cookies["ajs_user_id"] = "%22u-42%22"
    browser.get("/")
    [event] = segment_events.of_type("page")
    assert event["userId"] == "u-42"
    assert event["anonymousId"]


def test_user_id_of_the_logged_in_user_when_the_view_loads_it(browser, user, segment_events):
    browser.force_login(user)
    response = browser.get("/whoami/")
    assert b"Hello ada" in response.content
    [event] = segment_events.of_type("page")
    assert event["userId"] == str(user.pk)
    assert event["anonymousId"] == response.cookies["ajs_anonymous_id"].value
    assert "Cookie" in vary(response)  # the view read the session itself


def test_the_user_wins_over_the_ajs_user_id_cookie(browser, user, segment_events):
    browser.force_login(user)
    browser.client.cookies["ajs_user_id"] = "someone-else"
    browser.get("/whoami/")
    assert segment_events.of_type("page")[0]["userId"] == str(user.pk)


def test_the_middleware_never_loads_the_user_so_adds_no_vary_cookie(browser, user, segment_events):
    browser.force_login(user)
    response = browser.get("/")
    assert response.status_code == 200
    assert "Cookie" not in vary(response)
    [event] = segment_events.of_type("page")
    assert "userId" not in event  # the page never asked who the user is
    assert event["anonymousId"]


def test_user_id_from_a_session_the_view_read_anyway(browser, user, segment_events):
    browser.force_login(user)
    response = browser.get("/session/")
    assert "Cookie" in vary(response)
    assert segment_events.of_type("page")[0]["userId"] == str(user.pk)


def test_track_in_a_view_gets_the_user_once_loaded(browser, user, segment_events):
    browser.force_login(user)
    browser.get("/track/", headers={"Sec-Fetch-Mode": "cors"})
    browser.get("/track/?load_user=1", headers={"Sec-Fetch-Mode": "cors"})
    first, second = segment_events
    assert "userId" not in first
    assert second["userId"] == str(user.pk)
    assert first["anonymousId"] == second["anonymousId"]


def test_async_view_user_from_auser(browser, user, segment_events):
    browser.force_login(user)
    browser.get("/async/track/", headers={"Sec-Fetch-Mode": "cors"})
    [event] = segment_events
    assert event["properties"] == {"user": "ada"}
    assert event["userId"] == str(user.pk)


def test_anonymous_user_falls_back_to_the_cookie(browser, segment_events):
    browser.client.cookies["ajs_user_id"] = "u-7"
    browser.get("/whoami/")
    assert segment_events.of_type("page")[0]["userId"] == "u-7"


def user_id_from_header(request):
    return request.headers.get("X-Account") or None


async def async_user_id_from_header(request):
    return request.headers.get("X-Account") or None


def failing_user_id(request):
    raise LookupError("no account service")


@pytest.mark.parametrize(
    "resolver",
    [
        user_id_from_header,
        async_user_id_from_header,
        "tests.django.test_identity.user_id_from_header",
    ],
    ids=["callable", "async callable", "dotted path"],
)
def test_user_id_callable(make_browser, segment_settings, segment_events, resolver):
    segment_settings(USER_ID=resolver)
    make_browser().get("/", headers={"X-Account": "acct-9"})
    assert segment_events.of_type("page")[0]["userId"] == "acct-9"


def test_a_failing_user_id_callable_is_counted_not_raised(
    make_browser, segment_settings, segment_events
):
    segment_settings(USER_ID=failing_user_id)
    browser = make_browser()
    browser.client.cookies["ajs_user_id"] = "from-cookie"
    response = browser.get("/")
    assert response.status_code == 200
    assert segment_events.of_type("page")[0]["userId"] == "from-cookie"
    assert metrics.counts()["user_id_failed"] == 1
