"""Where the middleware stands in ``MIDDLEWARE``, relative to the ones whose order matters.

The system checks and the middleware itself both ask: the checks to warn about an order
that loses the user or cached pageviews, the middleware to know whether Django's cache
middleware sits outside it and will store the cookies it sets. Answers are remembered per
``MIDDLEWARE`` value, so ``override_settings`` is seen at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from django.conf import settings
from django.utils.module_loading import import_string

MIDDLEWARE = "segment_mw.django.SegmentMiddleware"
AUTH_MIDDLEWARE = "django.contrib.auth.middleware.AuthenticationMiddleware"
UPDATE_CACHE_MIDDLEWARE = "django.middleware.cache.UpdateCacheMiddleware"
FETCH_CACHE_MIDDLEWARE = "django.middleware.cache.FetchFromCacheMiddleware"


def _is_subclass(path: str, base_path: str) -> bool:
    if path == base_path:
        return True
    try:
        found, base = import_string(path), import_string(base_path)
    except ImportError:
        return False
    return isinstance(found, type) and isinstance(base, type) and issubclass(found, base)


def position(middleware: Sequence[str], base_path: str) -> int | None:
    """The index of the first entry that is ``base_path`` or a subclass of it."""
    for index, path in enumerate(middleware):
        if isinstance(path, str) and _is_subclass(path, base_path):
            return index
    return None


def current() -> tuple[str, ...]:
    return tuple(p for p in getattr(settings, "MIDDLEWARE", None) or () if isinstance(p, str))


def before_ours(middleware: tuple[str, ...], base_path: str) -> bool:
    """Whether a ``base_path`` middleware runs outside ours (earlier in the list)."""
    ours = position(middleware, MIDDLEWARE)
    other = position(middleware, base_path)
    return other is not None and (ours is None or other < ours)


@lru_cache(maxsize=16)
def _cache_middleware_outside(middleware: tuple[str, ...]) -> bool:
    return before_ours(middleware, UPDATE_CACHE_MIDDLEWARE)


def cache_middleware_outside() -> bool:
    """Whether Django's cache middleware stores what this middleware returns (site cache)."""
    return _cache_middleware_outside(current())
