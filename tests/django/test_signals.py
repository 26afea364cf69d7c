"""Login and logout events (AUTH_SIGNALS) with real django.contrib.auth."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.contrib.auth.signals import user_logged_in

pytestmark = pytest.mark.django_db


@pytest.fixture
def user():
    return User.objects.create_user("alan", password="pw")


def log_in(browser):
    return browser.post("/login/", {"username": "alan", "password": "pw"})


def test_login_and_logout_events(make_browser, segment_settings, segment_events, user):
    segment_settings(AUTH_SIGNALS=True)
    browser = make_browser()
    response = log_in(browser)
    assert response.status_code == 302
    anonymous_id = response.cookies["ajs_anonymous_id"].value
    identify, signed_in = segment_events
    assert identify["type"] == "identify"
    assert identify["userId"] == str(user.pk)
    assert identify["anonymousId"] == anonymous_id  # joins the visitor to the user
    assert signed_in["event"] == "Signed In"
    assert signed_in["userId"] == str(user.pk)
    assert signed_in["anonymousId"] == anonymous_id
    assert signed_in["context"]["page"]["path"] == "/login/"

    browser.post("/logout/")
    signed_out = segment_events[-1]
    assert signed_out["event"] == "Signed Out"
    assert signed_out["userId"] == str(user.pk)
    assert signed_out["anonymousId"] == anonymous_id


def test_off_by_default(browser, segment_events, user):
    assert log_in(browser).status_code == 302
    browser.post("/logout/")
    assert segment_events == []
    assert not any("segment_mw" in str(r[0]) for r in user_logged_in.receivers)


def test_turning_it_off_disconnects(settings, segment_settings, browser, segment_events, user):
    segment_settings(AUTH_SIGNALS=True)
    segment_settings(AUTH_SIGNALS=False)
    log_in(browser)
    assert segment_events == []


def test_opted_out_visitors_are_not_identified(
    make_browser, segment_settings, segment_events, user
):
    segment_settings(AUTH_SIGNALS=True)
    browser = make_browser()
    browser.headers["Sec-GPC"] = "1"
    assert log_in(browser).status_code == 302
    assert segment_events == []
