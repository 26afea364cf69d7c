"""Who an event is about, and the anonymous-id cookie: the identity rules in one place.

Adapters only supply facts — the authenticated user as the framework knows it (asked
when each event is built), the browser's ``ajs_anonymous_id`` cookie, what the response
says about caching — and everything that emits (the six calls, ``@tracked``, pageviews,
context carried into Celery tasks) asks :func:`resolve`. The rules, from SPEC §3:
``userId`` comes from the server's own authentication, never from a browser-writable
cookie; an event naming another user than the request's authenticated one takes none of
the request's identity, context or opt-out; an anonymous request that names a user (a
sign-up, a first login) keeps its anonymous id, which is what merges the two profiles.
"""

from __future__ import annotations

import operator
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote

from . import scope as scope_mod
from .cache import memoize
from .config import Settings
from .events import validated_id
from .scope import Scope, as_user_id

ANONYMOUS_ID_COOKIE = "ajs_anonymous_id"
USER_ID_COOKIE = "ajs_user_id"
# gtag.js's cookie: GA1.<domain depth>.<random>.<first visit>. Its last two numbers are
# the browser's GA4 client id, recorded as context.googleAnalytics.clientId so that a
# server-side event (a purchase) joins the browser's GA4 session.
GA_COOKIE = "_ga"
GA_CLIENT_ID = re.compile(r"[0-9]{1,20}\.[0-9]{1,20}", re.ASCII)
# gtag.js's per-stream cookie _ga_<stream> holds the current session's id: GS1.1.<id>.…
# (older) or GS2.1.s<id>$o…$g… (current). Recorded as context.googleAnalytics.sessionIds,
# by stream, so that the event joins the browser's session, not just its user.
GA_SESSION_PREFIX = "_ga_"
GA_STREAM = re.compile(r"[A-Z0-9]{4,20}", re.ASCII)
GA_SESSION_ID = re.compile(r"[0-9]{1,20}", re.ASCII)
GA_MAX_STREAMS = 4
_IS_GA_SESSION = operator.methodcaller("startswith", GA_SESSION_PREFIX)
COOKIE_MAX_AGE = 365 * 24 * 3600
MAX_ID_LENGTH = 100
_ID_OK = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces: what an id can be
OPTED_OUT_ID = "opted-out"  # lent to a message built only to check the caller's arguments


# -- who an event is about -------------------------------------------------------------
@dataclass(slots=True)
class Identity:
    """The ids of one event and what it takes from the request it was made in.

    Read-only by convention (not frozen, which costs a third of a microsecond an event).
    """

    user_id: str | None
    anonymous_id: str | None
    #: the request (or task) whose context the event takes: None for an event about
    #: someone else, or made outside any
    request: Scope | None
    #: the request's opt-out (GPC, consent) applies: build to validate, never queue
    opted_out: bool

    @property
    def identified(self) -> bool:
        return self.user_id is not None or self.anonymous_id is not None

    @property
    def about_request(self) -> bool:
        """The event is about the request's own visitor (so it may take the request's page)."""
        return self.request is not None

    @property
    def context(self) -> Mapping[str, Any]:
        return self.request.context if self.request is not None else {}


def resolve(current: Scope | None, *, user_id: Any = None, anonymous_id: Any = None) -> Identity:
    """The identity of an event that names ``user_id`` / ``anonymous_id`` (or nobody).

    Raises :class:`~segment_mw.InvalidEvent` for ids of the wrong type.
    """
    named_user = validated_id(user_id, "userId")
    named_anonymous = validated_id(anonymous_id, "anonymousId")
    if current is None:
        return Identity(named_user, named_anonymous, None, False)
    request_user = current.user_id  # asked of the framework once per event
    if _about_someone_else(current, request_user, named_user, named_anonymous):
        # Neither the request's anonymous id, nor its ip, user agent, page or campaign,
        # nor its visitor's opt-out: they describe the person making the request.
        return Identity(named_user, named_anonymous, None, False)
    return Identity(
        named_user or request_user,
        named_anonymous or current.anonymous_id,
        current,
        current.opted_out,
    )


def _about_someone_else(
    current: Scope, request_user: str | None, named_user: str | None, named_anonymous: str | None
) -> bool:
    if named_anonymous is not None and current.anonymous_id not in (None, named_anonymous):
        # Another browser's id, unless the event names the request's own user with it.
        return named_user is None or named_user != request_user
    # An anonymous request naming a user is its visitor signing up or logging in.
    return named_user is not None and request_user is not None and named_user != request_user


def set_user(user_id: Any) -> None:
    """Name the authenticated user of the current request or task, for what follows in it.

    For apps whose authentication the middleware cannot see (a FastAPI dependency, a
    custom token check): every later event of the request or task, and its pageview,
    carries this ``userId``. It reaches code run in a thread pool for the request (a
    plain ``def`` FastAPI dependency) and back, since the scope object is shared.
    ``set_user(None)`` forgets the name, leaving what the framework reports. Outside any
    request or task it binds a scope of its own for the current context.
    """
    if user_id is not None and as_user_id(user_id) is None:
        raise TypeError(
            f"set_user: expected a string, integer or UUID user id, got {type(user_id).__name__}"
        )
    current = scope_mod.current()
    if current is None:
        scope_mod.bind(Scope(user_id=user_id))
    else:
        current.user_id = user_id


