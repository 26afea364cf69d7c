"""A message laid out as rows of Segment's warehouse tables.

Per Segment's warehouse schema: ``tracks``, ``pages``, ``screens``, ``identifies``,
``groups`` and ``aliases`` hold one row per call; each track event also has a table of its
own, named from the event, with its properties as columns (``tracks`` has none of them);
``users`` and ``accounts`` hold the latest traits per user and per group. Properties,
traits and context are flattened into columns — nested objects joined with ``_``
(``context_page_path``), arrays stringified as JSON, nulls left out — and a property or
trait named like one of Segment's own columns (``user_id``, ``received_at``...) is
discarded. Nothing of ``integrations``, ``channel``, ``type`` or ``version`` is kept.

The warehouse is its own receiver here, so ``received_at``, ``sent_at`` and ``uuid_ts``
are when the batch is written, and ``timestamp`` — Segment's ``received_at - (sent_at -
original_timestamp)`` — is then the message's own ``timestamp``, kept as
``original_timestamp`` too.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..serialize import dumps
from .naming import identifier
from .types import TEXT, TIMESTAMPTZ, JsonText, parse_datetime

_COMMON = {
    "id": TEXT,
    "anonymous_id": TEXT,
    "user_id": TEXT,
    "received_at": TIMESTAMPTZ,
    "sent_at": TIMESTAMPTZ,
    "timestamp": TIMESTAMPTZ,
    "original_timestamp": TIMESTAMPTZ,
    "uuid_ts": TIMESTAMPTZ,
}
_LATEST = {"id": TEXT, "received_at": TIMESTAMPTZ, "timestamp": TIMESTAMPTZ, "uuid_ts": TIMESTAMPTZ}

#: Segment's own columns of each table, with their types (event tables have ``tracks``'s).
STANDARD_COLUMNS: dict[str, dict[str, str]] = {
    "tracks": {**_COMMON, "event": TEXT, "event_text": TEXT},
    "pages": {**_COMMON, "name": TEXT, "category": TEXT},
    "screens": {**_COMMON, "name": TEXT, "category": TEXT},
    "identifies": dict(_COMMON),
    "groups": {**_COMMON, "group_id": TEXT},
    "aliases": {**_COMMON, "previous_id": TEXT},
    # No anonymous_id: a user may have many (Segment's users table has none either).
    "users": dict(_LATEST),
    "accounts": dict(_LATEST),
}
LATEST_TABLES = frozenset({"users", "accounts"})
_TABLE_OF = {
    "page": "pages",
    "screen": "screens",
    "identify": "identifies",
    "group": "groups",
    "alias": "aliases",
}


class Unloadable(ValueError):
    """A message that has no place in the warehouse schema (it is dead-lettered)."""


@dataclass(slots=True)
class Row:
    table: str
    values: dict[str, Any]  # column -> value; a column absent here is NULL


@dataclass
class Layout:
    rows: list[Row] = field(default_factory=list)  # inserted once: a row per table
    #: the user's or group's latest traits, merged into ``users`` or ``accounts`` when the
    #: call's own row is new (a re-delivered call changes nothing)
    latest: Row | None = None
    #: values left out, as ``where: why`` (names only, never values)
    dropped: list[str] = field(default_factory=list)


def standard_columns(table: str) -> dict[str, str]:
    """Segment's own columns of a table; an event table has those of ``tracks``."""
    return STANDARD_COLUMNS.get(table) or STANDARD_COLUMNS["tracks"]


def event_table(event: Any) -> str:
    """The table of a track event, by Segment's naming; Unloadable when there is none."""
    if not isinstance(event, str) or not event.strip():
        raise Unloadable("event: a track message needs an event name")
    table = identifier(event)
    if table is None:
        raise Unloadable(f"event {event[:80]!r}: no ASCII letter or digit to name a table with")
    # An event named like one of the standard tables gets one of its own beside it.
    return "_" + table if table in STANDARD_COLUMNS else table


