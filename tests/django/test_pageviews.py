"""Which responses are pageviews, and what the page event says (names, options, title)."""

from __future__ import annotations

import pytest

from .conftest import CHROME, GOOGLEBOT


def pages(events):
    return events.of_type("page")


# -- filters ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [
        {"User-Agent": GOOGLEBOT, "Sec-Fetch-Mode": "navigate"},
        {"User-Agent": "curl/8.5.0"},
        {"Accept": "text/html"},  # no user agent at all
    ],
    ids=["googlebot", "curl", "no user agent"],
)
def test_bots_are_not_pageviews(make_browser, segment_events, headers):
    response = make_browser(headers).get("/")
    assert response.status_code == 200
    assert segment_events == []


def test_bots_counted_when_bot_filtering_is_off(make_browser, segment_settings, segment_events):
    segment_settings(PAGEVIEWS={"EXCLUDE_BOTS": False})
    make_browser({"User-Agent": GOOGLEBOT}).get("/")
    assert len(pages(segment_events)) == 1


@pytest.mark.parametrize("path", ["/static/app.html", "/media/page.html", "/healthz"])
def test_static_media_and_health_paths_are_excluded(browser, segment_events, path):
    assert browser.get(path).status_code == 200
    assert segment_events == []


def test_static_url_follows_the_setting(browser, settings, segment_events):
    settings.STATIC_URL = "/assets/"
    browser.get("/static/app.html")
    assert len(pages(segment_events)) == 1


def test_excluded_paths_setting(make_browser, segment_settings, segment_events):
    segment_settings(PAGEVIEWS={"EXCLUDE_PATHS": [r"^/shop/"]})
    browser = make_browser()
    browser.get("/shop/product/1/")
    browser.get("/healthz")  # the defaults were replaced
    assert [e["properties"]["path"] for e in pages(segment_events)] == ["/healthz"]


def test_non_html_is_not_a_pageview(browser, segment_events):
    assert browser.get("/json/").status_code == 200
    assert segment_events == []


@pytest.mark.parametrize(("path", "status"), [("/missing/", 404), ("/boom/", 500)])
def test_errors_are_not_pageviews(browser, segment_events, path, status):
    response = browser.get(path)
    assert response.status_code == status
    assert response["Content-Type"].startswith("text/html")
    assert segment_events == []


def test_redirects_are_not_pageviews(browser, segment_events):
    response = browser.get("/shop/product/1")  # APPEND_SLASH redirects
    assert response.status_code == 301
    assert segment_events == []


def test_post_and_head_are_not_pageviews(browser, segment_events):
    assert browser.post("/form/", {"a": "b"}).status_code == 200
    assert browser.head("/form/").status_code == 200
    assert segment_events == []


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Purpose": "prefetch"},
        {"Sec-Purpose": "prefetch;prerender"},
        {"Purpose": "prefetch"},
        {"X-Moz": "prefetch"},
    ],
    ids=["sec-purpose", "prerender", "purpose", "x-moz"],
)
def test_prefetches_are_not_pageviews(browser, segment_events, headers):
    browser.get("/", headers=headers)
    assert segment_events == []


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"},
        {"Sec-Fetch-Mode": "same-origin"},
        {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "empty"},
        {"X-Requested-With": "XMLHttpRequest"},
    ],
    ids=["fetch", "same-origin fetch", "not a document", "xhr"],
)
def test_fetch_and_xhr_are_not_pageviews(browser, segment_events, headers):
    browser.get("/", headers=headers)
    assert segment_events == []


def test_iframe_navigation_and_browsers_without_fetch_metadata_are_pageviews(
    browser, make_browser, segment_events
):
    browser.get("/", headers={"Sec-Fetch-Dest": "iframe"})
    make_browser({"User-Agent": CHROME}).get("/")  # no Sec-Fetch-* headers at all
    assert len(pages(segment_events)) == 2


def test_pageviews_can_be_turned_off(make_browser, segment_settings, segment_events):
    segment_settings(PAGEVIEWS=False)
    response = make_browser().get("/")
    assert segment_events == []
    assert "ajs_anonymous_id" in response.cookies  # identity still works


# -- names and options -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/", "home"),
        ("/shop/product/3/", "shop:product"),
        ("/unnamed/", "tests.django_project.views.plain"),
        ("/async/", "async-home"),
    ],
)
def test_page_name_is_the_resolved_url_name(browser, segment_events, path, name):
    browser.get(path)
    assert pages(segment_events)[0]["name"] == name


def test_no_name_when_configured(make_browser, segment_settings, segment_events):
    segment_settings(PAGEVIEWS={"NAME": None})
    make_browser().get("/")
    assert "name" not in pages(segment_events)[0]


def test_view_decorator_sets_name_category_properties_integrations(browser, segment_events):
    browser.get("/checkout/")
    [event] = pages(segment_events)
    assert event["name"] == "Checkout"
    assert event["category"] == "Shop"
    assert event["properties"]["step"] == 1
    assert event["properties"]["path"] == "/checkout/"
    assert event["properties"]["title"] == "Checkout"
    assert event["integrations"] == {"Mixpanel": False}


def test_view_decorator_on_a_class_based_view(browser, segment_events):
    browser.get("/about/")
    [event] = pages(segment_events)
    assert (event["name"], event["category"]) == ("About us", "Company")


def test_view_decorator_can_skip(browser, segment_events):
    response = browser.get("/skipped/")
    assert segment_events == []
    assert "ajs_anonymous_id" in response.cookies


def test_set_pageview_from_inside_the_view(browser, segment_events):
    browser.get("/dynamic/")
    [event] = pages(segment_events)
    assert event["name"] == "Dynamic"
    assert event["properties"]["variant"] == "b"


# -- title -----------------------------------------------------------------------------
def test_title_from_a_rendered_template_is_unescaped(browser, segment_events):
    browser.get("/")
    [event] = pages(segment_events)
    assert event["properties"]["title"] == "Home & garden"
    assert event["context"]["page"]["title"] == "Home & garden"


def test_title_from_an_async_view(browser, segment_events):
    browser.get("/async/")
    assert pages(segment_events)[0]["properties"]["title"] == "Async"


def test_streaming_responses_are_pageviews_but_never_consumed(browser, segment_events):
    from tests.django_project.views import STREAM_CHUNKS

    response = browser.get("/stream/")
    [event] = pages(segment_events)
    assert event["properties"]["title"] == ""
    assert response.getvalue() == b"".join(STREAM_CHUNKS)


@pytest.mark.parametrize("pageviews", [{"TITLE": False}, {"TITLE_MAX_BYTES": 10}])
def test_title_reading_can_be_limited(make_browser, segment_settings, segment_events, pageviews):
    segment_settings(PAGEVIEWS=pageviews)
    make_browser().get("/")
    assert pages(segment_events)[0]["properties"]["title"] == ""
