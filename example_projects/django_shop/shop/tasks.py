"""Celery tasks of the example shop: a renewal charged where no browser is."""

from __future__ import annotations

from decimal import Decimal

from celery import shared_task

import segment_mw


@shared_task
@segment_mw.tracked(
    "Subscription Renewed",
    # No request here: the user comes from the task's own argument.
    user_id=lambda user_id, plan, price: str(user_id),
    properties=lambda result, user_id, plan, price: {
        "plan": plan,
        "revenue": Decimal(price),
        "currency": "EUR",
    },
)
def renew_subscription(user_id: int, plan: str, price: str) -> None:
    """Charge the next period of a subscription (a payment provider call in a real shop)."""


@shared_task
@segment_mw.tracked("Receipt Sent")
def send_receipt(order_id: str) -> None:
    """Sent from a checkout: the request's user and context travel with the task."""
