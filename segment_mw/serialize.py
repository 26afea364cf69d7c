"""One-pass JSON serialisation of events with orjson, exact for money and strict for the rest.

Decimals reach the wire as exact JSON numbers through ``orjson.Fragment`` (never through
float), sets become lists, and anything orjson cannot encode is reported with the path of
the offending value so the caller can find it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson

from .errors import InvalidEvent

_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise TypeError("non-finite Decimal")
        return orjson.Fragment(str(value).encode())
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):  # mappings that are not dicts (MappingProxyType, ...)
        return dict(value)
    raise TypeError(f"type {type(value).__name__} is not JSON serialisable")


def dumps(obj: Any) -> bytes:
    """Serialise ``obj``; raise :class:`InvalidEvent` naming the first bad path."""
    try:
        return orjson.dumps(obj, default=_default, option=_OPTIONS)
    except TypeError as exc:
        path, reason = _find_bad_value(obj, "")
        raise InvalidEvent(f"{path or 'event'} cannot be serialised: {reason or exc}") from None


def _leaf_ok(value: Any) -> str | None:
    """Why a scalar cannot be serialised, or None when orjson (with our default) takes it."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return "string is not valid UTF-8 (a lone surrogate)"
        return None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if -(2**63) <= value < 2**64 else "integer exceeds 64-bit range"
    if isinstance(value, float):
        return None  # orjson writes NaN and infinities as null, like the browser does
    if isinstance(value, Decimal):
        return None if value.is_finite() else "Decimal is not finite"
    if isinstance(value, (dt.datetime, dt.date, dt.time, uuid.UUID, enum.Enum)):
        return None
    return f"type {type(value).__name__} is not JSON serialisable"


MAX_DEPTH = 254  # orjson's own nesting limit


def _find_bad_value(value: Any, path: str, depth: int = 0) -> tuple[str, str | None]:
    if depth > MAX_DEPTH:  # also ends the search in a reference cycle
        return (path or "event", f"nested more than {MAX_DEPTH} levels deep (a cycle?)")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # Field by field, not asdict(): that deep-copies, and fails on what cannot be copied.
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool, enum.Enum, uuid.UUID, dt.date)) and (
                key is not None
            ):
                return (path or "event", f"key of type {type(key).__name__} is not allowed")
            child = f"{path}.{key}" if path else str(key)
            found = _find_bad_value(item, child, depth + 1)
            if found[1] is not None:
                return found
        return (path, None)
    if isinstance(value, (list, tuple, set, frozenset)):
        for index, item in enumerate(value):
            found = _find_bad_value(item, f"{path}[{index}]", depth + 1)
            if found[1] is not None:
                return found
        return (path, None)
    return (path, _leaf_ok(value))
