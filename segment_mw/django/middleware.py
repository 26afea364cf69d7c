"""The Django middleware: request context for the whole request, a pageview at response time.

It describes the request to the framework-free core (:func:`~segment_mw.capture.capture`),
binds the resulting scope while the view runs, asks :func:`~segment_mw.pageviews.skip_reason`
whether the response is a pageview, and sets the ``ajs_anonymous_id`` cookie when it minted
one. It works in both of Django's middleware modes, never raises into the app, and never
changes a response except to add that cookie: in particular it never loads the user or the
session itself, so it adds no ``Vary: Cookie``.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextvars import Token
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings as django_settings
from django.contrib.auth import SESSION_KEY
from django.core.exceptions import DisallowedHost
from django.core.signals import setting_changed
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.urls import ResolverMatch
from django.utils.functional import LazyObject, empty

from .. import metrics, pageviews
from .. import scope as scope_mod
from ..cache import BoundedCache
from ..capture import RequestContext, RequestInfo, capture
from ..client import get_client
from ..config import Settings
from ..identity import ANONYMOUS_ID_COOKIE, COOKIE_MAX_AGE, wants_cookie
from ..scope import Scope, as_user_id
from . import stack
from .apps import state

log = logging.getLogger("segment_mw.django")

GetResponse = Callable[[HttpRequest], HttpResponseBase]
AsyncGetResponse = Callable[[HttpRequest], Awaitable[HttpResponseBase]]

# Credentials are invisible to the core: nothing downstream can copy them into an event.
_HIDDEN_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
_UNPREFIXED = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}


_META_KEYS: dict[str, str | None] = {}  # header name -> META key; a plain dict is cheapest
_MAX_META_KEYS = 512


def _meta_key(name: str) -> str | None:
    try:
        return _META_KEYS[name]
    except KeyError:
        pass
    lowered = name.lower()
    key = (
        None
        if lowered in _HIDDEN_HEADERS
        else _UNPREFIXED.get(lowered) or "HTTP_" + lowered.upper().replace("-", "_")
    )
    if len(_META_KEYS) < _MAX_META_KEYS:  # names come from our code and the app's: few
        _META_KEYS[name] = key
    return key


class MetaHeaders(Mapping[str, str]):
    """The request's headers by lower-case name, read from ``request.META`` without a copy."""

    __slots__ = ("_meta",)

    def __init__(self, meta: Mapping[str, Any]) -> None:
        self._meta = meta

    def get(self, name: str, default: Any = None) -> Any:
        # The core reads a score of headers a request: one lookup each in the common case.
        key = _META_KEYS.get(name) or _meta_key(name)
        if key is None:
            return default
        value = self._meta.get(key, default)
        return value if value is default or type(value) is str else default

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value  # type: ignore[no-any-return]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[str]:
        for key, value in self._meta.items():
            if not isinstance(value, str):
                continue
            if key.startswith("HTTP_"):
                name = key[5:].lower().replace("_", "-")
                if name not in _HIDDEN_HEADERS:
                    yield name
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                yield key.lower().replace("_", "-")

    def __len__(self) -> int:
        return sum(1 for _ in self)


# What get_host() depends on besides the settings.
_HOST_META = (
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_FORWARDED_PORT",
    "HTTP_HOST",
    "SERVER_NAME",
    "SERVER_PORT",
)
_HOST_SETTINGS = frozenset(
    {"ALLOWED_HOSTS", "DEBUG", "USE_X_FORWARDED_HOST", "USE_X_FORWARDED_PORT"}
)
# Keyed by headers the client sends (probes with made-up hosts): bounded in bytes.
_hosts: BoundedCache[tuple[Any, ...], str] = BoundedCache(
    max_bytes=256 * 1024, max_entry_bytes=2048
)


def _forget_hosts(*, setting: str, **kwargs: Any) -> None:
    if setting in _HOST_SETTINGS:
        _hosts.clear()


setting_changed.connect(_forget_hosts, dispatch_uid="segment_mw.forget_hosts")


def _host(request: HttpRequest) -> str:
    """``request.get_host()``, remembered per distinct host headers and settings.

    Validating the host against ``ALLOWED_HOSTS`` costs more than all of the rest of the
    request description, and a site sees few distinct hosts.
    """
    meta = request.META
    key = tuple(map(meta.get, _HOST_META))
    host = _hosts.get(key)
    if host is None:
        try:
            host = request.get_host()
        except DisallowedHost:
            # Never echo a host Django refused; the server's own name is safe.
            host = str(meta.get("SERVER_NAME", ""))
            port = str(meta.get("SERVER_PORT", ""))
            if port and port not in ("80", "443"):
                host = f"{host}:{port}"
        _hosts.put(key, host)
    return host


