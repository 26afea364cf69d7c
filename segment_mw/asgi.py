"""Server-side pageviews for ASGI apps (Starlette, FastAPI, or any bare ASGI callable).

:class:`SegmentMiddleware` is pure ASGI and stateless across requests: it describes each
HTTP request as a :class:`~segment_mw.capture.RequestInfo`, hands it to the shared capture
core, binds the resulting scope for the endpoint (and ``@tracked`` code) to read, and
watches ``send`` for the response. The pageview decision is the core's, taken at
``http.response.start``; the event is queued once the final body message has gone out,
with the ``<title>`` read only from a single, already complete body message (streams pass
through untouched). ``lifespan`` and ``websocket`` scopes pass straight through, and
Starlette is never imported: any ASGI server and app will do.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

from . import metrics
from . import scope as scope_mod
from .capture import RequestContext, RequestInfo, capture
from .client import get_client
from .config import Settings
from .errors import ConfigurationError
from .identity import ANONYMOUS_ID_COOKIE, anonymous_id_cookie, wants_cookie
from .pageviews import (
    emit_pageview,
    extract_title,
    is_excluded_path,
    skip_reason,
    view_options,
)
from .scope import as_user_id

__all__ = ["SegmentMiddleware", "request_info", "user_id_from_scope"]

log = logging.getLogger("segment_mw.asgi")

# The ASGI types, spelled as Starlette spells them so the middleware type-checks there too.
ASGIScope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[ASGIScope, Receive, Send], Awaitable[None]]
UserIdResolver = Callable[[ASGIScope], Any]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# What a Host header may hold; anything else (a path, spaces, junk) is not a host.
_HOST = re.compile(r"[A-Za-z0-9._~\-]+(?::\d{1,5})?|\[[0-9A-Fa-f:.]+\](?::\d{1,5})?")
_COOKIE_PREFIX = f"{ANONYMOUS_ID_COOKIE}="
# Response messages after which nothing more of the body follows.
_FILE_SENDS = ("http.response.pathsend", "http.response.zerocopysend")


def _text(value: Any) -> str:
    # latin-1 maps every byte to a character, so no header bytes can make this raise.
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("latin-1")
    return str(value)


# Header name as sent -> its lower-case text. Browsers send the same dozen or two names on
# every request; the caps keep a flood of made-up names from growing it past ~150 KiB
# (those are decoded each time). A plain dict, not a cache.py memo: this is looked up for
# every header of every request, where a memo's bookkeeping would cost what it saves.
_NAMES: dict[Any, str] = {}
_MAX_NAMES = 512
_MAX_NAME = 48


def _name(raw: Any) -> str:
    key = _text(raw).lower()
    if type(raw) is bytes and len(raw) <= _MAX_NAME and len(_NAMES) < _MAX_NAMES:
        _NAMES[raw] = key
    return key


def _header_name(raw: Any) -> str:
    """The lower-case text of a header name, of whatever type the server or app used."""
    try:
        return _NAMES.get(raw) or _name(raw)
    except TypeError:  # an unhashable buffer
        return _text(raw).lower()


def _headers(raw: Iterable[Any]) -> dict[str, str]:
    headers: dict[str, str] = {}
    names = _NAMES
    for name, value in raw:
        try:  # bytes, as servers send them: the per-request hot path (_header_name inlined)
            key = names.get(name) or _name(name)
            text = value.decode("latin-1")
        except (AttributeError, TypeError):  # str or a buffer from an unusual server
            key, text = _text(name).lower(), _text(value)
        if key in headers:
            # Repeated headers fold into one, as HTTP says, except cookies (RFC 6265).
            headers[key] += ("; " if key == "cookie" else ", ") + text
        else:
            headers[key] = text
    return headers


def _cookies(header: str | None) -> dict[str, str]:
    cookies: dict[str, str] = {}
    if not header:
        return cookies
    for chunk in header.split(";"):
        name, sep, value = chunk.partition("=")
        name = name.strip()
        if sep and name:
            cookies[name] = value.strip()  # the last one wins, as in Django and Starlette
    return cookies


def _host(scope: ASGIScope, headers: Mapping[str, str], scheme: str) -> str:
    host = headers.get("host", "").strip()
    if host and _HOST.fullmatch(host):
        return host
    server = scope.get("server")
    if server:
        name, port = str(server[0]), server[1]
        if ":" in name and not name.startswith("["):
            name = f"[{name}]"
        return name if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{name}:{port}"
    return "localhost"


def _full_path(scope: ASGIScope) -> str:
    path = str(scope.get("path") or "/")
    root = str(scope.get("root_path") or "").rstrip("/")
    # Current servers and Starlette put root_path inside path; older ones left it out.
    if root and path != root and not path.startswith(root + "/"):
        path = root + path
    return path


# Credentials are invisible to the core: nothing downstream can copy them into an event.
_HIDDEN_HEADERS = ("authorization", "proxy-authorization", "cookie")


def request_info(scope: ASGIScope) -> RequestInfo:
    """The neutral description of an HTTP scope (headers decoded as latin-1)."""
    headers = _headers(scope.get("headers") or ())
    cookies = _cookies(headers.get("cookie"))
    for name in _HIDDEN_HEADERS:
        headers.pop(name, None)
    scheme = str(scope.get("scheme") or "http")
    client = scope.get("client")
    return RequestInfo(
        method=str(scope.get("method") or "GET").upper(),
        scheme=scheme,
        host=_host(scope, headers, scheme),
        path=_full_path(scope),
        query_string=_text(scope.get("query_string") or b""),
        headers=headers,
        cookies=cookies,
        peer=str(client[0]) if client else None,
    )


def user_id_from_scope(scope: ASGIScope) -> str | None:
    """The id of ``scope["user"]`` when an authentication middleware set an authenticated one."""
    user = scope.get("user")
    if user is None:
        return None
    try:
        authenticated = getattr(user, "is_authenticated", False)
        if callable(authenticated):
            authenticated = authenticated()
    except Exception:
        return None
    if not authenticated:
        return None
    # Starlette's users name themselves by ``identity``; ORM users by ``id``.
    for attribute in ("identity", "id", "username"):
        value = _attribute_id(user, attribute)
        if value is not None:
            return value
    return None


def _attribute_id(user: Any, attribute: str) -> str | None:
    try:
        return as_user_id(getattr(user, attribute, None))
    except Exception:  # Starlette's BaseUser.identity raises NotImplementedError
        return None


def _route_name(scope: ASGIScope) -> str | None:
    name = getattr(scope.get("route"), "name", None)
    return name if isinstance(name, str) and name else None


def _failed(kind: str) -> None:
    metrics.count("middleware_error")
    metrics.warn_once_per_interval(
        "middleware_error", "ASGI middleware error (%s)", kind, logger=log, exc_info=True
    )


SHUTDOWN_DRAIN_TIMEOUT = 2.0


def _handing_over_at_shutdown(send: Send) -> Send:
    """Push what the producer holds before the app reports its shutdown complete.

    Servers such as uvicorn re-raise SIGTERM once the app has shut down, which ends the
    process without running exit hooks: this is the last moment the buffer can go out.
    The lifespan messages themselves pass through unchanged.
    """

    async def wrapped(message: Message) -> None:
        if message.get("type") == "lifespan.shutdown.complete":
            try:
                producer = get_client().producer
                try:
                    asyncio.get_running_loop()
                except RuntimeError:  # another event loop (trio): a short block at shutdown
                    producer.drain(SHUTDOWN_DRAIN_TIMEOUT)
                else:
                    await asyncio.to_thread(producer.drain, SHUTDOWN_DRAIN_TIMEOUT)
            except Exception:
                _failed("shutdown_drain")
        await send(message)

    return wrapped


class SegmentMiddleware:
    """Record pageviews and bind the request's Segment scope, for any ASGI app.

    ``user_id`` is a callable receiving the ASGI scope (it overrides the ``USER_ID``
    setting and ``scope["user"]``); ``exclude_paths`` are regexes added to
    ``PAGEVIEWS["EXCLUDE_PATHS"]``. Everything else comes from the current settings,
    read on every request so that ``segment_mw.configure()`` applies at once.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        user_id: UserIdResolver | None = None,
        exclude_paths: Iterable[str] = (),
    ) -> None:
        if user_id is not None and not callable(user_id):
            raise ConfigurationError(f"user_id: expected a callable, got {user_id!r}")
        if inspect.iscoroutinefunction(user_id):
            # It is called at response start too, where nothing may wait on the network.
            raise ConfigurationError("user_id: expected a plain function, not an async one")
        patterns = (exclude_paths,) if isinstance(exclude_paths, str) else tuple(exclude_paths)
        for pattern in patterns:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as exc:
                raise ConfigurationError(f"exclude_paths: {pattern!r}: {exc}") from None
        self.app = app
        self.user_id = user_id
        self.exclude_paths = patterns

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, _handing_over_at_shutdown(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            exchange = _Exchange(self, scope, send)
        except Exception:
            _failed("capture")
            await self.app(scope, receive, send)
            return
        token = scope_mod.bind(exchange.rc.scope)
        try:
            await self.app(scope, receive, exchange.send)
        finally:
            scope_mod.reset(token)

    def resolve_user_id(self, scope: ASGIScope, settings: Settings) -> str | None:
        """The user id of a request: the resolver's answer, or else ``scope["user"]``'s."""
        resolver = self.user_id or settings.user_id
        if resolver is None:
            return user_id_from_scope(scope)
        try:
            value = resolver(scope)
            if inspect.isawaitable(value):
                if inspect.iscoroutine(value):
                    value.close()  # never awaited: no "coroutine was never awaited" warning
                raise TypeError("the user id resolver returned an awaitable, not an id")
            return as_user_id(value)
        except Exception:
            _failed("user_id resolver")
            return None


class _Exchange:
    """One request's state: the captured context and what the response has shown so far."""

    __slots__ = (
        "body_started",
        "content_type",
        "done",
        "encoded",
        "info",
        "middleware",
        "pageview",
        "rc",
        "scope",
        "send_next",
        "settings",
        "view_opts",
    )

    def __init__(self, middleware: SegmentMiddleware, scope: ASGIScope, send: Send) -> None:
        self.middleware = middleware
        self.scope = scope
        self.send_next = send
        self.settings = get_client().settings
        self.info = request_info(scope)
        # Asked each time an event is built: an authentication middleware inside this one
        # sets scope["user"] only when its turn comes, and set_user() overrides it.
        source = functools.partial(middleware.resolve_user_id, scope, self.settings)
        self.rc: RequestContext = capture(self.info, self.settings, user_source=source)
        self.pageview = False  # decided at response start
        self.done = False  # the pageview was emitted (or given up on)
        self.body_started = False
        self.content_type: str | None = None
        self.encoded = False
        self.view_opts: Mapping[str, Any] = {}  # the endpoint's @pageview options

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            try:
                message = self.start(message)
            except Exception:
                self.pageview = False
                _failed("response start")
            await self.send_next(message)
        elif kind == "http.response.body" and self.pageview and not self.done:
            more = bool(message.get("more_body", False))
            if not more and not self.body_started:
                self.take_title(message.get("body", b""))
            self.body_started = True
            await self.send_next(message)
            if not more:
                self.emit()
        else:
            await self.send_next(message)
            if (
                kind in _FILE_SENDS
                and self.pageview
                and not self.done
                and not message.get("more_body", False)
            ):
                self.emit()

    def start(self, message: Message) -> Message:
        rc, scope, settings = self.rc, self.scope, self.settings
        endpoint = scope.get("endpoint")
        self.view_opts = view_options(endpoint) if endpoint is not None else {}
        # The view's decorator under what the view set for this request.
        for key, value in self.view_opts.items():
            rc.scope.pageview.setdefault(key, value)
        headers = list(message.get("headers") or ())
        has_cookie = False
        cache_control = None
        for name, value in headers:
            key = _header_name(name)
            if key == "content-type":
                self.content_type = _text(value)
            elif key == "content-encoding":
                self.encoded = _text(value).strip().lower() not in ("", "identity")
            elif key == "cache-control":
                cache_control = _text(value)
            elif key == "set-cookie" and _text(value).lstrip().startswith(_COOKIE_PREFIX):
                has_cookie = True
        reason = skip_reason(
            self.info,
            rc,
            settings,
            int(message["status"]),
            self.content_type,
            self.middleware.exclude_paths,
        )
        self.pageview = reason is None
        if rc.new_anonymous_id and wants_cookie(
            rc,
            settings,
            browser_sent=ANONYMOUS_ID_COOKIE in self.info.cookies,
            app_set=has_cookie,
            excluded_path=is_excluded_path(self.info.path, settings, self.middleware.exclude_paths),
            cache_control=cache_control,
        ):
            cookie = anonymous_id_cookie(str(rc.anonymous_id), settings)
            # A new message and list: the app's own may be reused across requests.
            message = {**message, "headers": [*headers, (b"set-cookie", cookie.encode())]}
        return message

    def take_title(self, body: Any) -> None:
        pv = self.settings.pageviews
        if not pv["TITLE"] or self.encoded or not body:
            return
        try:
            limit = int(pv["TITLE_MAX_BYTES"])
            self.rc.scope.set_title(extract_title(bytes(body[:limit]), self.content_type, limit))
        except Exception:
            _failed("title")

    def emit(self) -> None:
        self.done = True
        try:
            emit_pageview(
                self.rc,
                self.settings,
                route_name=_route_name(self.scope),
                view_opts=self.view_opts,
            )
        except Exception:
            _failed("pageview")
