"""Spec-exact Segment messages: built, validated and serialised once, at emit time.

A message is serialised here exactly once; the queue stores those bytes and the worker
joins them into batches without parsing them again. The integrations object is kept
beside the bytes (also serialised) so the worker can route without touching the body.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .errors import InvalidEvent
from .serialize import dumps
from .version import __version__

MAX_EVENT_BYTES = 32 * 1024
MAX_MESSAGE_ID = 100
LIBRARY = {"name": "segment_mw", "version": __version__}
TYPES = ("track", "page", "screen", "identify", "group", "alias")


@dataclass(frozen=True, slots=True)
class Entry:
    """One serialised message as it travels through the queue."""

    body: bytes
    integrations: bytes | None  # the merged integrations object; None when it is empty
    message_id: str = ""
    type: str = ""
    # Whose event it is (userId, else anonymousId): a sharded queue keeps one user's
    # events on one shard, in order.
    user: str = ""


def new_message_id() -> str:
    """A random (version 4) UUID, as ``str(uuid.uuid4())`` but without the UUID object."""
    h = os.urandom(16).hex()
    # The version nibble is 4; the variant nibble keeps two random bits under 0b10.
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}

_second: tuple[int, str] = (0, "")  # the current second, formatted once
_MILLIS = tuple(f".{ms:03d}+00:00" for ms in range(1000))


def _now() -> str:
    """The current time as ``format_timestamp`` writes it, without building a datetime."""
    global _second
    now = time.time()
    whole = int(now)
    second, prefix = _second
    if whole != second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = (whole, prefix)
    return prefix + _MILLIS[int((now - whole) * 1000)]


def format_timestamp(value: dt.datetime | dt.date | str | None) -> str:
    """ISO-8601 in UTC with millisecond precision, the form Segment's libraries write."""
    if value is None:
        return _now()
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidEvent(f"timestamp: {value!r} is not an ISO-8601 date-time") from None
    elif not isinstance(value, dt.datetime):
        if isinstance(value, dt.date):
            value = dt.datetime(value.year, value.month, value.day)
        else:
            raise InvalidEvent(f"timestamp: expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    else:
        value = value.astimezone(dt.timezone.utc)
    return value.isoformat(timespec="milliseconds")


def validated_id(value: Any, field_name: str) -> str | None:
    """An id given by the caller, as a string; None for none; InvalidEvent for a wrong type."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidEvent(f"{field_name}: expected a string, got bool")
    if isinstance(value, (int, uuid.UUID, Decimal)):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidEvent(f"{field_name}: expected a string, got {type(value).__name__}")
    return value or None


def _optional_str(value: Any, field_name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidEvent(f"{field_name}: expected a string, got {type(value).__name__}")


def _mapping(value: Any, field_name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if type(value) is not dict and not isinstance(value, Mapping):  # dict: no ABC check
        raise InvalidEvent(f"{field_name}: expected a mapping, got {type(value).__name__}")
    return dict(value)


def _is_all(key: Any) -> bool:
    return isinstance(key, str) and key.lower() == "all"


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``over`` onto ``base`` (nested mappings merge, everything else replaces)."""
    out = dict(base)
    for key, value in over.items():
        current = out.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            out[key] = merge(current, value)
        else:
            out[key] = value
    return out


def build(
    type_: str,
    fields: Mapping[str, Any],
    *,
    user_id: Any = None,
    anonymous_id: Any = None,
    context: Mapping[str, Any] | None = None,
    integrations: Mapping[str, Any] | None = None,
    timestamp: dt.datetime | dt.date | str | None = None,
    message_id: str | None = None,
    default_integrations: Mapping[str, Any] | None = None,
    base_context: Mapping[str, Any] | None = None,
) -> Entry:
    """Validate and serialise one message; raise :class:`InvalidEvent` naming the field.

    The ids are the event's own, already resolved (see :mod:`segment_mw.identity`);
    ``base_context`` is the request's context, under the caller's ``context``.
    """
    uid = validated_id(user_id, "userId")
    aid = validated_id(anonymous_id, "anonymousId")
    if uid is None and aid is None:
        raise InvalidEvent(f"{type_}: userId or anonymousId is required (neither was given)")

    if message_id is None:
        message_id = new_message_id()
    elif not isinstance(message_id, str) or not 0 < len(message_id) <= MAX_MESSAGE_ID:
        raise InvalidEvent(f"messageId: expected a string of 1 to {MAX_MESSAGE_ID} characters")

    ctx: dict[str, Any] = dict(base_context) if base_context else {}
    if context:
        ctx = merge(ctx, _mapping(context, "context"))
    ctx["library"] = LIBRARY

    merged_integrations = dict(default_integrations) if default_integrations else {}
    own = _mapping(integrations, "integrations")
    if own and any(_is_all(key) for key in own):
        # "All" matches case-insensitively: the event's "all" replaces the default's "All".
        merged_integrations = {k: v for k, v in merged_integrations.items() if not _is_all(k)}
    merged_integrations.update(own)

    message: dict[str, Any] = {"type": type_}
    message.update(fields)
    if uid is not None:
        message["userId"] = uid
    if aid is not None:
        message["anonymousId"] = aid
    message["messageId"] = message_id
    message["timestamp"] = format_timestamp(timestamp)
    message["context"] = ctx
    message["integrations"] = merged_integrations
    message["channel"] = "server"

    body = dumps(message)
    if len(body) > MAX_EVENT_BYTES:
        label = fields.get("event") or fields.get("name") or type_
        raise InvalidEvent(
            f"{type_} {label!r} is {len(body)} bytes serialised; the limit is {MAX_EVENT_BYTES}"
        )
    return Entry(  # positionally: body, integrations, message_id, type, user
        body,
        dumps(merged_integrations) if merged_integrations else None,
        message_id,
        type_,
        str(uid if uid is not None else aid if aid is not None else ""),
    )


def track_fields(event: Any, properties: Any) -> dict[str, Any]:
    if not isinstance(event, str) or not event.strip():
        raise InvalidEvent("event: a track call needs a non-empty event name")
    return {"event": event, "properties": _mapping(properties, "properties")}


def page_fields(name: Any, properties: Any, category: Any, kind: str = "page") -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if _optional_str(name, "name") is not None:
        fields["name"] = name
    if _optional_str(category, "category") is not None:
        fields["category"] = category
    fields["properties"] = _mapping(properties, "properties")
    return fields


def identify_fields(traits: Any) -> dict[str, Any]:
    return {"traits": _mapping(traits, "traits")}


def group_fields(group_id: Any, traits: Any) -> dict[str, Any]:
    gid = validated_id(group_id, "groupId")
    if gid is None:
        raise InvalidEvent("groupId: a group call needs a groupId")
    return {"groupId": gid, "traits": _mapping(traits, "traits")}


def alias_fields(previous_id: Any, user_id: Any) -> dict[str, Any]:
    prev = validated_id(previous_id, "previousId")
    if prev is None:
        raise InvalidEvent("previousId: an alias call needs a previousId")
    if validated_id(user_id, "userId") is None:
        raise InvalidEvent("userId: an alias call needs a userId")
    return {"previousId": prev}
