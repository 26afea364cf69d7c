"""System checks (``manage.py check``) for the settings, the queue and the middleware.

Errors: ``segment_mw.E001`` invalid ``SEGMENT_MW``, ``E002`` a Segment destination without
a write key, ``E003`` an unusable ``QUEUE_URL``, ``E004`` a Redis too old for the queue.
Warnings: ``segment_mw.W001`` middleware missing, ``W002`` middleware before
``AuthenticationMiddleware``, ``W003`` no destination, ``W004`` middleware after
``FetchFromCacheMiddleware`` (cache hits record no pageview), ``W005`` a Redis
``maxmemory-policy`` that can evict the queue, ``W006`` one that can evict its leases,
``W007`` the local SQLite fallback with ``DEBUG = False``. The Redis checks connect with a
short timeout and say nothing when Redis does not answer (``segment-mw status`` does).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register

from ..config import Settings, hide_password, load_settings
from ..errors import ConfigurationError
from ..queue import DeadLetterLimits, open_queue
from . import stack
from .apps import raw_settings
from .stack import AUTH_MIDDLEWARE, FETCH_CACHE_MIDDLEWARE, MIDDLEWARE

SERVER_CHECK_TIMEOUT = 1.0


@register()
def check_middleware(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    middleware = stack.current()
    ours = stack.position(middleware, MIDDLEWARE)
    if ours is None:
        return [
            Warning(
                "SegmentMiddleware is not in MIDDLEWARE: no pageviews are recorded and "
                "events from views carry no request context.",
                hint=f"Add {MIDDLEWARE!r} to MIDDLEWARE, after {AUTH_MIDDLEWARE!r}.",
                id="segment_mw.W001",
            )
        ]
    messages: list[CheckMessage] = []
    auth = stack.position(middleware, AUTH_MIDDLEWARE)
    if auth is not None and auth > ours:
        messages.append(
            Warning(
                "SegmentMiddleware comes before AuthenticationMiddleware, so it cannot see "
                "the logged-in user: events get no userId from request.user.",
                hint=f"Move {MIDDLEWARE!r} below {AUTH_MIDDLEWARE!r} in MIDDLEWARE.",
                id="segment_mw.W002",
            )
        )
    if stack.before_ours(middleware, FETCH_CACHE_MIDDLEWARE):
        messages.append(
            Warning(
                "SegmentMiddleware comes after FetchFromCacheMiddleware: pages served from "
                "Django's cache never reach it, so they record no pageview.",
                hint=f"Place {MIDDLEWARE!r} after {AUTH_MIDDLEWARE!r} and before "
                f"{FETCH_CACHE_MIDDLEWARE!r} (which stays last) in MIDDLEWARE.",
                id="segment_mw.W004",
            )
        )
    return messages


def _queue_url_problem(url: str) -> str | None:
    if url.startswith(("redis+", "rediss+")):
        return None  # several hosts: load_settings already read and checked them all
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError as exc:
        return str(exc)
    if parts.scheme in ("redis", "rediss"):
        if not parts.hostname:
            return "a redis:// URL needs a host"
        db = parts.path.strip("/")
        if db and not db.isdigit():
            return f"the database in the path must be a number, got {db!r}"
    if parts.scheme == "unix" and not parts.path:
        return "a unix:// URL needs the socket's path"
    return None


def _settings_errors(raw: Any) -> tuple[Settings | None, list[CheckMessage]]:
    if not isinstance(raw, Mapping):
        return None, [
            Error(
                f"SEGMENT_MW must be a dict, got {type(raw).__name__}.",
                hint="SEGMENT_MW = {'QUEUE_URL': ..., 'DESTINATIONS': {...}}",
                id="segment_mw.E001",
            )
        ]
    try:
        loaded = load_settings(raw)
    except ConfigurationError as exc:
        message = str(exc)
        if message.startswith("QUEUE_URL"):
            error = Error(
                f"SEGMENT_MW: {message}",
                hint="Use redis://host:6379/0 (or redis+cluster://, redis+sentinel://) in "
                "production, sqlite:///path/queue.sqlite3 without a server, or memory:// in "
                "tests.",
                id="segment_mw.E003",
            )
        elif ".write_key" in message:
            error = Error(
                f"SEGMENT_MW: {message}",
                hint="Set 'write_key' in the destination's options or the SEGMENT_WRITE_KEY "
                "environment variable.",
                id="segment_mw.E002",
            )
        else:
            error = Error(
                f"SEGMENT_MW: {message}",
                hint="See the settings table in the segment_mw documentation.",
                id="segment_mw.E001",
            )
        return None, [error]
    problem = _queue_url_problem(loaded.queue_url)
    if problem is not None:
        source = "SEGMENT_MW_QUEUE_URL" if os.environ.get("SEGMENT_MW_QUEUE_URL") else "QUEUE_URL"
        return loaded, [
            Error(
                f"SEGMENT_MW: {source} is not usable: {problem}.",
                hint="For example redis://localhost:6379/0.",
                id="segment_mw.E003",
            )
        ]
    return loaded, []


@register()
def check_settings(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    loaded, messages = _settings_errors(raw_settings())
    if loaded is not None and not loaded.destinations:
        messages.append(
            Warning(
                "SEGMENT_MW has no DESTINATIONS: events are not delivered anywhere.",
                hint="Add one, e.g. 'DESTINATIONS': {'Segment': {'type': 'segment', "
                "'write_key': ...}}, or set the SEGMENT_WRITE_KEY environment variable.",
                id="segment_mw.W003",
            )
        )
    return messages


@register()
def check_queue(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    loaded, errors = _settings_errors(raw_settings())
    if loaded is None or errors or not loaded.enabled:
        return []  # check_settings reports the errors; a disabled client queues nothing
    messages: list[CheckMessage] = []
    if loaded.queue_url_source == "default" and not settings.DEBUG:
        messages.append(
            Warning(
                "SEGMENT_MW has no QUEUE_URL, so with DEBUG = False events go to a local "
                f"SQLite file ({loaded.queue_url}): each server keeps a queue of its own, "
                "delivered by a thread in each web process, and lost with the machine.",
                hint="Set QUEUE_URL (or SEGMENT_MW_QUEUE_URL) to redis://host:6379/0 and run "
                "a Celery worker; name the sqlite:/// URL explicitly if the embedded queue "
                "is what you want.",
                id="segment_mw.W007",
            )
        )
    if loaded.queue_url.startswith(("redis", "unix")):
        messages.extend(_redis_server_messages(loaded))
    return messages


def _redis_server_messages(loaded: Settings) -> list[CheckMessage]:
    import redis

    queue = open_queue(
        loaded.queue_url,
        prefix=loaded.queue_prefix,
        timeout=SERVER_CHECK_TIMEOUT,
        dead_letters=DeadLetterLimits(loaded.dead_letter_max_events, loaded.dead_letter_max_age),
        shards=loaded.queue_shards,
    )
    try:
        warnings = queue.check_server()
    except ConfigurationError as exc:
        return [
            Error(
                f"SEGMENT_MW: {exc}.",
                hint="segment_mw needs Redis 7.0 or later.",
                id="segment_mw.E004",
            )
        ]
    except (redis.RedisError, OSError):
        return []  # not reachable now: a deployment problem, not a settings one
    finally:
        queue.close()
    where = hide_password(loaded.queue_url)
    return [
        Warning(
            f"SEGMENT_MW: the queue's Redis ({where}): {warning.message}",
            hint="CONFIG SET maxmemory-policy noeviction (and in redis.conf), or give "
            "segment_mw a Redis of its own with that policy.",
            id="segment_mw.W005" if warning.kind == "evicts-queue" else "segment_mw.W006",
        )
        for warning in warnings
    ]
