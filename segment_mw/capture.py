"""Turning a request into Segment context: the framework-free core both middlewares share.

An adapter describes its request as a neutral :class:`RequestInfo`; :func:`capture`
returns the :class:`RequestContext` — ip (through trusted proxies only, optionally
anonymised), user agent and client hints, page fields with secrets scrubbed from query
strings, UTM campaign, locale, and the anonymous id joined with analytics.js's cookie.
``Authorization`` and ``Cookie`` headers are never copied into an event.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from .bots import is_bot
from .cache import memoize
from .config import Settings
from .identity import (
    ANONYMOUS_ID_COOKIE,
    GA_COOKIE,
    cookie_user_id,
    ga_client_id,
    ga_session_ids,
    new_anonymous_id,
    parse_id_cookie,
)
from .scope import Scope, UserSource


@dataclass(frozen=True, repr=False)
class RequestInfo:
    """What an adapter knows about a request, in neutral form (header names lower-case).

    Adapters leave ``Authorization`` and ``Cookie`` out of ``headers``; the cookies are in
    ``cookies``, for the anonymous id and the ``CONSENT`` callable.
    """

    method: str
    scheme: str
    host: str
    path: str
    query_string: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    cookies: Mapping[str, str] = field(default_factory=dict)
    peer: str | None = None
    route_name: str | None = None

    def __repr__(self) -> str:
        # Header and cookie values hold personal data and credentials: names only.
        return (
            f"RequestInfo(method={self.method!r}, scheme={self.scheme!r}, host={self.host!r}, "
            f"path={self.path!r}, headers={sorted(self.headers)}, cookies={sorted(self.cookies)})"
        )


@dataclass(repr=False)
class RequestContext:
    """The Segment view of one request, bound for its duration as the current scope."""

    scope: Scope
    anonymous_id: str | None
    new_anonymous_id: bool  # minted here: the response should set the cookie
    opted_out: bool
    page: dict[str, Any]
    user_agent: str | None = None
    # The ajs_user_id cookie, only where USER_ID_FROM_COOKIE opts in (pageviews only).
    cookie_user_id: str | None = None

    def __repr__(self) -> str:
        return (
            f"RequestContext(path={self.page.get('path')!r}, new_anonymous_id="
            f"{self.new_anonymous_id}, opted_out={self.opted_out}, scope={self.scope!r})"
        )

    @property
    def is_bot(self) -> bool:
        # Asked only when a pageview or a cookie is at stake: an unseen user agent costs
        # a pass over the whole crawler list, which most requests never need.
        return is_bot(self.user_agent)


# -- addresses -----------------------------------------------------------------------
# Caches keyed by request data are bounded in bytes (cache.py): these three hold at most
# 768 KiB together.
@memoize(max_bytes=256 * 1024, max_entry_bytes=512)
def _clean_ip(value: str) -> str | None:
    value = value.strip().strip('"')
    if value.startswith("["):  # [v6]:port
        value = value[1:].split("]", 1)[0]
    elif value.count(":") == 1:  # v4:port
        value = value.split(":", 1)[0]
    if value.lower().startswith("for="):
        return _clean_ip(value[4:])
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _forwarded_chain(headers: Mapping[str, str]) -> list[str | None]:
    xff = headers.get("x-forwarded-for")
    if xff:
        return [_clean_ip(part) for part in xff.split(",")]
    forwarded = headers.get("forwarded")
    if forwarded:
        chain: list[str | None] = []
        for element in forwarded.split(","):
            hops = [p.strip() for p in element.split(";") if p.strip().lower().startswith("for=")]
            chain.append(_clean_ip(hops[0]) if hops else None)
        return chain
    return []


def _trusted(address: str, networks: tuple[Any, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip.version == net.version and ip in net for net in networks)


_networks_cache: dict[tuple[str, ...], tuple[Any, ...]] = {}


def client_ip(
    peer: str | None, headers: Mapping[str, str], trusted: tuple[str, ...] | int
) -> str | None:
    """The client's address: the peer, unless it is a trusted proxy that says who sent it."""
    peer_ip = _clean_ip(peer) if peer else None
    if not trusted or peer_ip is None:
        return peer_ip
    chain = _forwarded_chain(headers)
    if not chain:
        return peer_ip
    hops = [*chain, peer_ip]
    if isinstance(trusted, int):
        # Each trusted proxy appends one address; the client is the one before them.
        index = max(len(hops) - 1 - trusted, 0)
        return hops[index] or peer_ip
    networks = _networks_cache.get(trusted)
    if networks is None:
        networks = tuple(ipaddress.ip_network(c, strict=False) for c in trusted)
        _networks_cache[trusted] = networks
    for address in reversed(hops):
        if address is None:
            return peer_ip  # a garbled hop: believe nothing left of it
        if not _trusted(address, networks):
            return address
    return hops[0] or peer_ip


