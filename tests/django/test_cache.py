"""Shared caches never hand one visitor's anonymous id to another, and with the middleware
placed before ``FetchFromCacheMiddleware`` cache hits still count as pageviews."""

from __future__ import annotations

import pytest
from django.core import checks
from django.core.cache import cache

from .conftest import Browser

UPDATE = "django.middleware.cache.UpdateCacheMiddleware"
FETCH = "django.middleware.cache.FetchFromCacheMiddleware"
OURS = "segment_mw.django.SegmentMiddleware"


@pytest.fixture(autouse=True)
def _empty_cache():
    cache.clear()
    yield
    cache.clear()


def site_cache(settings, *, ours_before_fetch: bool) -> None:
    """The per-site cache as Django documents it: Update first, Fetch last."""
    rest = [m for m in settings.MIDDLEWARE if m != OURS]
    if ours_before_fetch:  # the placement the README recommends with the site cache
        settings.MIDDLEWARE = [UPDATE, *rest, OURS, FETCH]
    else:  # MIDDLEWARE += [OURS] on a site that already has the cache
        settings.MIDDLEWARE = [UPDATE, *rest, FETCH, OURS]


def warnings():
    return [m.id for m in checks.run_checks() if m.id and m.id.startswith("segment_mw.")]


def ajs_cookie(response):
    cookie = response.cookies.get("ajs_anonymous_id")
    return cookie.value if cookie is not None else None


def test_appended_after_the_cache_no_shared_cookie_and_a_check_warns(
    mode, settings, segment_events
):
    site_cache(settings, ours_before_fetch=False)
    first, second = Browser(mode).get("/"), Browser(mode).get("/")
    assert "max-age" in first["Cache-Control"]  # the site cache stored the first response
    assert ajs_cookie(first) is None  # it would have been served to the second visitor
    assert ajs_cookie(second) is None
    assert len(segment_events.of_type("page")) == 1  # the cache hit never reached us
    assert warnings() == ["segment_mw.W004"]


def test_placed_before_fetch_every_cache_hit_is_a_pageview(mode, settings, segment_events):
    site_cache(settings, ours_before_fetch=True)
    visitors = [Browser(mode) for _ in range(3)]
    responses = [v.get("/") for v in visitors]
    assert all(ajs_cookie(r) is None for r in responses)
    pages = segment_events.of_type("page")
    assert len(pages) == 3
    assert len({p["anonymousId"] for p in pages}) == 3  # never one id for many visitors
    assert warnings() == []


def test_a_page_the_cache_will_not_store_still_gets_the_cookie(mode, settings, segment_events):
    site_cache(settings, ours_before_fetch=True)
    first, second = Browser(mode).get("/private/"), Browser(mode).get("/private/")
    assert ajs_cookie(first)
    assert ajs_cookie(second)
    assert ajs_cookie(first) != ajs_cookie(second)


@pytest.mark.parametrize("path", ["/public/", "/cdn/"])
def test_responses_a_shared_cache_may_store_get_no_cookie(browser, segment_events, path):
    response = browser.get(path)
    assert ajs_cookie(response) is None
    [page] = segment_events.of_type("page")
    assert page["anonymousId"]  # still identified for this request


def test_an_ordinary_response_gets_the_cookie(browser, segment_events):
    response = browser.get("/")
    assert ajs_cookie(response) == segment_events.of_type("page")[0]["anonymousId"]
