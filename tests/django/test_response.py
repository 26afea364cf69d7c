"""The middleware changes a response only by adding the cookie, and never raises."""

from __future__ import annotations

import logging

import pytest
from django.contrib.auth.models import User

from segment_mw import metrics
from segment_mw.django.apps import state

from .conftest import Browser

OURS = "segment_mw.django.SegmentMiddleware"


def without_middleware(settings):
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if m != OURS]


def body(response):
    return response.getvalue() if response.streaming else response.content


def same_response(with_mw, without_mw, *, cookie_added):
    assert with_mw.status_code == without_mw.status_code
    assert list(with_mw.headers.items()) == list(without_mw.headers.items())
    assert body(with_mw) == body(without_mw)
    added = set(with_mw.cookies) - set(without_mw.cookies)
    assert added == ({"ajs_anonymous_id"} if cookie_added else set())
    for name in without_mw.cookies:
        assert with_mw.cookies[name].output() == without_mw.cookies[name].output()


@pytest.mark.parametrize(
    "path", ["/", "/stream/", "/json/", "/checkout/", "/missing/", "/boom/", "/async/"]
)
def test_response_is_byte_identical_but_for_the_cookie(mode, settings, segment_events, path):
    with_mw = Browser(mode).get(path)
    without_middleware(settings)
    without_mw = Browser(mode).get(path)
    same_response(with_mw, without_mw, cookie_added=True)
    if not with_mw.streaming:
        assert with_mw.serialize() == without_mw.serialize()


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/", "/session/", "/whoami/", "/json/"])
def test_no_vary_cookie_is_added_for_logged_in_users(mode, settings, path, segment_events):
    user = User.objects.create_user("grace", password="pw")
    browser = Browser(mode)
    browser.force_login(user)
    browser.client.cookies["ajs_anonymous_id"] = "a-1"
    with_mw = browser.get(path)
    # The user's id was read from the session for the pageview, leaving no trace.
    assert [p["userId"] for p in segment_events.of_type("page")] == (
        [] if path == "/json/" else [str(user.pk)]
    )
    without_middleware(settings)
    plain = Browser(mode)
    plain.force_login(user)
    plain.client.cookies["ajs_anonymous_id"] = "a-1"
    same_response(with_mw, plain.get(path), cookie_added=False)


def test_no_vary_cookie_for_anonymous_visitors(browser):
    response = browser.get("/")
    assert "Vary" not in response.headers


def raising_consent(info):
    raise RuntimeError("consent service down")


def test_a_failure_inside_the_middleware_is_logged_and_counted(
    make_browser, segment_settings, segment_events, caplog
):
    segment_settings(CONSENT=raising_consent)
    with caplog.at_level(logging.WARNING, logger="segment_mw.django"):
        response = make_browser().get("/")
    assert response.status_code == 200
    assert b"Home &amp; garden" in response.content
    assert "ajs_anonymous_id" not in response.cookies
    assert segment_events == []
    assert metrics.counts()["django_capture_failed"] == 1
    assert "could not capture the request" in caplog.text


def test_invalid_settings_leave_requests_untouched(make_browser, settings, segment_events, caplog):
    with caplog.at_level(logging.ERROR, logger="segment_mw.django"):
        settings.SEGMENT_MW = {"QUEUE_URL": "amqp://nope"}
    assert state.configuration_error is not None
    assert "SEGMENT_MW is invalid" in caplog.text
    response = make_browser().get("/")
    assert response.status_code == 200
    assert "ajs_anonymous_id" not in response.cookies
    assert segment_events == []


def test_settings_changes_reconfigure_the_client(settings):
    from segment_mw import get_client

    settings.SEGMENT_MW = {"QUEUE_URL": "memory://", "QUEUE_PREFIX": "changed"}
    assert get_client().settings.queue_prefix == "changed"