# -- the anonymous id cookie -----------------------------------------------------------
# A visitor's cookie comes back with every page they view; the cache is keyed by what the
# client sends, so it is bounded in bytes (cache.py).
@memoize(max_bytes=512 * 1024, max_entry_bytes=1024)
def parse_id_cookie(raw: str | None) -> str | None:
    """An id from an analytics.js cookie: raw (2.0) or URL-encoded JSON string (classic)."""
    if not raw or len(raw) > 3 * MAX_ID_LENGTH + 6:  # longer cannot decode to an id
        return None
    value = unquote(raw).strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not value or len(value) > MAX_ID_LENGTH or not _ID_OK.fullmatch(value):
        return None
    if value in ("null", "undefined"):
        return None
    return value


@memoize(max_bytes=128 * 1024, max_entry_bytes=512)  # the same cookie on every page view
def ga_client_id(raw: str | None) -> str | None:
    """The GA4 client id in a ``_ga`` cookie (``GA1.1.1234567890.1700000000``), if valid."""
    if not raw or len(raw) > 64:
        return None
    parts = raw.strip().split(".")
    if len(parts) != 4 or not parts[0].startswith("GA"):
        return None
    client_id = f"{parts[2]}.{parts[3]}"
    return client_id if GA_CLIENT_ID.fullmatch(client_id) else None


def ga_session_ids(cookies: Mapping[str, str]) -> dict[str, str]:
    """The GA4 session id of each stream whose ``_ga_<stream>`` cookie the request had."""
    found: dict[str, str] = {}
    for name in filter(_IS_GA_SESSION, cookies):  # the filter runs in C: most cookies are not
        if len(found) >= GA_MAX_STREAMS:
            break
        raw = cookies[name]
        stream = name[len(GA_SESSION_PREFIX) :]
        parts = raw.strip().split(".") if raw and len(raw) <= 200 else []
        if not GA_STREAM.fullmatch(stream) or len(parts) < 3:
            continue
        if parts[0] == "GS1":
            session = parts[2]
        elif parts[0] == "GS2" and parts[2].startswith("s"):
            session = parts[2][1:].split("$", 1)[0]
        else:
            continue
        if GA_SESSION_ID.fullmatch(session):
            found[stream] = session
    return found


def cookie_user_id(cookies: Mapping[str, str], settings: Settings) -> str | None:
    """The ``ajs_user_id`` cookie's id, only where ``USER_ID_FROM_COOKIE`` opts in.

    The browser writes that cookie (any visitor can set it to anyone's id), so it is never
    a source of ``userId`` by default, and even when opted in only for pageviews of
    requests with no authenticated user.
    """
    if not settings.user_id_from_cookie:
        return None
    return parse_id_cookie(cookies.get(USER_ID_COOKIE))


def new_anonymous_id() -> str:
    return str(uuid.uuid4())


def anonymous_id_cookie(value: str, settings: Settings) -> str:
    """A ``Set-Cookie`` value in the analytics.js 2.0 format (the raw id)."""
    parts = [
        f"{ANONYMOUS_ID_COOKIE}={value}",
        f"expires={formatdate(time.time() + COOKIE_MAX_AGE, usegmt=True)}",
        f"Max-Age={COOKIE_MAX_AGE}",
        "Path=/",
        "SameSite=Lax",
    ]
    if settings.cookie_domain:
        parts.append(f"Domain={settings.cookie_domain}")
    if settings.cookie_secure:
        parts.append("Secure")
    return "; ".join(parts)


def _directives(cache_control: str | None) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in (cache_control or "").split(",")[:32]:
        name, _, value = item.partition("=")
        name = name.strip().lower()
        if name:
            found[name] = value.strip().strip('"')
    return found


def _seconds(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def shared_cache_may_store(cache_control: str | None, *, cache_middleware: bool) -> bool:
    """Whether a cache shared by many visitors may store this response (and its cookies).

    ``cache_middleware``: a caching layer of the app itself sits outside the middleware
    (Django's ``UpdateCacheMiddleware``), which stores a response with its own ``max-age``
    unless it is ``private`` or ``max-age=0`` (Django 4.2 reads no other directive; newer
    versions also skip ``no-cache`` and ``no-store``, where a cookie would have been safe:
    the rule errs on the side of never sharing an id).
    """
    directives = _directives(cache_control)
    if "private" in directives:
        return False
    if cache_middleware:
        return _seconds(directives.get("max-age")) != 0
    if "no-store" in directives:
        return False
    if "public" in directives or "s-maxage" in directives:
        return True
    max_age = _seconds(directives.get("max-age"))
    return max_age is not None and max_age > 0


def wants_cookie(
    rc: Any,
    settings: Settings,
    *,
    browser_sent: bool,
    app_set: bool,
    excluded_path: bool,
    cache_control: str | None,
    cache_middleware: bool = False,
) -> bool:
    """Whether the response should carry the ``ajs_anonymous_id`` the request minted.

    ``rc`` is the request's :class:`~segment_mw.capture.RequestContext`. Never overwrite
    an id (one the browser sent, even unreadable, or one the app set), never set one for
    a visitor who opted out or a crawler, and never attach a per-visitor cookie where a
    shared cache may keep it and hand it to every later visitor (assets and health checks
    on excluded paths, responses a shared cache may store).
    """
    if not (rc.new_anonymous_id and rc.anonymous_id and settings.set_cookie):
        return False
    if rc.opted_out or browser_sent or app_set or excluded_path:
        return False
    if shared_cache_may_store(cache_control, cache_middleware=cache_middleware):
        return False
    return not rc.is_bot  # last: the costliest check