def anonymize_ip(address: str) -> str:
    """Zero the host part: the last octet of IPv4, the last 80 bits of IPv6."""
    ip = ipaddress.ip_address(address)
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


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


_HIGH_ENTROPY_HINTS = (
    ("sec-ch-ua-platform-version", "platformVersion"),
    ("sec-ch-ua-model", "model"),
    ("sec-ch-ua-arch", "architecture"),
    ("sec-ch-ua-bitness", "bitness"),
    ("sec-ch-ua-full-version", "uaFullVersion"),
)


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


# -- page and campaign -----------------------------------------------------------------
def scrub_query(query: str, denylist: frozenset[str]) -> str:
    """The query string without parameters whose names are on the denylist.

    The other parameters are kept exactly as sent (same order and encoding).
    """
    if not query:
        return query
    kept = []
    for part in query.split("&"):
        name = part.partition("=")[0]
        if "%" in name or "+" in name:
            name = unquote(name.replace("+", " "))
        if name.strip().lower() not in denylist:
            kept.append(part)
    return query if len(kept) == query.count("&") + 1 else "&".join(kept)


def scrub_url(url: str | None, denylist: frozenset[str]) -> str | None:
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if not parts.query and "@" not in parts.netloc:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]  # never pass on user:password@
    return urlunsplit((parts.scheme, netloc, parts.path, scrub_query(parts.query, denylist), ""))


def campaign_from(query: str) -> dict[str, str]:
    """``context.campaign`` from ``utm_*`` parameters (``utm_campaign`` becomes ``name``)."""
    if "utm_" not in query:
        return {}
    campaign: dict[str, str] = {}
    for part in query.split("&"):
        if part[:4].lower() != "utm_":
            continue
        key, _, value = part.partition("=")
        name = _form_decode(key[4:]).lower()
        if name:
            campaign["name" if name == "campaign" else name] = _form_decode(value)
    return campaign


def _form_decode(value: str) -> str:
    """``unquote_plus``, skipped when there is nothing to decode (nearly always)."""
    if "+" in value:
        value = value.replace("+", " ")
    return unquote(value) if "%" in value else value


# -- the whole request -----------------------------------------------------------------
def is_opted_out(info: RequestInfo, settings: Settings) -> bool:
    if settings.respect_gpc and info.headers.get("sec-gpc", "").strip() == "1":
        return True
    if settings.consent is not None:
        return not settings.consent(info)
    return False


def capture(
    info: RequestInfo,
    settings: Settings,
    *,
    user_id: str | None = None,
    user_source: UserSource | None = None,
) -> RequestContext:
    """Build the Segment context of a request (once per request).

    ``user_id`` is the request's user as the app's own ``USER_ID`` callable named it;
    ``user_source`` asks the framework for its authenticated user whenever an event is
    built (see :class:`~segment_mw.scope.Scope`).
    """
    headers = info.headers
    denylist = settings.scrub_params
    query = scrub_query(info.query_string, denylist)
    search = f"?{query}" if query else ""
    page: dict[str, Any] = {
        "path": info.path,
        "referrer": scrub_url(headers.get("referer"), denylist) or "",
        "search": search,
        "title": "",
        "url": f"{info.scheme}://{info.host}{info.path}{search}",
    }
    context: dict[str, Any] = {"page": page}
    ip = None
    if settings.ip != "none":
        ip = client_ip(info.peer, headers, settings.trusted_proxies)
        if ip is not None and settings.ip == "anonymize":
            ip = anonymize_ip(ip)
    if ip is not None:
        context["ip"] = ip
    ua = headers.get("user-agent")
    if ua:
        context["userAgent"] = ua
    ua_data = user_agent_data(headers)
    if ua_data is not None:
        context["userAgentData"] = ua_data
    locale = locale_from(headers.get("accept-language"))
    if locale:
        context["locale"] = locale
    campaign = campaign_from(info.query_string)
    if campaign:
        context["campaign"] = campaign
    client_id = ga_client_id(info.cookies.get(GA_COOKIE))
    if client_id is not None:
        google: dict[str, Any] = {"clientId": client_id}
        sessions = ga_session_ids(info.cookies)
        if sessions:
            google["sessionIds"] = sessions
        context["googleAnalytics"] = google

    opted_out = is_opted_out(info, settings)
    anonymous_id = parse_id_cookie(info.cookies.get(ANONYMOUS_ID_COOKIE))
    minted = False
    if anonymous_id is None and not opted_out:
        anonymous_id, minted = new_anonymous_id(), True
    scope = Scope(
        user_id=user_id,
        anonymous_id=anonymous_id,
        context=context,
        opted_out=opted_out,
        user_source=user_source,
    )
    return RequestContext(
        scope=scope,
        anonymous_id=anonymous_id,
        new_anonymous_id=minted,
        opted_out=opted_out,
        page=page,
        user_agent=ua,
        cookie_user_id=cookie_user_id(info.cookies, settings),
    )
