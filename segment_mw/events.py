"""Spec-exact Segment messages: built, validated and serialised once, at emit time.

A message is serialised here exactly once; the queue stores those bytes and the worker
joins them into batches without parsing them again. The integrations object is kept
beside the bytes (also serialised) so the worker can route without touching the body.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import orjson

from . import forks
from .errors import InvalidEvent
from .request_context import context_from
from .serialize import dumps
from .version import __version__

MAX_EVENT_BYTES = 32 * 1024
MAX_MESSAGE_ID = 100
LIBRARY = {"name": "segment_mw", "version": __version__}
TYPES = ("track", "page", "screen", "identify", "group", "alias")


@dataclass(slots=True)
class Entry:
    """One serialised message as it travels through the queue.

    Read-only by convention (not frozen: a frozen dataclass takes a third of a
    microsecond more to make, on every event).
    """

    body: bytes
    integrations: bytes | None  # the merged integrations object; None when it is empty
    message_id: str = ""
    type: str = ""
    # Whose event it is (userId, else anonymousId): a sharded queue keeps one user's
    # events on one shard, in order.
    user: str = ""


# Ids need to be unique, not unpredictable: a generator seeded from the OS in each process
# (a child seeds its own, so no two processes share a sequence) instead of a call to
# os.urandom per id, a system call that hands the GIL to other threads mid-request.
_random: forks.ProcessLocal[random.Random] = forks.ProcessLocal(
    lambda: random.Random(os.urandom(32))
)


def new_message_id() -> str:
    """A random (version 4) UUID in its string form, as ``str(uuid.uuid4())`` writes it."""
    h = f"{_random.get().getrandbits(128):032x}"
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


class Request(Protocol):
    """The request an event is about, as :func:`build` reads it (a :class:`~.scope.Scope`)."""

    @property
    def facts_json(self) -> bytes | None: ...

    @property
    def context(self) -> Mapping[str, Any]: ...


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
    request: Request | None = None,
    with_page: bool = False,
    defer: bool = True,
) -> Entry:
    """Validate and serialise one message; raise :class:`InvalidEvent` naming the field.

    The ids are the event's own, already resolved (see :mod:`segment_mw.identity`).
    ``request`` is the request (or task) whose context goes under the caller's
    ``context``; ``with_page`` puts its page fields under the properties too (a page
    call about the request's own visitor, as browsers send them). The event of a request
    is queued with the request's facts, its context made where it is delivered
    (:func:`complete`), unless the caller gave a context of its own to merge or ``defer``
    is False (``COMPLETE_IN_WORKER``).
    """
    uid = validated_id(user_id, "userId")
    aid = validated_id(anonymous_id, "anonymousId")
    if uid is None and aid is None:
        raise InvalidEvent(f"{type_}: userId or anonymousId is required (neither was given)")

    if message_id is None:
        message_id = new_message_id()
    elif not isinstance(message_id, str) or not 0 < len(message_id) <= MAX_MESSAGE_ID:
        raise InvalidEvent(f"messageId: expected a string of 1 to {MAX_MESSAGE_ID} characters")

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
    message["context"] = None  # its place in the message: filled below
    message["integrations"] = merged_integrations
    message["channel"] = "server"

    facts_json = request.facts_json if request is not None and defer and not context else None
    body = _deferred(message, facts_json, with_page) if facts_json is not None else None
    if body is None:
        base = request.context if request is not None else None
        ctx: dict[str, Any] = dict(base) if base else {}
        if context:
            ctx = merge(ctx, _mapping(context, "context"))
        ctx["library"] = LIBRARY
        message["context"] = ctx
        if with_page and isinstance(ctx.get("page"), Mapping):
            message["properties"] = {**ctx["page"], **message.get("properties", {})}
        body = dumps(message)
        if len(body) > MAX_EVENT_BYTES:
            raise _oversized(message, len(body))
    return Entry(  # positionally: body, integrations, message_id, type, user
        body,
        dumps(merged_integrations) if merged_integrations else None,
        message_id,
        type_,
        str(uid if uid is not None else aid if aid is not None else ""),
    )


# -- events queued with their request's facts ----------------------------------------
# Layout: "~", "p" (page fields go under the properties) or "-", the message serialised
# with a NUL byte where the context goes (and one opening the properties, for "p"), a
# NUL, the request's facts. orjson escapes NUL inside strings, so the raw byte marks only
# those places; "~" starts no JSON message, so complete() tells the two kinds apart.
DEFERRED = b"~"
_SLOT = orjson.Fragment(b"\x00")
_PAGE_KEYS = frozenset({"path", "referrer", "search", "title", "url"})


def _added_at_most(facts_json: bytes, with_page: bool) -> int:
    """What completing a message can add to it, at most: its context (and page fields).

    Every string of the context is one of the facts or made from one: the page's parts
    (the url holds path and query again), the campaign from the query (percent-decoded:
    ``%00``, three bytes, is written ``\\u0000``, six), the client hints parsed into
    objects. Counting each fact once per place it can appear, twice for the campaign: the
    query at most four times in the context, the rest at most twice; a page's fields are
    the page again.
    """
    return (6 if with_page else 4) * len(facts_json) + 2048


def _deferred(message: dict[str, Any], facts_json: bytes, with_page: bool) -> bytes | None:
    """The message to complete where it is delivered; None when it must be made now.

    Made now: page fields the properties would override (the layout only prepends
    them), or a message whose completed size could pass the limit (then the exact size
    decides, here, where the caller can be told).
    """
    properties = message.get("properties")
    if with_page and (not isinstance(properties, dict) or _PAGE_KEYS & properties.keys()):
        return None
    message["context"] = _SLOT
    if with_page:
        rest = dumps(properties)[1:] if properties else b"}"  # most pageviews add none
        message["properties"] = orjson.Fragment(b"{\x00" + rest)
    try:
        body = dumps(message)
    finally:
        if with_page:  # as it was, for a message made now after all (its context too)
            message["properties"] = properties
    if len(body) + _added_at_most(facts_json, with_page) > MAX_EVENT_BYTES:
        return None
    return b"".join((DEFERRED, b"p" if with_page else b"-", body, b"\x00", facts_json))


def complete(body: bytes) -> bytes:
    """The message ``body`` stands for: made whole when it was queued with request facts.

    Raises :class:`InvalidEvent` for a body it cannot complete (or that would pass the
    size limit): the delivery dead-letters it alone.
    """
    if not body.startswith(DEFERRED):
        return body
    *pieces, facts_json = body[2:].split(b"\x00")
    try:
        facts = orjson.loads(facts_json)
    except orjson.JSONDecodeError:
        raise InvalidEvent("a queued event's request facts are not JSON") from None
    if not isinstance(facts, dict):
        raise InvalidEvent("a queued event's request facts are not an object")
    try:
        context = context_from(facts)
    except Exception as exc:  # facts of a shape no version wrote: never retried forever
        raise InvalidEvent(f"a queued event's request facts are malformed ({exc!r:.100})") from None
    context["library"] = LIBRARY
    context_json = dumps(context)
    if body[1:2] == b"p" and len(pieces) == 3:
        head, properties, tail = pieces
        page = dumps(context["page"])[1:-1]
        out = b"".join(
            (
                head,
                page,
                b"" if properties.startswith(b"}") else b",",
                properties,
                context_json,
                tail,
            )
        )
    elif body[1:2] == b"-" and len(pieces) == 2:
        out = pieces[0] + context_json + pieces[1]
    else:
        raise InvalidEvent("a queued event's layout is not one this version knows")
    if len(out) > MAX_EVENT_BYTES:
        raise InvalidEvent(
            f"a queued event is {len(out)} bytes completed; the limit is {MAX_EVENT_BYTES}"
        )
    return out


def _oversized(message: Mapping[str, Any], size: int) -> InvalidEvent:
    type_ = message["type"]
    label = message.get("event") or message.get("name") or type_
    return InvalidEvent(
        f"{type_} {label!r} is {size} bytes serialised; the limit is {MAX_EVENT_BYTES}"
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