def _flatten(obj: Mapping[str, Any], joined: str, dotted: str) -> Iterator[tuple[str, str, Any]]:
    """(dotted path, ``_``-joined name, value) for every non-null leaf of ``obj``."""
    for key, value in obj.items():
        name = f"{joined}_{key}" if joined else str(key)
        where = f"{dotted}.{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, name, where)
        elif isinstance(value, list):
            yield where, name, JsonText(dumps(value).decode())
        elif value is not None:
            yield where, name, value


def _object(message: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = message.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise Unloadable(f"{key}: expected an object, got {type(value).__name__}")
    return value


def _add(
    values: dict[str, Any],
    obj: Mapping[str, Any],
    source: str,
    prefix: str,
    reserved: Mapping[str, str],
    dropped: list[str],
) -> None:
    for where, name, value in _flatten(obj, prefix, source):
        column = identifier(name)
        if column is None:
            dropped.append(f"{where}: no ASCII letter or digit to name a column with")
        elif column in reserved or column in values:
            # Segment discards a property named like one of its columns; a repeat of the
            # same value (a page's name in its properties) loses nothing worth a mention.
            if values.get(column) != value:
                dropped.append(f"{where}: column {column} is taken")
        else:
            values[column] = value


def _id(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (str, int)):
        return str(value) or None
    return None


def layout(message: Any, now: dt.datetime) -> Layout:
    """The rows ``message`` adds to the warehouse, written at ``now``; Unloadable if none."""
    if not isinstance(message, Mapping):
        raise Unloadable("not a JSON object")
    kind = message.get("type")
    message_id = message.get("messageId")
    if not isinstance(message_id, str) or not message_id:
        raise Unloadable("messageId: missing; it is the warehouse rows' id")
    if kind == "track":
        table = event_table(message.get("event"))
    elif kind in _TABLE_OF:
        table = _TABLE_OF[kind]
    else:
        raise Unloadable(f"type {str(kind)[:40]!r} is not a Segment message type")

    original = message.get("timestamp")
    stamp = parse_datetime(original) if isinstance(original, str) else None
    out = Layout()
    if original is not None and stamp is None:
        out.dropped.append("timestamp: not an ISO-8601 date-time")
    base: dict[str, Any] = {
        "id": message_id,
        "anonymous_id": _id(message.get("anonymousId")),
        "user_id": _id(message.get("userId")),
        "received_at": now,
        "sent_at": now,
        "timestamp": stamp or now,
        "original_timestamp": stamp,
        "uuid_ts": now,
    }
    context: dict[str, Any] = {}
    _add(context, _object(message, "context"), "context", "context", {}, out.dropped)
    payload_key = "traits" if kind in ("identify", "group") else "properties"
    payload = _object(message, payload_key)

    if kind == "track":
        base["event"], base["event_text"] = table, message["event"]
        out.rows.append(_row("tracks", {**base, **context}))
    elif kind in ("page", "screen"):
        for key in ("name", "category"):
            if isinstance(message.get(key), str):
                base[key] = message[key]
    elif kind == "group":
        base["group_id"] = _id(message.get("groupId"))
        if base["group_id"] is None:
            raise Unloadable("groupId: a group message needs one")
    elif kind == "alias":
        base["previous_id"] = _id(message.get("previousId"))
        if base["previous_id"] is None:
            raise Unloadable("previousId: an alias message needs one")

    values = {**base, **context}
    reserved = standard_columns(table)
    if kind != "alias":
        _add(values, payload, payload_key, "", reserved, out.dropped)
    out.rows.append(_row(table, values))

    latest_id = base["user_id"] if kind == "identify" else base.get("group_id")
    if latest_id is not None:
        latest = {"id": latest_id, "received_at": now, "timestamp": base["timestamp"]}
        latest["uuid_ts"] = now
        _add(latest, payload, payload_key, "", reserved, [])  # its drops are noted above
        out.latest = Row("users" if kind == "identify" else "accounts", latest)
    return out


def _row(table: str, values: dict[str, Any]) -> Row:
    return Row(table, {k: v for k, v in values.items() if v is not None})
