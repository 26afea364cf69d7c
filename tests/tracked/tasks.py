"""Celery tasks decorated the documented way: ``@shared_task`` on top of ``@tracked``."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

import segment_mw
from segment_mw import scope as scope_mod


class CardDeclined(Exception):
    pass


def seen_scope() -> dict[str, Any] | None:
    """What identity and context the task body saw, returned through the result backend."""
    current = scope_mod.current()
    if current is None:
        return None
    return {
        "user_id": current.user_id,
        "anonymous_id": current.anonymous_id,
        "context": dict(current.context),
    }


@shared_task(name="tests.tracked.bill")
@segment_mw.tracked("Invoice Billed", properties=lambda result, invoice: {"invoice": invoice})
def bill(invoice: str) -> dict[str, Any] | None:
    """No id resolver: the identity can only come from the scope the sender had bound."""
    return seen_scope()


@shared_task(name="tests.tracked.charge")
@segment_mw.tracked(
    "Charge Completed",
    user_id=lambda customer, amount: customer,
    properties=lambda result, customer, amount: {"amount": amount, "charge_id": result},
)
def charge(customer: str, amount: int) -> str:
    return f"ch_{customer}_{amount}"


@shared_task(name="tests.tracked.decline")
@segment_mw.tracked("Charge Failed", on="failure", user_id=lambda customer: customer)
def decline(customer: str) -> None:
    raise CardDeclined(f"card of {customer} declined")


@shared_task(name="tests.tracked.bound", bind=True)
@segment_mw.tracked(
    "Bound Task Ran",
    user_id=lambda task, customer: customer,
    properties=lambda result, task, customer: {"task_id": task.request.id},
)
def bound(self: Task[Any, Any], customer: str) -> str:
    return str(self.request.id)


@segment_mw.tracked("Subscription Renewed", properties=lambda result, plan: {"plan": plan})
def renew(plan: str) -> str:
    return plan


@shared_task(name="tests.tracked.renew_for")
def renew_for(user_id: str, plan: str) -> str:
    """A task that learns whom it acts for from its arguments, and says so once."""
    segment_mw.set_user(user_id)
    return renew(plan)
