"""Google Analytics 4 through the Measurement Protocol (``POST /mp/collect``).

One request carries the events of one client (``client_id``, ``user_id``, ``ip_override``
are request fields), at most 25 of them and 130 kB. ``client_id`` comes from the browser's
``_ga`` cookie when the request had one (``context.googleAnalytics.clientId``, recorded by
the capture side), and ``session_id`` from the stream's ``_ga_<id>`` cookie
(``context.googleAnalytics.sessionIds``), so that a server-side purchase joins the
browser's user and session; else the client is the anonymousId. The endpoint answers 2xx
for anything it receives, valid or not: the limits the validation server checks are kept
here (names, lengths, counts), and events older than the 72 hours it back-dates are
refused before sending.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson

from .. import metrics
from ..identity import GA_CLIENT_ID, GA_SESSION_ID
from . import spec
from .base import Outcome
from .http import USER_AGENT, is_retryable, parse_retry_after
from .mapped import MappedDestination, Refused, Skipped, track_event

DEFAULT_HOST = "https://www.google-analytics.com"
MAX_EVENTS = 25
MAX_BYTES = 130_000
MAX_AGE = 72 * 3600.0
MAX_PARAMS = 25
MAX_PARAM_NAME = 40
MAX_PARAM_VALUE = 100
MAX_ITEMS = 200
MAX_USER_PROPERTIES = 25
MAX_USER_PROPERTY_NAME = 24
MAX_USER_PROPERTY_VALUE = 36
MAX_USER_ID = 256

# The Measurement Protocol's reserved names (developers.google.com/analytics/devguides/
# collection/protocol/ga4/reference#reserved_names): events of these names are dropped.
RESERVED_EVENTS = frozenset(
    {
        "ad_activeview",
        "ad_click",
        "ad_exposure",
        "ad_impression",
        "ad_query",
        "ad_reward",
        "adunit_exposure",
        "app_background",
        "app_clear_data",
        "app_exception",
        "app_install",
        "app_remove",
        "app_store_refund",
        "app_store_subscription_cancel",
        "app_store_subscription_convert",
        "app_store_subscription_renew",
        "app_update",
        "app_upgrade",
        "dynamic_link_app_open",
        "dynamic_link_app_update",
        "dynamic_link_first_open",
        "error",
        "firebase_campaign",
        "firebase_in_app_message_action",
        "firebase_in_app_message_dismiss",
        "firebase_in_app_message_impression",
        "first_open",
        "first_visit",
        "in_app_purchase",
        "notification_dismiss",
        "notification_foreground",
        "notification_open",
        "notification_receive",
        "os_update",
        "session_start",
        "session_start_with_rollout",
        "user_engagement",
    }
)
RESERVED_PREFIXES = ("google_", "ga_", "firebase_")
RESERVED_USER_PROPERTIES = frozenset(
    {
        "first_open_after_install",
        "first_open_time",
        "first_visit_time",
        "last_deep_link_referrer",
        "user_id",
    }
)

_NOT_NAME = re.compile(r"[^a-z0-9_]+")

# Segment Ecommerce v2 events and GA4's recommended events (developers.google.com/
# analytics/devguides/collection/ga4/reference/events), as Segment's GA4 destination maps
# them: name, then the GA4 parameter for each Segment property.
ECOMMERCE: dict[str, tuple[str, dict[str, str]]] = {
    spec.PRODUCTS_SEARCHED: ("search", {"query": "search_term"}),
    spec.PRODUCT_LIST_VIEWED: (
        "view_item_list",
        {"list_id": "item_list_id", "category": "item_list_name"},
    ),
    spec.PRODUCT_CLICKED: (
        "select_item",
        {"list_id": "item_list_id", "list_name": "item_list_name"},
    ),
    spec.PRODUCT_VIEWED: ("view_item", {}),
    spec.PRODUCT_ADDED: ("add_to_cart", {}),
    spec.PRODUCT_REMOVED: ("remove_from_cart", {}),
    spec.PRODUCT_ADDED_TO_WISHLIST: ("add_to_wishlist", {}),
    spec.CART_VIEWED: ("view_cart", {}),
    spec.CHECKOUT_STARTED: ("begin_checkout", {"coupon": "coupon"}),
    spec.PAYMENT_INFO_ENTERED: (
        "add_payment_info",
        {"coupon": "coupon", "payment_method": "payment_type"},
    ),
    spec.ORDER_COMPLETED: (
        "purchase",
        {
            "order_id": "transaction_id",
            "affiliation": "affiliation",
            "coupon": "coupon",
            "shipping": "shipping",
            "tax": "tax",
        },
    ),
    spec.ORDER_REFUNDED: (
        "refund",
        {"order_id": "transaction_id", "shipping": "shipping", "tax": "tax"},
    ),
    spec.PROMOTION_VIEWED: (
        "view_promotion",
        {
            "promotion_id": "promotion_id",
            "name": "promotion_name",
            "creative": "creative_name",
            "position": "creative_slot",
        },
    ),
    spec.PROMOTION_CLICKED: (
        "select_promotion",
        {
            "promotion_id": "promotion_id",
            "name": "promotion_name",
            "creative": "creative_name",
            "position": "creative_slot",
        },
    ),
    spec.SIGNED_UP: ("sign_up", {"method": "method", "type": "method"}),
    spec.SIGNED_IN: ("login", {"method": "method", "type": "method"}),
}
# Events whose GA4 form has a monetary value (and so a currency, USD when none is given).
VALUED = frozenset(
    {
        "view_item",
        "add_to_cart",
        "remove_from_cart",
        "add_to_wishlist",
        "view_cart",
        "begin_checkout",
        "add_payment_info",
        "purchase",
        "refund",
    }
)
NEEDS_TRANSACTION = frozenset({"purchase", "refund"})

ITEM_FIELDS = {
    "product_id": "item_id",
    "sku": "item_id",
    "name": "item_name",
    "affiliation": "affiliation",
    "coupon": "coupon",
    "brand": "item_brand",
    "category": "item_category",
    "variant": "item_variant",
}
ITEM_NUMBERS = {
    "price": "price",
    "quantity": "quantity",
    "position": "index",
    "discount": "discount",
}


def event_name(raw: str) -> str | None:
    """A Segment event name in GA4's form: ``Order Shipped`` → ``order_shipped``."""
    name = _NOT_NAME.sub("_", raw.strip().lower()).strip("_")
    name = name.lstrip("0123456789_")[:MAX_PARAM_NAME]
    return name or None


