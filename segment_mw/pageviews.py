"""The pageview decision, per-view options, ``<title>`` extraction and the page event itself.

One place decides whether a response is a real pageview: a GET that succeeded with an HTML
document, a top-level navigation (not fetch/XHR, not a prefetch), on a path that is not
excluded, from a browser (not a crawler), by a user who did not opt out. Both middlewares
call :func:`skip_reason` at response start and :func:`emit_pageview` when it says yes.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, TypeVar

from . import metrics
from . import scope as scope_mod
from .api import emit
from .cache import BoundedCache, memoize
from .capture import RequestContext, RequestInfo
from .config import Settings
from .errors import InvalidEvent
from .events import page_fields

log = logging.getLogger("segment_mw.pageviews")

F = TypeVar("F", bound=Callable[..., Any])
OPTIONS_ATTR = "_segment_mw_pageview"
HTML_TYPES = ("text/html", "application/xhtml+xml")


def pageview(
    name: str | None = None,
    *,
    category: str | None = None,
    properties: Mapping[str, Any] | None = None,
    integrations: Mapping[str, Any] | None = None,
    skip: bool = False,
) -> Callable[[F], F]:
    """Set the pageview options of a view (or skip its pageview): ``@pageview("Checkout")``."""
    options = {
        k: v
        for k, v in {
            "name": name,
            "category": category,
            "properties": dict(properties) if properties else None,
            "integrations": dict(integrations) if integrations else None,
            "skip": skip or None,
        }.items()
        if v is not None
    }

    def decorate(view: F) -> F:
        setattr(view, OPTIONS_ATTR, options)
        return view

    return decorate


def set_pageview(**options: Any) -> None:
    """From inside a view: set this request's pageview options (same keys as ``@pageview``)."""
    current = scope_mod.current()
    if current is not None:
        current.pageview.update({k: v for k, v in options.items() if v is not None})


def view_options(view: Any) -> dict[str, Any]:
    """The options a view was decorated with (class-based views: on the class too)."""
    for candidate in (view, getattr(view, "view_class", None), getattr(view, "cls", None)):
        if candidate is not None:
            found = getattr(candidate, OPTIONS_ATTR, None)
            if isinstance(found, dict):
                return found
    return {}


@lru_cache(maxsize=64)
def _excluded(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    return re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None


def is_excluded_path(path: str, settings: Settings, extra: tuple[str, ...] = ()) -> bool:
    """Whether ``path`` matches ``PAGEVIEWS.EXCLUDE_PATHS`` (or the adapter's extras)."""
    pattern = _excluded(tuple(settings.pageviews["EXCLUDE_PATHS"]) + extra)
    return pattern is not None and pattern.search(path) is not None


def skip_reason(
    info: RequestInfo,
    rc: RequestContext,
    settings: Settings,
    status: int,
    content_type: str | None,
    extra_excluded: tuple[str, ...] = (),
) -> str | None:
    """Why this response is not a pageview, or None when it is one."""
    pv = settings.pageviews
    if not pv["ENABLED"]:
        return "disabled"
    if rc.opted_out:
        return "opted out"
    if rc.scope.pageview.get("skip"):
        return "skipped by the view"
    if info.method != "GET":
        return "not GET"
    if not 200 <= status < 300:
        return "status"
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in HTML_TYPES:
        return "not HTML"
    headers = info.headers
    mode = headers.get("sec-fetch-mode")
    if mode is not None and mode.strip().lower() != "navigate":
        return "not a navigation"
    dest = headers.get("sec-fetch-dest")
    if dest is not None and dest.strip().lower() not in ("document", "iframe", "frame"):
        return "not a document"
    purpose = (headers.get("sec-purpose") or headers.get("purpose") or "").lower()
    if "prefetch" in purpose or "prerender" in purpose or headers.get("x-moz") == "prefetch":
        return "prefetch"
    if headers.get("x-requested-with", "").lower() == "xmlhttprequest":
        return "XHR"
    if is_excluded_path(info.path, settings, extra_excluded):
        return "excluded path"
    if pv["EXCLUDE_BOTS"] and rc.is_bot:
        return "bot"
    return None


_TITLE = re.compile(rb"<title[^>]*>(.*?)</title\s*>", re.IGNORECASE | re.DOTALL)
_CHARSET = re.compile(r"charset=([\w-]+)", re.IGNORECASE)


def extract_title(body: bytes, content_type: str | None, limit: int = 65536) -> str:
    """The document's ``<title>``, unescaped and with white space folded; '' when none."""
    match = _TITLE.search(body, 0, limit)
    if not match:
        return ""
    raw, charset = bytes(match.group(1)), _charset(content_type)
    # The same pages are viewed again and again: reuse the text of short titles. Titles
    # can echo request data (a search page's), so the cache is bounded in bytes.
    key = (raw, charset)
    text: str | None = _titles.get(key)
    if text is None:
        text = _title_text(raw, charset)
        _titles.put(key, text)
    return text


@memoize(max_bytes=64 * 1024, max_entry_bytes=1024)
def _charset(content_type: str | None) -> str:
    found = _CHARSET.search(content_type or "")
    return found.group(1) if found else "utf-8"


def _title_text(raw: bytes, charset: str) -> str:
    try:
        text = raw.decode(charset, "replace")
    except LookupError:
        text = raw.decode("utf-8", "replace")
    return " ".join(html.unescape(text).split())[:1000]


_titles: BoundedCache[tuple[bytes, str], str] = BoundedCache(
    max_bytes=512 * 1024, max_entry_bytes=8192
)


def emit_pageview(
    rc: RequestContext,
    settings: Settings,
    *,
    route_name: str | None,
    view_opts: Mapping[str, Any] | None = None,
) -> str | None:
    """Queue the page event of a request; log and count (never raise) when it is invalid."""
    options = {**view_opts, **rc.scope.pageview} if view_opts else rc.scope.pageview
    name = options.get("name")
    if name is None and settings.pageviews["NAME"] == "route":
        name = route_name
    # The browser-written ajs_user_id (only where USER_ID_FROM_COOKIE opts in) names the
    # visitor of a request nobody authenticated; it never overrides a real user.
    cookie_user = rc.cookie_user_id if rc.cookie_user_id and rc.scope.user_id is None else None
    token = scope_mod.bind(rc.scope)
    try:
        return emit(
            "page",
            page_fields(name, options.get("properties"), options.get("category")),
            user_id=cookie_user,
            integrations=options.get("integrations"),
            durable=False,
            request_page=True,
        )
    except InvalidEvent as exc:
        metrics.count("invalid")
        metrics.warn_once_per_interval("invalid", "pageview dropped: %s", exc, logger=log)
    except Exception:
        metrics.count("dropped")
        metrics.warn_once_per_interval(
            "pageview_failed", "pageview dropped", logger=log, exc_info=True
        )
    finally:
        scope_mod.reset(token)
    return None
