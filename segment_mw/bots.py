"""Crawler detection by user agent, using the maintained ``crawler-user-agents`` list.

Matching a user agent against the list costs about a millisecond, so verdicts are cached
per user-agent string: repeated agents (nearly all traffic) cost a dictionary lookup. The
cache is bounded in bytes (random user agents from a flood cannot grow the process), and
agents longer than any browser's are judged without matching or caching.
"""

from __future__ import annotations

import crawleruseragents

from .cache import memoize

MAX_BROWSER_UA = 512


@memoize(max_bytes=2 * 1024 * 1024, max_entry_bytes=1024)
def is_bot(user_agent: str | None) -> bool:
    """True for crawlers, and for requests with no user agent at all (no browser sends none)."""
    if not user_agent or not user_agent.strip():
        return True
    if len(user_agent) > MAX_BROWSER_UA:
        return True  # no browser sends one this long; matching it would cost the most
    return bool(crawleruseragents.is_crawler(user_agent))