def param_value(value: Any, limit: int = MAX_PARAM_VALUE) -> str | float | int | None:
    """A parameter value as GA4 takes it: a number, or a string of at most ``limit``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return value if value == value else None
    if isinstance(value, str):
        return value[:limit] if value else None
    return None


@dataclass
class Ga4Event:
    client_id: str
    user_id: str | None
    ip: str | None
    event: dict[str, Any]
    user_properties: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str | None, str | None]:
        return (self.client_id, self.user_id, self.ip)


class GA4Destination(MappedDestination[Ga4Event]):
    type = "ga4"
    default_host = DEFAULT_HOST
    limit_age = MAX_AGE
    max_events = MAX_EVENTS
    max_bytes = MAX_BYTES * 3  # stored messages carry context GA4 drops; requests are re-cut

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        api_secret = str(options["api_secret"])
        super().__init__(name, options, [api_secret])
        query = urlencode({"measurement_id": options["measurement_id"], "api_secret": api_secret})
        self.url = f"{self.host}/mp/collect?{query}"
        # The stream's cookie is _ga_<measurement id without "G-">.
        self.stream = str(options["measurement_id"])[2:]
        self.headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}

    # -- mapping ----------------------------------------------------------------------
    def convert(self, message: dict[str, Any], when: float) -> Ga4Event:
        kind = message.get("type")
        if kind == "track":
            name, params = self._track(message)
        elif kind == "page":
            name, params = "page_view", self._page(message)
        else:
            raise Skipped(f"GA4 has no equivalent of {kind} calls")
        user_id, anonymous_id = spec.ids(message)
        ctx = spec.context(message)
        google = spec.mapping(ctx.get("googleAnalytics"))
        browser = self._client_id(google)
        client_id = browser or anonymous_id
        if client_id is None:
            raise Refused(
                "GA4 needs a client id: the message has no anonymousId and no "
                "context.googleAnalytics.clientId"
            )
        if user_id is not None and len(user_id) > MAX_USER_ID:
            raise Refused(f"userId longer than GA4's {MAX_USER_ID} characters")
        # Ours first, so that an event's own 25 parameters never crowd them out; an event
        # property of the same name wins.
        ours: dict[str, Any] = {}
        session = spec.mapping(google.get("sessionIds")).get(self.stream) if browser else None
        if isinstance(session, str) and GA_SESSION_ID.fullmatch(session):
            ours["session_id"] = session  # the browser's session, counted in it
        for key, value in spec.utm(message).items():
            ours["campaign" if key == "utm_campaign" else key[4:]] = value
        # Not a dedupe key (GA4 has none but transaction_id): lets the two be matched.
        ours["event_id"] = str(message["messageId"])[:MAX_PARAM_VALUE]
        params = {**ours, **params}
        event = {
            "name": name,
            "params": self._limit_params(params),
            "timestamp_micros": int(when * 1_000_000),
        }
        ip = ctx.get("ip") if isinstance(ctx.get("ip"), str) else None
        return Ga4Event(client_id, user_id, ip, event, self._user_properties(ctx))

    @staticmethod
    def _client_id(google: Mapping[str, Any]) -> str | None:
        found = google.get("clientId")
        return found if isinstance(found, str) and GA_CLIENT_ID.fullmatch(found) else None

    def _track(self, message: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        raw = track_event(message)
        props = spec.properties(message)
        known = ECOMMERCE.get(raw)
        if known is None:
            name = event_name(raw)
            if name is None:
                raise Refused(f"event name {raw!r} has nothing GA4 can name an event with")
            if name in RESERVED_EVENTS or name.startswith(RESERVED_PREFIXES):
                raise Refused(f"event name {name!r} is reserved by GA4")
            return name, dict(props)
        name, fields = known
        params: dict[str, Any] = {}
        for source, target in fields.items():
            value = props.get(source)
            if value is not None and target not in params:
                params[target] = value
        if name in VALUED:
            value = (
                spec.number(props.get("price"))
                if raw in spec.SINGLE_PRODUCT_EVENTS
                else spec.order_value(props)
            )
            if value is not None:
                params["value"] = value
            params["currency"] = spec.text(props.get("currency")) or "USD"
        if name in NEEDS_TRANSACTION and not spec.text(params.get("transaction_id")):
            raise Refused(f"{raw} needs an order_id for GA4's transaction_id")
        items = [item for p in spec.products(message) if (item := self._item(p))]
        if items:
            params["items"] = items[:MAX_ITEMS]
            if len(items) > MAX_ITEMS:
                metrics.count("ga4_items_dropped", len(items) - MAX_ITEMS)
        return name, params

    @staticmethod
    def _item(product: Mapping[str, Any]) -> dict[str, Any] | None:
        item: dict[str, Any] = {}
        for source, target in ITEM_FIELDS.items():
            value = spec.text(product.get(source))
            if value is not None and target not in item:
                item[target] = value[:MAX_PARAM_VALUE]
        for source, target in ITEM_NUMBERS.items():
            number = spec.number(product.get(source))
            if number is not None:
                item[target] = number
        # GA4 drops an item with neither id nor name.
        return item if ("item_id" in item or "item_name" in item) else None

    @staticmethod
    def _page(message: Mapping[str, Any]) -> dict[str, Any]:
        page = spec.page_url(message)
        params: dict[str, Any] = {}
        for source, target in (
            ("url", "page_location"),
            ("referrer", "page_referrer"),
            ("title", "page_title"),
        ):
            value = spec.text(page.get(source))
            if value:
                params[target] = value
        locale = spec.text(spec.context(message).get("locale"))
        if locale:
            params["language"] = locale.lower()
        return params

    def _limit_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """At most 25 parameters, named and sized as GA4 keeps them; the rest counted."""
        out: dict[str, Any] = {}
        dropped = 0
        for key, value in params.items():
            if key == "items" and isinstance(value, list):
                out["items"] = value
                continue
            name = event_name(str(key))
            converted = param_value(value)
            if (
                name is None
                or converted is None
                or name.startswith(RESERVED_PREFIXES)
                or len(out) >= MAX_PARAMS
            ):
                dropped += 1
                continue
            out.setdefault(name, converted)
        if dropped:
            metrics.count("ga4_params_dropped", dropped)
        return out

    @staticmethod
    def _user_properties(ctx: Mapping[str, Any]) -> dict[str, Any]:
        """The context's ``traits`` as GA4 user properties (their limits kept)."""
        out: dict[str, Any] = {}
        for key, value in spec.mapping(ctx.get("traits")).items():
            name = event_name(str(key))
            converted = param_value(value, MAX_USER_PROPERTY_VALUE)
            if (
                name is None
                or converted is None
                or len(name) > MAX_USER_PROPERTY_NAME
                or name in RESERVED_USER_PROPERTIES
                or name.startswith(RESERVED_PREFIXES)
            ):
                continue
            if len(out) < MAX_USER_PROPERTIES:
                out[name] = {"value": converted}
        return out

    # -- sending ----------------------------------------------------------------------
    def requests(self, items: list[tuple[int, Ga4Event]]) -> list[tuple[list[int], bytes]]:
        """One request body per client, each of at most 25 events and 130 kB."""
        groups: dict[tuple[str, str | None, str | None], list[tuple[int, Ga4Event]]] = {}
        for index, event in items:
            groups.setdefault(event.key, []).append((index, event))
        out: list[tuple[list[int], bytes]] = []
        for (client_id, user_id, ip), members in groups.items():
            head: dict[str, Any] = {"client_id": client_id}
            if user_id is not None:
                head["user_id"] = user_id
            if ip is not None:
                head["ip_override"] = ip
            user_properties: dict[str, Any] = {}
            for _, event in members:
                user_properties.update(event.user_properties)
            if user_properties:
                head["user_properties"] = dict(list(user_properties.items())[:MAX_USER_PROPERTIES])
            prefix = orjson.dumps(head)[:-1] + b',"events":['
            run: list[int] = []
            parts: list[bytes] = []
            size = len(prefix) + 2
            for index, event in members:
                part = orjson.dumps(event.event)
                if run and (len(run) >= MAX_EVENTS or size + len(part) + 1 > MAX_BYTES):
                    out.append((run, prefix + b",".join(parts) + b"]}"))
                    run, parts, size = [], [], len(prefix) + 2
                run.append(index)
                parts.append(part)
                size += len(part) + 1
            out.append((run, prefix + b",".join(parts) + b"]}"))
        return out

    def deliver(self, items: list[tuple[int, Ga4Event]], *, attempt: int) -> Outcome:
        refused: dict[int, str] = {}
        delivered = 0
        requests = self.requests(items)
        for number, (positions, body) in enumerate(requests):
            if len(body) > MAX_BYTES:
                refused.update(dict.fromkeys(positions, f"larger than GA4's {MAX_BYTES} bytes"))
                continue
            answer = self.post(self.url, body, self.headers, attempt)
            if isinstance(answer, Outcome):
                error, retry_after, retry = answer.error or "no answer", answer.retry_after, True
            elif 200 <= answer.status < 300:
                delivered += len(positions)
                continue
            else:
                error = self.transport.error(answer)
                retry = is_retryable(answer.status)
                retry_after = parse_retry_after(answer.headers.get("Retry-After"))
            if not retry:
                refused.update(dict.fromkeys(positions, error))
                continue
            # This client's events and the ones not sent yet wait; those sent stay sent.
            pending = [i for p, _ in requests[number:] for i in p]
            if not delivered and not refused:
                return Outcome.transient(error, retry_after)
            return Outcome.partial(refused, pending, error=error, retry_after=retry_after)
        return Outcome.partial(refused)
