"""Column types: inferred from a value for a new column, and values fitted to existing ones.

Segment's warehouse types are timestamp, integer, float, boolean and varchar, and a column
takes the type of the value that first needs it. Here a number of either kind becomes
``numeric``: exact for money (a Decimal arrives as an exact JSON number), and an integer
that comes first cannot make a column that rounds every later fraction (the precision loss
Segment's documentation warns of). An ISO-8601 date-time string becomes ``timestamptz``,
any other string ``text``. A value that does not fit the column it lands in is converted
where that is meaningful and dropped (stored as NULL) where not — Segment's "best effort
conversion ... fields that cannot be casted may be dropped" — and :func:`fit` says which.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import re
from collections.abc import Callable
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from ..serialize import dumps

TEXT = "text"
NUMERIC = "numeric"
BOOLEAN = "boolean"
TIMESTAMPTZ = "timestamp with time zone"

_DATETIME = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|z|[+-]\d{2}(:?\d{2})?)?",
    re.ASCII,
)
_TRUE = frozenset({"true", "t", "yes", "y", "on", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "off", "0"})
_INT_RANGES = {
    "smallint": 2**15,
    "integer": 2**31,
    "bigint": 2**63,
}


class JsonText(str):
    """An array, stringified as JSON (Segment stores arrays as text)."""

    __slots__ = ()


class Fit(enum.Enum):
    AS_IS = "as is"
    CONVERTED = "converted"
    DROPPED = "dropped"


def parse_datetime(value: str) -> dt.datetime | None:
    """An aware datetime from an ISO-8601 date-time string (naive means UTC), else None."""
    if not _DATETIME.fullmatch(value):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.timezone.utc)


def infer(value: Any) -> str:
    """The type a new column gets from its first value (never None: nulls make no column)."""
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, (int, float, Decimal)):
        return NUMERIC
    if isinstance(value, dt.datetime):
        return TIMESTAMPTZ
    if isinstance(value, str) and parse_datetime(value) is not None:
        return TIMESTAMPTZ
    return TEXT


def kind_of(sql_type: str) -> str:
    """A catalog type (``format_type`` output) reduced to what :func:`fit` tells apart."""
    base = sql_type.split("(", 1)[0].strip()
    if base in ("text", "character varying", "character", "citext", "name"):
        return "text"
    if base == "numeric":
        return "numeric"
    if base in _INT_RANGES:
        return base
    if base in ("double precision", "real"):
        return "float"
    if base in ("boolean", "timestamp with time zone", "timestamp without time zone", "date"):
        return base
    if base in ("json", "jsonb"):
        return "json"
    return "other"  # uuid, inet, enums...: PostgreSQL parses the text, or refuses the row


def max_length(sql_type: str) -> int | None:
    """The n of ``character varying(n)`` / ``character(n)``; None when unbounded."""
    if sql_type.startswith(("character varying(", "character(")):
        return int(sql_type[sql_type.index("(") + 1 : -1])
    return None


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return Decimal(int(value))
    if isinstance(value, (int, Decimal)):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    return None


def as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)


Fitter = Callable[[Any], tuple[Any, Fit]]


@functools.lru_cache(maxsize=256)
def fitter(sql_type: str) -> Fitter:
    """A function fitting values to the column type ``sql_type`` (see :func:`fit`)."""
    kind = kind_of(sql_type)
    if kind == "text":
        limit = max_length(sql_type)

        def to_text(value: Any) -> tuple[Any, Fit]:
            text = value if type(value) is str else as_text(value)
            if limit is not None and len(text) > limit:
                return text[:limit], Fit.CONVERTED
            return text, Fit.AS_IS

        return to_text
    if kind == "json":
        return lambda value: (
            (str(value), Fit.AS_IS)
            if isinstance(value, JsonText)
            else (dumps(value).decode(), Fit.AS_IS)
        )
    if kind == "boolean":
        return _to_boolean
    if kind.startswith("timestamp") or kind == "date":
        return functools.partial(_to_time, kind=kind)
    if kind in ("numeric", "float") or kind in _INT_RANGES:
        return functools.partial(_to_number, kind=kind)
    return lambda value: (as_text(value), Fit.AS_IS)


def fit(value: Any, sql_type: str) -> tuple[Any, Fit]:
    """``value`` (a JSON scalar, or a stringified array) as the column ``sql_type`` takes it.

    Nothing is lost without saying so: a converted value may have lost precision (a
    fraction rounded into an integer column, text cut to a ``varchar(n)``), a dropped one
    is stored as NULL.
    """
    return fitter(sql_type)(value)


def _to_boolean(value: Any) -> tuple[Any, Fit]:
    if isinstance(value, bool):
        return value, Fit.AS_IS
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE, Fit.CONVERTED
    if isinstance(value, (int, Decimal)) and value in (0, 1):
        return bool(value), Fit.CONVERTED
    return None, Fit.DROPPED


def _to_time(value: Any, kind: str) -> tuple[Any, Fit]:
    stamp = value if isinstance(value, dt.datetime) else None
    if isinstance(value, str):
        stamp = parse_datetime(value)
        if stamp is None and kind == "date":
            try:
                return dt.date.fromisoformat(value), Fit.AS_IS
            except ValueError:
                pass
    if stamp is None:
        return None, Fit.DROPPED
    if kind == "date":
        return stamp.astimezone(dt.timezone.utc).date(), Fit.CONVERTED
    if kind == "timestamp without time zone":
        return stamp.astimezone(dt.timezone.utc).replace(tzinfo=None), Fit.AS_IS
    return stamp, Fit.AS_IS


def _to_number(value: Any, kind: str) -> tuple[Any, Fit]:
    number = _number(value)
    if number is None:
        return None, Fit.DROPPED
    exact = isinstance(value, (int, Decimal)) and not isinstance(value, bool)
    if kind == "numeric":
        return number, Fit.AS_IS if exact else Fit.CONVERTED
    if kind == "float":
        return float(number), Fit.CONVERTED if isinstance(value, (str, bool)) else Fit.AS_IS
    whole = number.to_integral_value(ROUND_HALF_EVEN)
    if abs(whole) >= _INT_RANGES[kind] and whole != -_INT_RANGES[kind]:
        return None, Fit.DROPPED
    return int(whole), Fit.AS_IS if exact and whole == number else Fit.CONVERTED
