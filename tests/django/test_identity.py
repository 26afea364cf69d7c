"""userId from the server's own authentication — the user the app loaded, or else the
session's, read without adding ``Vary: Cookie`` — never from the browser's ``ajs_user_id``
cookie; ``set_user``; events about someone else; and a ``USER_ID`` callable."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from segment_mw import metrics

pytestmark = pytest.mark.django_db

NOT_A_PAGE = {"Sec-Fetch-Mode": "cors"}  # a fetch: events only, no pageview
PERSONAL = ("ip", "userAgent", "userAgentData", "page", "campaign", "locale")


@pytest.fixture
def user():
    return User.objects.create_user("ada", password="pw")


def vary(response):
    return response.headers.get("Vary", "")


def test_a_logged_in_users_pageview_has_their_id_though_nothing_loaded_the_user(
    browser, user, segment_events
):
    browser.force_login(user)
    response = browser.get("/")  # the view never touches request.user or the session
    assert response.status_code == 200
    assert "Cookie" not in vary(response)  # the session was read, but not "accessed"
    [event] = segment_events.of_type("page")
    assert event["userId"] == str(user.pk)
    assert event["anonymousId"] == response.cookies["ajs_anonymous_id"].value


def test_user_id_of_the_logged_in_user_when_the_view_loads_it(browser, user, segment_events):
    browser.force_login(user)
    response = browser.get("/whoami/")
    assert b"Hello ada" in response.content
    [event] = segment_events.of_type("page")
    assert event["userId"] == str(user.pk)
    assert "Cookie" in vary(response)  # the view read the session itself


def test_track_in_a_view_has_the_user_whether_or_not_the_view_loads_it(
    browser, user, segment_events
):
    browser.force_login(user)
    browser.get("/track/", headers=NOT_A_PAGE)
    browser.get("/track/?load_user=1", headers=NOT_A_PAGE)
    first, second = segment_events
    assert first["userId"] == second["userId"] == str(user.pk)
    assert first["anonymousId"] == second["anonymousId"]


def test_an_async_view_that_never_asks_for_its_user(browser, user, segment_events):
    browser.force_login(user)
    response = browser.get("/async/plain-track/", headers=NOT_A_PAGE)
    assert response.status_code == 200
    assert "Cookie" not in vary(response)
    [event] = segment_events
    assert event["userId"] == str(user.pk)


def test_async_view_user_from_auser(browser, user, segment_events):
    browser.force_login(user)
    browser.get("/async/track/", headers=NOT_A_PAGE)
    [event] = segment_events
    assert event["properties"] == {"user": "ada"}
    assert event["userId"] == str(user.pk)


def test_logging_in_and_out_during_a_request_shows_in_what_follows(browser, user, segment_events):
    browser.post("/login-and-track/", {"username": "ada", "password": "pw"}, headers=NOT_A_PAGE)
    browser.post("/logout-and-track/", headers=NOT_A_PAGE)
    by_name = {e["event"]: e for e in segment_events.of_type("track")}
    assert "userId" not in by_name["Before Login"]
    assert by_name["After Login"]["userId"] == str(user.pk)
    assert by_name["Before Logout"]["userId"] == str(user.pk)
    assert "userId" not in by_name["After Logout"]
    # One visitor throughout: the anonymous id joins the logged-out and logged-in events.
    assert len({e["anonymousId"] for e in by_name.values()}) == 1


def test_a_user_the_view_sets_on_the_request_counts(browser, user, segment_events):
    # Django REST framework's token authentication sets request.user inside the view.
    browser.get("/token/", headers={**NOT_A_PAGE, "X-Token": "ada"})
    [event] = segment_events
    assert event["userId"] == str(user.pk)


def test_set_user_names_the_user_of_the_request(browser, segment_events):
    browser.get("/set-user/")
    track, page = segment_events
    assert track["userId"] == page["userId"] == "ext-42"
    assert track["anonymousId"] == page["anonymousId"]


# -- the ajs_user_id cookie ------------------------------------------------------------------
def test_the_ajs_user_id_cookie_is_not_a_user_id(browser, segment_events):
    browser.client.cookies["ajs_user_id"] = "%2212345%22"  # any visitor can write it
    browser.get("/track/", headers=NOT_A_PAGE)
    browser.get("/")
    assert [e.get("userId") for e in segment_events] == [None, None]


def test_the_real_user_wins_over_the_cookie(browser, user, segment_events):
    browser.force_login(user)
    browser.client.cookies["ajs_user_id"] = "someone-else"
    browser.get("/")
    assert segment_events.of_type("page")[0]["userId"] == str(user.pk)


def test_reading_the_cookie_is_an_opt_in_for_pageviews_only(
    make_browser, segment_settings, user, segment_events
):
    segment_settings(USER_ID_FROM_COOKIE=True)
    browser = make_browser()
    browser.client.cookies["ajs_user_id"] = "u-7"
    browser.get("/tracked-page/")  # a page whose view also tracks
    track, page = segment_events
    assert page["userId"] == "u-7"
    assert "userId" not in track  # a business event never takes the browser's word
    browser.force_login(user)
    browser.get("/")
    assert segment_events.of_type("page")[-1]["userId"] == str(user.pk)


# -- events about someone else ---------------------------------------------------------------
def test_staff_acting_for_customers_leaks_nothing_of_their_own(
    browser, user, segment_events, django_capture_on_commit_callbacks
):
    browser.force_login(user)
    browser.client.cookies["ajs_anonymous_id"] = "anon-staff"
    with django_capture_on_commit_callbacks(execute=True):  # @tracked waits for the commit
        browser.get(
            "/staff/?utm_source=intranet",
            headers={"Sec-GPC": "1", "X-Forwarded-For": "10.1.1.1"},
        )
    # The staff member opted out (GPC): their own report view and pageview are not sent;
    # the customers' events are, with nothing of the staff's browser or request.
    order, refund = segment_events
    assert (order["event"], order["userId"]) == ("Order Completed", "cust-77")
    assert (refund["event"], refund["userId"]) == ("Refund Issued", "cust-78")
    for event in (order, refund):
        assert "anonymousId" not in event
        assert not any(key in event["context"] for key in PERSONAL)
    assert metrics.counts()["opted_out"] == 1  # "Report Viewed", about the staff member


def test_naming_the_request_user_keeps_everything(browser, user, segment_events):
    browser.force_login(user)
    browser.get("/staff/?utm_source=intranet")
    report = segment_events.named("Report Viewed")[0]
    assert report["userId"] == str(user.pk)
    assert report["anonymousId"] == segment_events.of_type("page")[0]["anonymousId"]
    assert report["context"]["campaign"] == {"source": "intranet"}


# -- USER_ID callable ------------------------------------------------------------------------
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
    assert "userId" not in segment_events.of_type("page")[0]
    assert metrics.counts()["user_id_failed"] == 1
