"""Billing: the one place money moves, so the one place "Order Completed" is tracked."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

import segment_mw


@dataclass
class Order:
    order_id: str
    product_id: int
    total: Decimal
    currency: str = "EUR"


def _order_properties(order: Order, *args: object, **kwargs: object) -> dict[str, object]:
    return {
        "order_id": order.order_id,
        "revenue": order.total,  # a Decimal: reaches the wire exactly, never as a float
        "currency": order.currency,
        "products": [{"product_id": order.product_id, "price": order.total, "quantity": 1}],
    }


@segment_mw.tracked("Order Completed", properties=_order_properties)
def charge(product_id: int, price: Decimal) -> Order:
    """Charge the customer (a payment provider call in a real shop)."""
    return Order(order_id=uuid.uuid4().hex[:12], product_id=product_id, total=price)
