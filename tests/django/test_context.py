"""The request context the middleware captures, in both middleware modes."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from segment_mw import metrics
from segment_mw.identity import COOKIE_MAX_AGE

from .conftest import CHROME

ANON = "2b8c1e0e-5d1f-4c55-9b8e-0c4f6b1a9d3e"


def page_events(events):
    return events.of_type("page")


def test_pageview_carries_the_request_context(browser, segment_events):
    response = browser.get(
        "/?utm_source=newsletter&utm_campaign=spring%20sale&utm_term=shoes&q=red",
        headers={"Referer": "https://www.google.com/search?q=shop"},
    )
    assert response.status_code == 200
    [event] = page_events(segment_events)
    page = {
        "path": "/",
        "referrer": "https://www.google.com/search?q=shop",
        "search": "?utm_source=newsletter&utm_campaign=spring%20sale&utm_term=shoes&q=red",
        "title": "Home & garden",
        "url": "http://testserver/?utm_source=newsletter&utm_campaign=spring%20sale"
        "&utm_term=shoes&q=red",
    }
    assert event["name"] == "home"
    assert event["properties"] == page
    context = event["context"]
    assert context["page"] == page
    assert context["ip"] == "127.0.0.1"
    assert context["userAgent"] == CHROME
    assert context["locale"] == "en-US"
    assert context["campaign"] == {"source": "newsletter", "name": "spring sale", "term": "shoes"}
    assert context["library"]["name"] == "segment_mw"
    assert event["channel"] == "server"
    assert "userId" not in event
    assert event["anonymousId"] == response.cookies["ajs_anonymous_id"].value


def test_user_agent_data_from_client_hints(browser, segment_events):
    browser.get(
        "/",
        headers={
            "Sec-CH-UA": '"Chromium";v="124", "Google Chrome";v="124", "Not-A.Brand";v="99"',
            "Sec-CH-UA-Mobile": "?0",
            "Sec-CH-UA-Platform": '"macOS"',
        },
    )
    [event] = page_events(segment_events)
    assert event["context"]["userAgentData"] == {
        "brands": [
            {"brand": "Chromium", "version": "124"},
            {"brand": "Google Chrome", "version": "124"},
            {"brand": "Not-A.Brand", "version": "99"},
        ],
        "mobile": False,
        "platform": "macOS",
    }


def test_no_client_hints_no_user_agent_data(browser, segment_events):
    browser.get("/")
    assert "userAgentData" not in page_events(segment_events)[0]["context"]


def test_secrets_are_scrubbed_from_url_and_referrer(browser, segment_events):
    browser.get(
        "/?token=s3cr3t-token&page=2&password=hunter2",
        headers={"Referer": "https://user:pw@example.com/reset?code=123456&lang=en"},
    )
    [event] = page_events(segment_events)
    assert event["properties"]["search"] == "?page=2"
    assert event["properties"]["url"] == "http://testserver/?page=2"
    assert event["properties"]["referrer"] == "https://example.com/reset?lang=en"
    body = segment_events.entries[-1].body
    for secret in (b"s3cr3t-token", b"hunter2", b"123456", b"user:pw"):
        assert secret not in body


def test_authorization_and_cookie_headers_are_never_captured(browser, segment_events):
    browser.client.cookies["sessionid"] = "cookie-secret-value"
    browser.get(
        "/track/",
        headers={
            "Authorization": "Bearer header-secret-value",
            "Proxy-Authorization": "Basic proxy-secret-value",
        },
    )
    browser.get("/", headers={"Authorization": "Bearer header-secret-value"})
    assert [e["type"] for e in segment_events] == ["track", "page"]
    for entry in segment_events.entries:
        for secret in (b"header-secret-value", b"cookie-secret-value", b"proxy-secret-value"):
            assert secret not in entry.body
        assert b"authorization" not in entry.body.lower()
        assert b"sessionid" not in entry.body


def test_x_forwarded_for_is_ignored_without_trusted_proxies(browser, segment_events):
    browser.get("/", headers={"X-Forwarded-For": "203.0.113.7"})
    assert page_events(segment_events)[0]["context"]["ip"] == "127.0.0.1"


@pytest.mark.parametrize("trusted", [["127.0.0.1/32"], 1])
def test_x_forwarded_for_is_honoured_from_trusted_proxies(
    make_browser, segment_settings, segment_events, trusted
):
    segment_settings(TRUSTED_PROXIES=trusted)
    make_browser().get("/", headers={"X-Forwarded-For": "203.0.113.7"})
    assert page_events(segment_events)[0]["context"]["ip"] == "203.0.113.7"


def test_spoofed_hops_left_of_the_trusted_proxy_are_not_believed(
    make_browser, segment_settings, segment_events
):
    segment_settings(TRUSTED_PROXIES=["127.0.0.1/32"])
    make_browser().get("/", headers={"X-Forwarded-For": "6.6.6.6, 198.51.100.4"})
    assert page_events(segment_events)[0]["context"]["ip"] == "198.51.100.4"


def test_ip_can_be_anonymised(make_browser, segment_settings, segment_events):
    segment_settings(IP="anonymize")
    make_browser().get("/")
    assert page_events(segment_events)[0]["context"]["ip"] == "127.0.0.0"


# -- anonymous id ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [ANON, quote(json.dumps(ANON)), json.dumps(ANON)],
    ids=["analytics.js 2.0", "classic (url-encoded JSON)", "classic (JSON)"],
)
def test_anonymous_id_from_either_cookie_format(browser, segment_events, raw):
    browser.client.cookies["ajs_anonymous_id"] = raw
    response = browser.get("/")
    assert page_events(segment_events)[0]["anonymousId"] == ANON
    assert "ajs_anonymous_id" not in response.cookies


def test_a_new_anonymous_id_is_minted_and_set_in_the_2_0_format(browser, segment_events):
    response = browser.get("/")
    morsel = response.cookies["ajs_anonymous_id"]
    [event] = page_events(segment_events)
    assert morsel.value == event["anonymousId"]  # raw, not JSON-quoted
    assert len(morsel.value) == 36
    assert morsel["path"] == "/"
    assert morsel["max-age"] == COOKIE_MAX_AGE
    assert morsel["expires"]
    assert morsel["samesite"] == "Lax"
    assert not morsel["httponly"]  # analytics.js must read it
    assert not morsel["secure"]
    assert not morsel["domain"]

    # The browser keeps it: the next request reuses it and nothing is set again.
    again = browser.get("/")
    assert "ajs_anonymous_id" not in again.cookies
    assert page_events(segment_events)[1]["anonymousId"] == event["anonymousId"]


def test_cookie_domain_and_secure(make_browser, segment_settings):
    segment_settings(COOKIE_DOMAIN=".example.com", COOKIE_SECURE=True)
    morsel = make_browser().get("/").cookies["ajs_anonymous_id"]
    assert morsel["domain"] == ".example.com"
    assert morsel["secure"]


def test_set_cookie_off(make_browser, segment_settings, segment_events):
    segment_settings(SET_COOKIE=False)
    response = make_browser().get("/")
    assert "ajs_anonymous_id" not in response.cookies
    assert page_events(segment_events)[0]["anonymousId"]


def test_an_existing_cookie_is_never_overwritten_even_if_unreadable(browser, segment_events):
    browser.client.cookies["ajs_anonymous_id"] = "not a valid id"
    response = browser.get("/")
    assert "ajs_anonymous_id" not in response.cookies
    assert browser.cookies["ajs_anonymous_id"].value == "not a valid id"


def test_a_cookie_the_view_set_is_kept(browser):
    response = browser.get("/own-cookie/")
    assert response.cookies["ajs_anonymous_id"].value == "set-by-the-view"


def test_every_response_of_a_new_visitor_gets_the_cookie(browser, segment_events):
    response = browser.get("/json/")
    assert "ajs_anonymous_id" in response.cookies
    assert segment_events == []  # not a pageview, but the id is now the browser's


def test_no_cookie_for_static_files_or_bots(browser, make_browser):
    assert "ajs_anonymous_id" not in browser.get("/static/app.html").cookies
    assert "ajs_anonymous_id" not in browser.get("/media/page.html").cookies
    bot = make_browser({"User-Agent": "Mozilla/5.0 (compatible; bingbot/2.0)"})
    assert "ajs_anonymous_id" not in bot.get("/").cookies


# -- opt-out ---------------------------------------------------------------------------
def test_global_privacy_control_opts_out(browser, segment_events):
    response = browser.get("/", headers={"Sec-GPC": "1"})
    assert response.status_code == 200
    assert "ajs_anonymous_id" not in response.cookies
    browser.get("/track/", headers={"Sec-GPC": "1"})
    assert segment_events == []
    assert metrics.counts().get("opted_out") == 1  # the view's track() was refused


def test_gpc_ignored_when_not_respected(make_browser, segment_settings, segment_events):
    segment_settings(RESPECT_GPC=False)
    response = make_browser().get("/", headers={"Sec-GPC": "1"})
    assert "ajs_anonymous_id" in response.cookies
    assert len(page_events(segment_events)) == 1


def no_consent(info):
    return info.headers.get("x-consent") == "yes"


def test_consent_callable(make_browser, segment_settings, segment_events):
    segment_settings(CONSENT=no_consent)
    browser = make_browser()
    refused = browser.get("/")
    assert "ajs_anonymous_id" not in refused.cookies
    assert segment_events == []
    given = browser.get("/", headers={"X-Consent": "yes"})
    assert "ajs_anonymous_id" in given.cookies
    assert len(page_events(segment_events)) == 1


# -- events from the view ---------------------------------------------------------------
def test_track_in_a_view_gets_the_request_identity_and_context(browser, segment_events):
    browser.client.cookies["ajs_anonymous_id"] = ANON
    response = browser.get("/track/?utm_source=ad", headers={"Sec-Fetch-Mode": "cors"})
    [event] = segment_events
    assert event["messageId"] == response.json()["messageId"]
    assert event["event"] == "Button Clicked"
    assert event["anonymousId"] == ANON
    assert event["context"]["ip"] == "127.0.0.1"
    assert event["context"]["campaign"] == {"source": "ad"}
    assert event["context"]["page"]["path"] == "/track/"


def test_async_view_track(browser, segment_events):
    response = browser.get("/async/track/", headers={"Sec-Fetch-Mode": "cors"})
    assert response.status_code == 200
    [event] = segment_events
    assert event["event"] == "Async Clicked"
    assert event["anonymousId"] == response.cookies["ajs_anonymous_id"].value


def test_the_scope_does_not_leak_past_the_request(browser, segment_events):
    from segment_mw import scope

    browser.get("/")
    assert scope.current() is None


# -- host ------------------------------------------------------------------------------
def test_host_follows_allowed_hosts(settings, segment_events):
    from .conftest import Browser

    # Without CommonMiddleware a disallowed host reaches the middleware (and the view).
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if "CommonMiddleware" not in m]
    browser = Browser("sync")
    browser.get("/", headers={"Host": "example.com"})
    settings.ALLOWED_HOSTS = ["testserver"]
    response = browser.get("/", headers={"Host": "example.com"})
    assert response.status_code == 200
    urls = [e["properties"]["url"] for e in page_events(segment_events)]
    assert urls == ["http://example.com/", "http://testserver/"]
