"""The framework-free capture core, where the adapters' tests do not reach."""

from __future__ import annotations

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