def request_info(request: HttpRequest) -> RequestInfo:
    """Describe a Django request to the core."""
    meta = request.META
    return RequestInfo(
        method=request.method or "GET",
        scheme=request.scheme or "http",
        host=_host(request),
        path=request.path,
        query_string=str(meta.get("QUERY_STRING", "")),
        headers=MetaHeaders(meta),
        cookies=request.COOKIES,
        peer=meta.get("REMOTE_ADDR") or None,
    )


# -- identity ------------------------------------------------------------------------
def _id_of(user: Any) -> str | None:
    if not getattr(user, "is_authenticated", False):
        return None
    return as_user_id(getattr(user, "pk", None))


def session_user_id(request: HttpRequest) -> str | None:
    """The user id the request's session holds, read without making the response vary.

    Reading a session marks it accessed, and ``SessionMiddleware`` answers an accessed
    session with ``Vary: Cookie``, which would change the caching of every response; so
    the flag is put back as it was (as django-structlog does). The id is the one
    ``login()`` stored; unlike ``request.user`` it is not checked against the user's
    current password hash, which ``request.user`` does once the app evaluates it.
    """
    session = request.__dict__.get("session")
    if session is None:
        return None
    accessed = session.accessed
    try:
        value = session.get(SESSION_KEY)
    finally:
        session.accessed = accessed
    return as_user_id(value)


def authenticated_user_id(request: HttpRequest) -> str | None:
    """The id of the request's authenticated user as Django knows it now; never loads it.

    In order: a user object the app put on the request (``login()``, Django REST
    framework's authentication), the lazy ``request.user`` once evaluated, the result of
    ``await request.auser()``, and else the session's user id. Asked each time an event
    is built, so a login or logout during the request shows in what follows it.
    """
    attrs = request.__dict__
    user = attrs.get("user")
    if isinstance(user, LazyObject):
        user = user._wrapped
        if user is empty:
            user = attrs.get("_cached_user", empty)
    if user is not None and user is not empty:
        return _id_of(user)
    cached = attrs.get("_acached_user")
    if cached is not None:
        return _id_of(cached)
    return session_user_id(request)


def _session_unread(request: HttpRequest) -> bool:
    """Whether the browser sent a session the async middleware should load up front.

    Events are built in synchronous code, where an async view must not query the session
    store, so its user id is read before the view runs (no session cookie: no user).
    """
    return (
        request.__dict__.get("session") is not None
        and django_settings.SESSION_COOKIE_NAME in request.COOKIES
    )


async def _aprime_session(request: HttpRequest) -> None:
    try:
        await sync_to_async(session_user_id)(request)  # loads and caches the session
    except Exception:
        _failed("django_user_failed", "could not read the request's session")


def _resolve_user_id(resolver: Callable[[Any], Any], request: HttpRequest) -> str | None:
    try:
        if iscoroutinefunction(resolver):
            return as_user_id(async_to_sync(resolver)(request))
        return as_user_id(resolver(request))
    except Exception:
        _failed("user_id_failed", "the USER_ID callable failed")
        return None


async def _aresolve_user_id(resolver: Callable[[Any], Any], request: HttpRequest) -> str | None:
    try:
        if iscoroutinefunction(resolver):
            return as_user_id(await resolver(request))
        # A user's callable may query the database, which async code must not do directly.
        return as_user_id(await sync_to_async(resolver)(request))
    except Exception:
        _failed("user_id_failed", "the USER_ID callable failed")
        return None


# -- the request -------------------------------------------------------------------------
@dataclass(slots=True)
class _Captured:
    info: RequestInfo
    rc: RequestContext
    settings: Settings
    token: Token[Scope | None]


def _failed(kind: str, message: str) -> None:
    metrics.count(kind)
    metrics.warn_once_per_interval(kind, message, logger=log, exc_info=True)


def _current_settings() -> Settings | None:
    """The configured settings, or None when ``SEGMENT_MW`` is invalid (the checks say why)."""
    if state.configuration_error is not None:
        return None
    return get_client().settings


def _begin(request: HttpRequest, settings: Settings, user_id: str | None) -> _Captured:
    info = request_info(request)
    # The app's USER_ID callable names the user once; otherwise Django is asked per event.
    source = None if settings.user_id else functools.partial(authenticated_user_id, request)
    rc = capture(info, settings, user_id=user_id, user_source=source)
    token = scope_mod.bind(rc.scope)
    return _Captured(info, rc, settings, token)


@lru_cache(maxsize=16)
def _url_prefixes(*urls: str | None) -> tuple[tuple[str, ...], re.Pattern[str] | None]:
    """Path regexes for STATIC_URL and MEDIA_URL (full URLs count by their path)."""
    patterns = []
    for url in urls:
        if not url:
            continue
        path = urlsplit(str(url)).path
        if not path.startswith("/"):
            path = "/" + path
        if path != "/":  # a prefix of "/" would exclude every page
            patterns.append("^" + re.escape(path))
    compiled = re.compile("|".join(patterns)) if patterns else None
    return tuple(patterns), compiled


