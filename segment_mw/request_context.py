"""A request's Segment context, made from the facts its adapter recorded.

The request path records only what it must decide there — the page's parts with secrets
already scrubbed from queries, the client's ip as the settings say to report it, and the
raw user agent, client hints and languages (see :func:`segment_mw.capture.capture`). The
context itself — ``page``, ``ip``, ``userAgent``, ``userAgentData``, ``locale``,
``campaign`` — is made from those facts by :func:`context_from`, with no settings: where
the event is delivered for the events of a request (they are queued with their request's
facts, see :mod:`segment_mw.events`), or in the request the first time code there asks
for it. Facts are a plain JSON-ready dict:

``scheme``, ``host``, ``path``, ``query`` (scrubbed), ``referrer`` (scrubbed), ``title``,
and when known ``ip``, ``ua`` (User-Agent), ``lang`` (Accept-Language), ``hints`` (the
``Sec-CH-UA*`` headers sent, by lower-case name), ``ga`` (the browser's GA4 client and
session ids, from its ``_ga`` cookies: ``context.googleAnalytics``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from .cache import memoize

Facts = dict[str, Any]

# The client hints a context reads (userAgentData), by header name.
_HIGH_ENTROPY_HINTS = (
    ("sec-ch-ua-platform-version", "platformVersion"),
    ("sec-ch-ua-model", "model"),
    ("sec-ch-ua-arch", "architecture"),
    ("sec-ch-ua-bitness", "bitness"),
    ("sec-ch-ua-full-version", "uaFullVersion"),
)
HINT_HEADERS = (
    "sec-ch-ua",
    "sec-ch-ua-mobile",
    "sec-ch-ua-platform",
    *(header for header, _key in _HIGH_ENTROPY_HINTS),
    "sec-ch-ua-full-version-list",
    "sec-ch-ua-wow64",
)
# What of a list-valued header is kept in the facts: parsing reads the first 20 items
# only, and an attacker-sized header must not be queued whole with every event.
MAX_LIST_HEADER = 1024


def bounded_list_header(value: str) -> str:
    """``value``, cut after its last whole item within :data:`MAX_LIST_HEADER` characters."""
    if len(value) <= MAX_LIST_HEADER:
        return value
    return value[:MAX_LIST_HEADER].rsplit(",", 1)[0]


def context_from(facts: Mapping[str, Any]) -> dict[str, Any]:
    """The Segment context of the request the facts describe."""
    query = facts.get("query") or ""
    search = f"?{query}" if query else ""
    path = facts.get("path") or "/"
    context: dict[str, Any] = {
        "page": {
            "path": path,
            "referrer": facts.get("referrer") or "",
            "search": search,
            "title": facts.get("title") or "",
            "url": f"{facts.get('scheme') or 'http'}://{facts.get('host') or ''}{path}{search}",
        }
    }
    ip = facts.get("ip")
    if ip:
        context["ip"] = ip
    ua = facts.get("ua")
    if ua:
        context["userAgent"] = ua
    hints = facts.get("hints")
    if hints:
        ua_data = user_agent_data(hints)
        if ua_data is not None:
            context["userAgentData"] = ua_data
    locale = locale_from(facts.get("lang"))
    if locale:
        context["locale"] = locale
    campaign = campaign_from(query)
    if campaign:
        context["campaign"] = campaign
    google = facts.get("ga")
    if google:
        context["googleAnalytics"] = google
    return context


# -- headers -------------------------------------------------------------------------
_LANG = re.compile(r"^[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*$")


@memoize(max_bytes=256 * 1024, max_entry_bytes=1024)
def locale_from(accept_language: str | None) -> str | None:
    """The preferred language tag of ``Accept-Language``, as ``en-US``."""
    if not accept_language:
        return None
    best: tuple[float, str] | None = None
    for item in accept_language.split(",")[:20]:
        tag, _, params = item.strip().partition(";")
        tag = tag.strip()
        if not tag or tag == "*" or not _LANG.match(tag):
            continue
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                continue
        if best is None or q > best[0]:
            best = (q, tag)
    if best is None:
        return None
    parts = best[1].split("-")
    return "-".join([parts[0].lower(), *(p.upper() if len(p) == 2 else p for p in parts[1:])])


_BRAND = re.compile(r'\s*"((?:[^"\\]|\\.)*)"\s*;\s*v\s*=\s*"((?:[^"\\]|\\.)*)"\s*')


def _brands(value: str) -> list[dict[str, str]]:
    return [dict(b) for b in _parse_brands(value)]


@memoize(max_bytes=256 * 1024, max_entry_bytes=4096)
def _parse_brands(value: str) -> tuple[dict[str, str], ...]:
    brands = []
    for item in value.split(",")[:20]:
        match = _BRAND.fullmatch(item)
        if match:
            brands.append({"brand": match.group(1), "version": match.group(2)})
    return tuple(brands)


def _sf_string(value: str) -> str:
    value = value.strip()
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def user_agent_data(headers: Mapping[str, str]) -> dict[str, Any] | None:
    """``context.userAgentData`` from the ``Sec-CH-UA*`` client hints, when sent."""
    brands = headers.get("sec-ch-ua")
    if brands is None:
        return None
    data: dict[str, Any] = {"brands": _brands(brands)}
    mobile = headers.get("sec-ch-ua-mobile")
    if mobile is not None:
        data["mobile"] = mobile.strip() == "?1"
    platform = headers.get("sec-ch-ua-platform")
    if platform is not None:
        data["platform"] = _sf_string(platform)
    for header, key in _HIGH_ENTROPY_HINTS:
        value = headers.get(header)
        if value is not None:
            data[key] = _sf_string(value)
    full_list = headers.get("sec-ch-ua-full-version-list")
    if full_list is not None:
        data["fullVersionList"] = _brands(full_list)
    wow64 = headers.get("sec-ch-ua-wow64")
    if wow64 is not None:
        data["wow64"] = wow64.strip() == "?1"
    return data


# -- campaign --------------------------------------------------------------------------
# The campaign as analytics.js reads it (Segment's utm-params), so that a server-side
# pageview names the same campaign as the browser's: parameters whose names begin with
# "utm_" exactly, a "?" separating parameters as "&" does; the rest of the name and the
# value are form-decoded. Matched: the rest of the name, then the value (after the first =).
_UTM_PARAMETER = re.compile(r"(?:^|[&?])utm_([^&?=]*)=?([^&?]*)")


def campaign_from(query: str) -> dict[str, str]:
    """``context.campaign`` from ``utm_*`` parameters (``utm_campaign`` becomes ``name``).

    The parameters are picked out of the query in C: this runs for every pageview the
    worker completes, and most of a query's parameters are no campaign's. A name given
    twice keeps its last value.
    """
    if "utm_" not in query:
        return {}
    campaign: dict[str, str] = {}
    for key, value in _UTM_PARAMETER.findall(query):
        name = _form_decode(key)
        if name:
            campaign["name" if name == "campaign" else name] = _form_decode(value)
    return campaign


def _form_decode(value: str) -> str:
    """``unquote_plus``, skipped when there is nothing to decode (nearly always)."""
    if "+" in value:
        value = value.replace("+", " ")
    return unquote(value) if "%" in value else value
