"""The framework-free capture core, where the adapters' tests do not reach."""

from __future__ import annotations

import pytest

from segment_mw import bots
from segment_mw.capture import RequestInfo, capture
from segment_mw.config import load_settings

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"


def test_the_crawler_list_is_only_consulted_when_asked():
    settings = load_settings({}, environ={})
    info = RequestInfo("POST", "https", "shop.example", "/api", headers={"user-agent": BROWSER})
    bots.is_bot.cache_clear()
    rc = capture(info, settings)
    assert len(bots.is_bot.cache) == 0  # a POST needs no verdict
    assert rc.is_bot is False
    assert len(bots.is_bot.cache) == 1


def test_user_agents_no_browser_sends_are_bots_without_matching():
    assert bots.is_bot(None) is True
    assert bots.is_bot("   ") is True
    assert bots.is_bot(BROWSER + " x" * 300) is True
    assert bots.is_bot("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)")
    assert bots.is_bot(BROWSER) is False


def test_the_ga_cookie_gives_the_browsers_ga4_client_id():
    settings = load_settings({}, environ={})
    info = RequestInfo(
        "GET", "https", "shop.example", "/", cookies={"_ga": "GA1.1.1234567890.1700000000"}
    )
    context = capture(info, settings).scope.context
    assert context["googleAnalytics"] == {"clientId": "1234567890.1700000000"}


def test_a_malformed_ga_cookie_is_ignored():
    settings = load_settings({}, environ={})
    for raw in ("GA1.1.abc.1700000000", "GA1.1.1.2.3", "x" * 500, "GA1.1.1234567890", ""):
        info = RequestInfo("GET", "https", "shop.example", "/", cookies={"_ga": raw})
        assert "googleAnalytics" not in capture(info, settings).scope.context, raw


def test_the_streams_session_cookies_give_the_ga4_session_ids():
    settings = load_settings({}, environ={})
    cookies = {
        "_ga": "GA1.1.1234567890.1700000000",
        "_ga_ABC123DEF4": "GS2.1.s1700000500$o3$g1$t1700000600$j0$l0$h0",
        "_ga_OLDSTREAM1": "GS1.1.1700000400.2.1.1700000450.0.0.0",
        "_ga_bad": "GS1.1.1.1",
        "_ga_NOTNUMBER": "GS1.1.abc.1",
    }
    info = RequestInfo("GET", "https", "shop.example", "/", cookies=cookies)
    google = capture(info, settings).scope.context["googleAnalytics"]
    assert google["sessionIds"] == {"ABC123DEF4": "1700000500", "OLDSTREAM1": "1700000400"}


def _campaign_by_parameter(query: str) -> dict[str, str]:
    """The campaign rule read the long way, as analytics.js's utm-params reads it: "?"
    separates parameters as "&" does, and only names that begin with "utm_" count."""
    from urllib.parse import unquote_plus

    campaign: dict[str, str] = {}
    for part in query.replace("?", "&").split("&"):
        if part.startswith("utm_"):
            key, _, value = part.partition("=")
            name = unquote_plus(key[4:])
            if name:
                campaign["name" if name == "campaign" else name] = unquote_plus(value)
    return campaign


# The cases of Segment's own utm-params tests (the module analytics.js reads the campaign
# with), as query strings and the campaigns its tests expect.
UTM_PARAMS_CASES = [
    (
        "utm_source=source&utm_medium=medium&utm_term=term&utm_content=content"
        "&utm_campaign=name&utm_test=test&utm_fake=fake",
        {
            "content": "content",
            "medium": "medium",
            "name": "name",
            "source": "source",
            "term": "term",
            "fake": "fake",
            "test": "test",
        },
    ),
    ("xyz=abc&utm_woot=woot&bar=foo&abc_utm_def=hi", {"woot": "woot"}),
    ("utm_campaign=foo", {"name": "foo"}),
    ("utm_campaign=foo?utm_source=baz", {"name": "foo", "source": "baz"}),
]


@pytest.mark.parametrize(("query", "campaign"), UTM_PARAMS_CASES)
def test_the_campaign_is_read_as_analytics_js_reads_it(query, campaign):
    from segment_mw.request_context import campaign_from

    assert campaign_from(query) == campaign


def test_the_campaign_is_read_from_the_utm_parameters():
    from segment_mw.request_context import campaign_from

    assert campaign_from("utm_source=news&utm_medium=email&utm_campaign=spring+sale&ref=x") == {
        "source": "news",
        "medium": "email",
        "name": "spring sale",
    }
    # Names are taken as sent, as analytics.js takes them.
    assert campaign_from("UTM_Source=a&utm_term=b%20c&utm_Medium=m") == {
        "term": "b c",
        "Medium": "m",
    }
    assert campaign_from("UTM_SOURCE=a") == {}
    assert campaign_from("utm_=x&utm_content") == {"content": ""}
    assert campaign_from("xutm_source=a&utm_id=1=2") == {"id": "1=2"}
    assert campaign_from("utm_source=a&utm_source=b") == {"source": "b"}
    assert campaign_from("q=utm_source") == {}


def test_the_campaign_agrees_with_reading_each_parameter_in_turn():
    import random

    from segment_mw.request_context import campaign_from

    pieces = ["utm_", "UTM_", "uTm_", "source", "campaign", "=", "&", "&", "x", "%20", "%3D"]
    pieces += ["+", "", "é", "utm", "_", "%C3%A9", "%", "?"]
    rnd = random.Random(11)
    for _ in range(50_000):
        query = "".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 12)))
        assert campaign_from(query) == _campaign_by_parameter(query), query


def test_a_secret_after_a_second_question_mark_is_scrubbed():
    from segment_mw.capture import scrub_query

    denied = frozenset({"token", "password"})
    assert scrub_query("step=2?token=s3cr3t", denied) == "step=2"
    assert scrub_query("next=/reset?token=abc&x=1", denied) == "next=/reset&x=1"
    assert scrub_query("token=x?a=1", denied) == "a=1"
    assert scrub_query("a=1?b=2", denied) == "a=1?b=2"  # nothing dropped: kept as sent
    assert scrub_query("a=1&Token=2&b=3", denied) == "a=1&b=3"
    assert scrub_query("a=1&to%6Ben=2", denied) == "a=1"


def test_scrubbing_keeps_every_other_parameter_as_sent():
    import random
    import re
    from urllib.parse import unquote_plus

    from segment_mw.capture import scrub_query

    def name(part: str) -> str:
        return unquote_plus(part.partition("=")[0]).strip().lower()

    denied = frozenset({"token", "key"})
    pieces = ["token", "Token", "key", "a", "b", "=", "&", "?", "%6Ben", "+", " ", "x", "=1"]
    rnd = random.Random(5)
    for _ in range(20_000):
        query = "".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 10)))
        scrubbed = scrub_query(query, denied)
        parts = re.split(r"[&?]", scrubbed) if scrubbed else []
        assert not denied & {name(p) for p in parts}, (query, scrubbed)
        kept = [p for p in re.split(r"[&?]", query) if name(p) not in denied]
        if scrubbed:
            assert parts == kept, query  # the rest, in order and as sent
        else:
            assert not any(kept), query  # nothing but empty parts was left to keep