def _route_name(match: ResolverMatch | None) -> str | None:
    # view_name is the URL name with its namespaces ("shop:product"), or the view's dotted
    # path for a route without a name.
    return (match.view_name or None) if match is not None else None


def _title(response: HttpResponseBase, content_type: str | None, limit: int) -> str:
    # Only a body already in memory and not encoded: a streaming body is never consumed.
    if not isinstance(response, HttpResponse) or response.has_header("Content-Encoding"):
        return ""
    return pageviews.extract_title(response.content, content_type, limit)


def _finish(request: HttpRequest, response: HttpResponseBase, captured: _Captured) -> None:
    rc, settings = captured.rc, captured.settings
    static: re.Pattern[str] | None = None
    try:
        patterns, static = _url_prefixes(
            getattr(django_settings, "STATIC_URL", None),
            getattr(django_settings, "MEDIA_URL", None),
        )
        match = getattr(request, "resolver_match", None)
        view_opts = pageviews.view_options(match.func) if match is not None else {}
        content_type = response.get("Content-Type")
        if view_opts.get("skip"):
            reason: str | None = "skipped by the view"
        else:
            reason = pageviews.skip_reason(
                captured.info, rc, settings, response.status_code, content_type, patterns
            )
        if reason is None:
            pv = settings.pageviews
            if pv["TITLE"] and not rc.title:
                rc.scope.set_title(_title(response, content_type, int(pv["TITLE_MAX_BYTES"])))
            pageviews.emit_pageview(
                rc, settings, route_name=_route_name(match), view_opts=view_opts
            )
    except Exception:
        _failed("django_pageview_failed", "pageview failed")
    try:
        if rc.new_anonymous_id and wants_cookie(
            rc,
            settings,
            browser_sent=ANONYMOUS_ID_COOKIE in request.COOKIES,
            app_set=ANONYMOUS_ID_COOKIE in response.cookies,
            # Static and media files too: shared caches keep them.
            excluded_path=bool(static is not None and static.search(request.path))
            or pageviews.is_excluded_path(request.path, settings),
            cache_control=response.get("Cache-Control"),
            cache_middleware=stack.cache_middleware_outside(),
        ):
            response.set_cookie(
                ANONYMOUS_ID_COOKIE,
                str(rc.anonymous_id),
                max_age=COOKIE_MAX_AGE,
                path="/",
                domain=settings.cookie_domain,
                secure=settings.cookie_secure,
                httponly=False,  # analytics.js reads it
                samesite="Lax",
            )
    except Exception:
        _failed("django_cookie_failed", "could not set the anonymous id cookie")


def _is_async_view(view: Any) -> bool:
    try:
        return _async_views(view)
    except TypeError:  # an unhashable callable
        return iscoroutinefunction(view)


# Asked of every request; a site has a fixed set of views (as_view() runs at start).
_async_views = lru_cache(maxsize=4096)(iscoroutinefunction)


class SegmentMiddleware:
    """Record pageviews and bind the request's Segment context (sync and async capable).

    Place it after ``django.contrib.auth.middleware.AuthenticationMiddleware``.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse | AsyncGetResponse) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
        else:
            # Under the WSGI handler an async view runs in an event loop of its own, where
            # its events cannot load the session: it is loaded just before such a view. An
            # instance attribute, so that the async middleware has no view hook, which
            # Django would run through a thread on every request.
            setattr(self, "process_view", self._before_view)  # noqa: B010

    def _before_view(self, request: HttpRequest, view: Any, *args: Any) -> None:
        try:
            if _is_async_view(view) and _session_unread(request):
                session_user_id(request)
        except Exception:
            _failed("django_user_failed", "could not read the request's session")

    def __repr__(self) -> str:
        return f"<SegmentMiddleware async_mode={self.async_mode}>"

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        get_response: GetResponse = self.get_response  # type: ignore[assignment]
        captured = None
        try:
            settings = _current_settings()
            if settings is not None:
                resolver = settings.user_id
                user_id = _resolve_user_id(resolver, request) if resolver else None
                captured = _begin(request, settings, user_id)
        except Exception:
            _failed("django_capture_failed", "could not capture the request")
        if captured is None:
            return get_response(request)
        try:
            response = get_response(request)
            _finish(request, response, captured)
        finally:
            scope_mod.reset(captured.token)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        get_response: AsyncGetResponse = self.get_response  # type: ignore[assignment]
        captured = None
        try:
            settings = _current_settings()
            if settings is not None:
                resolver = settings.user_id
                user_id = await _aresolve_user_id(resolver, request) if resolver else None
                if resolver is None and _session_unread(request):
                    await _aprime_session(request)
                captured = _begin(request, settings, user_id)
        except Exception:
            _failed("django_capture_failed", "could not capture the request")
        if captured is None:
            return await get_response(request)
        try:
            response = await get_response(request)
            _finish(request, response, captured)
        finally:
            scope_mod.reset(captured.token)
        return response
