"""The six Segment calls. Identity and context default to the current request's or task's.

Each returns the messageId. Invalid arguments raise :class:`~segment_mw.InvalidEvent`
naming the field; queue or network trouble never raises (it is logged and counted).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from . import events, identity, metrics
from . import scope as scope_mod
from .client import Client, get_client
from .errors import ConfigurationError

Timestamp = dt.datetime | dt.date | str | None


def emit(
    type_: str,
    fields: Mapping[str, Any],
    *,
    user_id: Any = None,
    anonymous_id: Any = None,
    context: Mapping[str, Any] | None = None,
    integrations: Mapping[str, Any] | None = None,
    timestamp: Timestamp = None,
    message_id: str | None = None,
    durable: bool = True,
    request_page: bool = False,
) -> str:
    """Build, serialise and queue one message; the shared path of every call.

    ``request_page``: put the request's page fields under the message's properties (a
    page call about the request's own visitor, as browsers send them).
    """
    current = scope_mod.current()
    who = identity.resolve(current, user_id=user_id, anonymous_id=anonymous_id)
    client = usable_client()
    entry = build_message(
        type_,
        fields,
        who,
        client=client,
        context=context,
        integrations=integrations,
        timestamp=timestamp,
        message_id=message_id,
        with_page=request_page and who.about_request,
    )
    if who.opted_out:
        metrics.count("opted_out")
        return entry.message_id  # the user opted out of tracking: build, but never queue
    if client is not None:
        queue_message(entry, current, durable=durable, client=client)
    return entry.message_id


def build_message(
    type_: str,
    fields: Mapping[str, Any],
    who: identity.Identity,
    *,
    client: Client | None = None,
    **options: Any,
) -> events.Entry:
    """A serialised message for ``who``, with the configured default integrations merged in.

    ``client``: the one the caller already has (else the configured one, if usable).
    """
    client = client or usable_client()
    default = client.settings.integrations if client is not None else None
    defer = client.settings.complete_in_worker if client is not None else True
    anonymous_id = who.anonymous_id
    if who.opted_out and not who.identified:
        # No anonymous id is minted for a visitor who opted out; the message is built
        # only to check the caller's arguments (it is never queued), so lend it one.
        anonymous_id = identity.OPTED_OUT_ID
    return events.build(
        type_,
        fields,
        user_id=who.user_id,
        anonymous_id=anonymous_id,
        request=who.request,
        default_integrations=default,
        defer=defer,
        **options,
    )


def usable_client() -> Client | None:
    """The client, or None (logged and counted) when the settings cannot make one.

    Broken settings are an operator's problem, reported by ``segment-mw status``, Django's
    checks and this log; they never raise into the code that tracks.
    """
    try:
        return get_client()
    except ConfigurationError as exc:
        metrics.count("misconfigured")
        metrics.warn_once_per_interval(
            "misconfigured", "segment_mw is misconfigured, message dropped: %s", exc
        )
        return None


def queue_message(
    entry: events.Entry,
    current: scope_mod.Scope | None,
    *,
    durable: bool,
    client: Client | None = None,
) -> None:
    """Hand a built message to the queue, counting it against the scope it was made in."""
    client = client or usable_client()
    if client is None:
        return
    client.emit(entry, durable=durable)
    if current is not None:
        current.emitted += 1


def track(
    event: str,
    properties: Mapping[str, Any] | None = None,
    *,
    user_id: Any = None,
    anonymous_id: Any = None,
    context: Mapping[str, Any] | None = None,
    integrations: Mapping[str, Any] | None = None,
    timestamp: Timestamp = None,
    message_id: str | None = None,
) -> str:
    """Record that ``user_id`` (or the current user) did ``event``."""
    return emit(
        "track",
        events.track_fields(event, properties),
        user_id=user_id,
        anonymous_id=anonymous_id,
        context=context,
        integrations=integrations,
        timestamp=timestamp,
        message_id=message_id,
    )


def page(
    name: str | None = None,
    properties: Mapping[str, Any] | None = None,
    *,
    category: str | None = None,
    user_id: Any = None,
    anonymous_id: Any = None,
    context: Mapping[str, Any] | None = None,
    integrations: Mapping[str, Any] | None = None,
    timestamp: Timestamp = None,
    message_id: str | None = None,
) -> str:
    """Record a page view; inside a request the page fields are filled from it."""
    return emit(
        "page",
        events.page_fields(name, properties, category),
        request_page=True,
        user_id=user_id,
        anonymous_id=anonymous_id,
        context=context,
        integrations=integrations,
        timestamp=timestamp,
        message_id=message_id,
    )


def screen(
    name: str | None = None,
    properties: Mapping[str, Any] | None = None,
    *,
    category: str | None = None,
    user_id: Any = None,
    anonymous_id: Any = None,
    context: Mapping[str, Any] | None = None,
    integrations: Mapping[str, Any] | None = None,
    timestamp: Timestamp = None,
    message_id: str | None = None,
) -> str:
    """Record a screen view (apps)."""
    return emit(
        "screen",
        events.page_fields(name, properties, category),
        user_id=user_id,
        anonymous_id=anonymous_id,
        context=context,
        integrations=integrations,
        timestamp=timestamp,
        message_id=message_id,
    )


def identify(
    user_id: Any = None,
    traits: Mapping[str, Any] | None = None,
    *,
    anonymous_id: Any = None,
    context: Mapping[str, Any] | None = None,
    integrations: Mapping[str, Any] | None = None,
    timestamp: Timestamp = None,
    message_id: str | None = None,
) -> str:
    """Tie a user to their traits (and to the current anonymous id)."""
    return emit(
        "identify",
        events.identify_fields(traits),
        user_id=user_id,
        anonymous_id=anonymous_id,
        context=context,
        integrations=integrations,
        timestamp=timestamp,
        message_id=message_id,
    )


def group(
    group_id: Any,
    traits: Mapping[str, Any] | None = None,
    *,
    user_id: Any = None,
    anonymous_id: Any = None,
    context: Mapping[str, Any] | None = None,
    integrations: Mapping[str, Any] | None = None,
    timestamp: Timestamp = None,
    message_id: str | None = None,
) -> str:
    """Associate the user with a group (an account, a company)."""
    return emit(
        "group",
        events.group_fields(group_id, traits),
        user_id=user_id,
        anonymous_id=anonymous_id,
        context=context,
        integrations=integrations,
        timestamp=timestamp,
        message_id=message_id,
    )


def alias(
    previous_id: Any,
    user_id: Any,
    *,
    anonymous_id: Any = None,
    context: Mapping[str, Any] | None = None,
    integrations: Mapping[str, Any] | None = None,
    timestamp: Timestamp = None,
    message_id: str | None = None,
) -> str:
    """Merge the identity ``previous_id`` into ``user_id``."""
    return emit(
        "alias",
        events.alias_fields(previous_id, user_id),
        user_id=user_id,
        anonymous_id=anonymous_id,
        context=context,
        integrations=integrations,
        timestamp=timestamp,
        message_id=message_id,
    )


def flush(timeout: float | None = None) -> bool:
    """Deliver everything queued now; True when nothing deliverable is left."""
    client = usable_client()
    return client.flush(timeout) if client is not None else False
