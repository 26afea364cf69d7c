"""Serialisation: exact money, the Python types apps use, paths to bad values, size limit."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import re
import threading
import types
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

import segment_mw
from segment_mw.client import Client
from segment_mw.events import MAX_EVENT_BYTES
from segment_mw.serialize import dumps
from segment_mw.testing import CapturedEvents


@pytest.fixture
def client(configure: Callable[..., Client]) -> Client:
    return configure(IN_PROCESS_FLUSHER=False)


def tracked_body(events: CapturedEvents, properties: dict[str, Any]) -> bytes:
    segment_mw.track("Order Completed", properties, user_id="u1")
    return events.entries[-1].body


def exact(body: bytes) -> Any:
    """Parse JSON keeping every number exact."""
    return json.loads(body, parse_float=Decimal, parse_int=Decimal)


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Size(enum.IntEnum):
    SMALL = 1
    LARGE = 3


@dataclasses.dataclass
class Product:
    sku: str
    price: Decimal
    tags: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Order:
    order_id: uuid.UUID
    products: list[Product]
    placed: dt.datetime


# -- money --------------------------------------------------------------------------------


def test_decimal_reaches_the_wire_exactly(client: Client, segment_events: CapturedEvents) -> None:
    body = tracked_body(segment_events, {"revenue": Decimal("19.99"), "currency": "USD"})
    assert b'"revenue":19.99,' in body
    assert exact(body)["properties"]["revenue"] == Decimal("19.99")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("0.1") + Decimal("0.2"), b"0.3"),
        (Decimal("1.10"), b"1.10"),  # a float would drop the trailing zero
        (Decimal("100.00"), b"100.00"),
        (Decimal("-0.00"), b"-0.00"),
        (Decimal("0"), b"0"),
        (Decimal("9007199254740993"), b"9007199254740993"),  # 2**53 + 1: float cannot
        (
            Decimal("12345678901234567890.123456789012345678901234567890"),
            b"12345678901234567890.123456789012345678901234567890",
        ),
        (Decimal("0.000000000000000000000000000001"), b"1E-30"),
        (Decimal("1E+3"), b"1E+3"),
    ],
)
def test_decimals_are_never_floated(
    client: Client, segment_events: CapturedEvents, value: Decimal, text: bytes
) -> None:
    body = tracked_body(segment_events, {"total": value})
    assert b'"total":' + text + b"," in body or b'"total":' + text + b"}" in body
    assert exact(body)["properties"]["total"] == value


def test_decimals_inside_containers(client: Client, segment_events: CapturedEvents) -> None:
    products = [{"sku": "a", "price": Decimal("0.10")}, {"sku": "b", "price": Decimal("2.50")}]
    body = tracked_body(segment_events, {"products": products, "pair": (Decimal("1.5"),)})
    assert b'"price":0.10' in body
    assert b'"price":2.50' in body
    assert exact(body)["properties"]["pair"] == [Decimal("1.5")]


@pytest.mark.parametrize("value", ["NaN", "-NaN", "sNaN", "Infinity", "-Infinity"])
def test_non_finite_decimal_is_rejected(client: Client, value: str) -> None:
    with pytest.raises(segment_mw.InvalidEvent, match=r"properties\.order\.total.*finite"):
        segment_mw.track("Order Completed", {"order": {"total": Decimal(value)}}, user_id="u1")


# -- other Python types -------------------------------------------------------------------


def test_uuid_datetime_date_enum(client: Client, segment_events: CapturedEvents) -> None:
    order_id = uuid.UUID("7d4f4e4c-2a55-4d0b-9b3e-6f1f0b0c2a11")
    body = tracked_body(
        segment_events,
        {
            "order_id": order_id,
            "naive": dt.datetime(2024, 5, 1, 12, 30, 45, 123456),
            "utc": dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.timezone.utc),
            "aware": dt.datetime(2024, 5, 1, 14, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "day": dt.date(2024, 5, 1),
            "color": Color.RED,
            "size": Size.LARGE,
        },
    )
    props = json.loads(body)["properties"]
    assert props == {
        "order_id": "7d4f4e4c-2a55-4d0b-9b3e-6f1f0b0c2a11",
        "naive": "2024-05-01T12:30:45.123456+00:00",  # naive is taken as UTC
        "utc": "2024-05-01T12:30:00+00:00",
        "aware": "2024-05-01T14:30:00+02:00",
        "day": "2024-05-01",
        "color": "red",
        "size": 3,
    }
    for key in ("naive", "utc", "aware"):  # every one is ISO-8601 and the same instant kind
        assert dt.datetime.fromisoformat(props[key]).tzinfo is not None


def test_sets_tuples_and_frozensets_become_lists(
    client: Client, segment_events: CapturedEvents
) -> None:
    body = tracked_body(
        segment_events,
        {"tags": {"b", "a", "c"}, "frozen": frozenset({1, 2}), "pair": (1, "x"), "empty": set()},
    )
    props = json.loads(body)["properties"]
    assert sorted(props["tags"]) == ["a", "b", "c"]
    assert sorted(props["frozen"]) == [1, 2]
    assert props["pair"] == [1, "x"]
    assert props["empty"] == []


def test_dataclasses_nest(client: Client, segment_events: CapturedEvents) -> None:
    order = Order(
        order_id=uuid.UUID("00000000-0000-4000-8000-000000000001"),
        products=[Product("sku-1", Decimal("19.99"), ("new",)), Product("sku-2", Decimal("5"))],
        placed=dt.datetime(2024, 5, 1, 9, 0),
    )
    body = tracked_body(segment_events, {"order": order, "by_color": {Color.BLUE: 2}})
    assert exact(body)["properties"] == {
        "order": {
            "order_id": "00000000-0000-4000-8000-000000000001",
            "products": [
                {"sku": "sku-1", "price": Decimal("19.99"), "tags": ["new"]},
                {"sku": "sku-2", "price": Decimal("5"), "tags": []},
            ],
            "placed": "2024-05-01T09:00:00+00:00",
        },
        "by_color": {"blue": Decimal("2")},
    }


def test_other_mappings_serialise_like_dicts(
    client: Client, segment_events: CapturedEvents
) -> None:
    frozen = types.MappingProxyType({"a": Decimal("1.0"), "b": [types.MappingProxyType({"c": 1})]})
    body = tracked_body(segment_events, {"nested": frozen})
    assert b'"nested":{"a":1.0,"b":[{"c":1}]}' in body


def test_dumps_of_plain_values_is_compact_json() -> None:
    assert dumps({"a": [1, 2.5, None, True, "é"]}) == '{"a":[1,2.5,null,true,"é"]}'.encode()


# -- what cannot be serialised -------------------------------------------------------------


class Opaque:
    pass


@dataclasses.dataclass
class Holder:
    lock: Any


@pytest.mark.parametrize(
    ("properties", "path"),
    [
        ({"items": [{"price": 1}, {"price": 2}, {"price": Opaque()}]}, "properties.items[2].price"),
        ({"x": Opaque()}, "properties.x"),
        ({"a": {"b": {"c": [1, [2, Opaque()]]}}}, "properties.a.b.c[1][1]"),
        ({"pair": (1, Opaque())}, "properties.pair[1]"),
        ({"tags": {Opaque()}}, "properties.tags[0]"),
        ({"product": Product("s", Opaque())}, "properties.product.price"),  # type: ignore[arg-type]
        ({"n": 2**64}, "properties.n"),
        ({"when": dt.timedelta(days=1)}, "properties.when"),
        ({"blob": b"raw bytes"}, "properties.blob"),
        ({"name": "bad \udc80 text"}, "properties.name"),
        # A dataclass holding something that cannot even be copied (asdict() would raise).
        ({"holder": [Holder(1), {"h": Holder(threading.Lock())}]}, "properties.holder[1].h.lock"),
    ],
)
def test_unserialisable_value_names_its_path(
    client: Client, segment_events: CapturedEvents, properties: dict[str, Any], path: str
) -> None:
    with pytest.raises(segment_mw.InvalidEvent, match=re.escape(path) + " cannot be serialised"):
        segment_mw.track("Order Completed", properties, user_id="u1")
    assert len(segment_events) == 0


def test_unserialisable_context_and_traits_name_their_path(client: Client) -> None:
    with pytest.raises(segment_mw.InvalidEvent, match=r"context\.device\.token"):
        segment_mw.track("E", user_id="u1", context={"device": {"token": Opaque()}})
    with pytest.raises(segment_mw.InvalidEvent, match=r"traits\.avatar"):
        segment_mw.identify("u1", {"avatar": Opaque()})


def test_reference_cycles_are_reported_not_crashed_on(client: Client) -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(segment_mw.InvalidEvent, match=r"^properties\.loop\.self\.self.*levels"):
        segment_mw.track("E", {"loop": loop}, user_id="u1")
    chain: list[Any] = []
    chain.append(chain)
    with pytest.raises(segment_mw.InvalidEvent, match=r"^properties\.chain\[0\]\[0\].*levels"):
        segment_mw.track("E", {"chain": chain}, user_id="u1")


def test_deep_but_finite_nesting_is_fine(client: Client, segment_events: CapturedEvents) -> None:
    deep: Any = 1
    for _ in range(200):
        deep = [deep]
    body = tracked_body(segment_events, {"deep": deep})
    assert b"[" * 200 + b"1" + b"]" * 200 in body


def test_unsupported_key_type_is_reported(client: Client) -> None:
    with pytest.raises(segment_mw.InvalidEvent, match=r"properties.*key of type tuple"):
        segment_mw.track("E", {"grid": {(1, 2): "x"}}, user_id="u1")


# -- the 32 KB limit ----------------------------------------------------------------------


def _sized_track(size_of_blob: int) -> str:
    return segment_mw.track(
        "Big Event",
        {"blob": "x" * size_of_blob},
        user_id="u1",
        message_id="m" * 36,
        timestamp=dt.datetime(2024, 1, 1),
    )


def test_event_over_32_kb_is_rejected_naming_event_and_size(
    client: Client, segment_events: CapturedEvents
) -> None:
    _sized_track(0)
    envelope = len(segment_events.entries[0].body)
    # Exactly at the limit is fine ...
    _sized_track(MAX_EVENT_BYTES - envelope)
    assert len(segment_events.entries[1].body) == MAX_EVENT_BYTES == 32768
    # ... one byte more is not.
    with pytest.raises(segment_mw.InvalidEvent) as info:
        _sized_track(MAX_EVENT_BYTES - envelope + 1)
    message = str(info.value)
    assert "'Big Event'" in message
    assert f"{MAX_EVENT_BYTES + 1} bytes" in message
    assert str(MAX_EVENT_BYTES) in message
    assert len(segment_events) == 2


def test_oversized_page_names_the_page(client: Client) -> None:
    with pytest.raises(segment_mw.InvalidEvent, match=r"page 'Pricing' is \d+ bytes"):
        segment_mw.page("Pricing", {"blob": "y" * 40_000}, user_id="u1")
