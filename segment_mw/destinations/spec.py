"""Reading Segment-spec messages for the analytics tools: what every tool's mapping shares.

Event times, ids, page and screen event names ("Viewed Home Page", as Segment's own
destinations name them), campaign fields in their ``utm_`` form, the Ecommerce v2 event
names and their products, numbers that may arrive as exact strings, and dedupe keys
derived from ``messageId``. The per-tool modules (ga4, mixpanel, amplitude, posthog) say
only what differs.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Mapping
from typing import Any

# Segment's campaign keys, as the tools name them (SPEC §2: utm_campaign is ``name``).
UTM_FIELDS = {
    "name": "utm_campaign",
    "source": "utm_source",
    "medium": "utm_medium",
    "term": "utm_term",
    "content": "utm_content",
    "id": "utm_id",
}

# Ecommerce spec v2 event names (segment.com/docs/connections/spec/ecommerce/v2/).
PRODUCTS_SEARCHED = "Products Searched"
PRODUCT_LIST_VIEWED = "Product List Viewed"
PRODUCT_CLICKED = "Product Clicked"
PRODUCT_VIEWED = "Product Viewed"
PRODUCT_ADDED = "Product Added"
PRODUCT_REMOVED = "Product Removed"
PRODUCT_ADDED_TO_WISHLIST = "Product Added to Wishlist"
CART_VIEWED = "Cart Viewed"
CHECKOUT_STARTED = "Checkout Started"
PAYMENT_INFO_ENTERED = "Payment Info Entered"
ORDER_COMPLETED = "Order Completed"
ORDER_REFUNDED = "Order Refunded"
PROMOTION_VIEWED = "Promotion Viewed"
PROMOTION_CLICKED = "Promotion Clicked"
SIGNED_UP = "Signed Up"
SIGNED_IN = "Signed In"

# Events about one product carry it in the properties themselves, not in ``products``.
SINGLE_PRODUCT_EVENTS = frozenset(
    {PRODUCT_CLICKED, PRODUCT_VIEWED, PRODUCT_ADDED, PRODUCT_REMOVED, PRODUCT_ADDED_TO_WISHLIST}
)

_DEDUPE_NAMESPACE = uuid.UUID("6f0c1a4e-8a51-4d3b-9d8e-5e3a0c7b2f11")


def event_time(message: Mapping[str, Any], default: float) -> float:
    """The message's ``timestamp`` in seconds since the epoch (``default`` when unreadable)."""
    raw = message.get("timestamp")
    if not isinstance(raw, str) or not raw:
        return default
    if raw[-1] in "Zz":  # fromisoformat reads a "Z" only from Python 3.11 on
        raw = raw[:-1] + "+00:00"
    try:
        when = dt.datetime.fromisoformat(raw)
    except ValueError:
        return default
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def iso_time(seconds: float) -> str:
    stamp = dt.datetime.fromtimestamp(seconds, dt.timezone.utc)
    return stamp.isoformat(timespec="milliseconds")


def as_uuid(message_id: Any) -> str:
    """``messageId`` as a UUID string: itself when it is one, else a stable UUID5 of it.

    Tools that dedupe on a UUID (PostHog) or a short id (Mixpanel's 36 characters) then
    see the same key on every retry, whatever the app chose as ``messageId``.
    """
    text = str(message_id or "")
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return str(uuid.uuid5(_DEDUPE_NAMESPACE, text))


def ids(message: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(userId, anonymousId)``, each a non-empty string or None."""
    user_id = message.get("userId")
    anonymous_id = message.get("anonymousId")
    return (
        user_id if isinstance(user_id, str) and user_id else None,
        anonymous_id if isinstance(anonymous_id, str) and anonymous_id else None,
    )


def mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def context(message: Mapping[str, Any]) -> dict[str, Any]:
    return mapping(message.get("context"))


def properties(message: Mapping[str, Any]) -> dict[str, Any]:
    return mapping(message.get("properties"))


def page_url(message: Mapping[str, Any]) -> dict[str, Any]:
    """The page's fields: the page call's properties over ``context.page``."""
    return {**mapping(context(message).get("page")), **properties(message)}


def utm(message: Mapping[str, Any]) -> dict[str, str]:
    """``context.campaign`` as ``utm_*`` fields."""
    campaign = mapping(context(message).get("campaign"))
    out: dict[str, str] = {}
    for key, value in campaign.items():
        if isinstance(value, str) and value:
            out[UTM_FIELDS.get(key, f"utm_{key}")] = value
    return out


def page_event_name(message: Mapping[str, Any]) -> str:
    """Segment's names for page and screen calls in event-based tools.

    ``Viewed <category> <name> Page`` (or ``Screen``) for a named one, as Segment's
    Mixpanel and Amplitude destinations name them with named pages on, and ``Loaded a
    Page`` (``Loaded a Screen``) for one with no name.
    """
    noun = "Screen" if message.get("type") == "screen" else "Page"
    parts = [
        str(message[key])
        for key in ("category", "name")
        if isinstance(message.get(key), str) and message[key]
    ]
    if not parts:
        return f"Loaded a {noun}"
    return f"Viewed {' '.join(parts)} {noun}"


def number(value: Any) -> float | int | None:
    """A number from JSON: an int or float, or a numeric string (an exact Decimal)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value if value == value else None  # not NaN
    if isinstance(value, str):
        try:
            parsed = float(value)
        except ValueError:
            return None
        if parsed != parsed or parsed in (float("inf"), float("-inf")):
            return None
        return int(parsed) if re.fullmatch(r"-?\d+", value.strip()) else parsed
    return None


def text(value: Any) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return str(value)
    return None


def products(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The products an Ecommerce event is about: its ``products``, or itself for one."""
    props = properties(message)
    if message.get("event") in SINGLE_PRODUCT_EVENTS:
        return [props]
    listed = props.get("products")
    if not isinstance(listed, list):
        return []
    return [p for p in listed if isinstance(p, dict)]


def order_value(props: Mapping[str, Any]) -> float | int | None:
    """An order's value: ``total``, else ``revenue``, else ``value`` (Ecommerce spec)."""
    for key in ("total", "revenue", "value"):
        found = number(props.get(key))
        if found is not None:
            return found
    return None
