"""``@tracked`` on each kind of callable, with ``functools.wraps`` semantics intact."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator

import pytest

import segment_mw
from segment_mw import tracked

from . import tasks


def by_customer(result: object, customer: str, amount: int) -> dict[str, object]:
    return {"amount": amount, "charge_id": result}


@tracked("Charge Completed", user_id=lambda customer, amount: customer, properties=by_customer)
def charge(customer: str, amount: int) -> str:
    """Charge a customer."""
    return f"ch_{amount}"


class Billing:
    fee = 3

    @tracked(
        "Charge Completed",
        user_id=lambda self, customer, amount: customer,
        properties=lambda result, self, customer, amount: {"amount": amount + self.fee},
    )
    def charge(self, customer: str, amount: int) -> str:
        return f"ch_{amount}"

    @classmethod
    @tracked("Refund Issued", user_id=lambda cls, customer: customer)
    def refund_below(cls, customer: str) -> str:
        return cls.__name__

    @tracked("Refund Issued", user_id=lambda cls, customer: customer)
    @classmethod
    def refund_above(cls, customer: str) -> str:
        return cls.__name__

    @staticmethod
    @tracked("Coupon Applied", user_id=lambda customer: customer)
    def coupon_below(customer: str) -> str:
        return "ok"

    @tracked("Coupon Applied", user_id=lambda customer: customer)
    @staticmethod
    def coupon_above(customer: str) -> str:
        return "ok"


@tracked(
    "Charge Completed",
    user_id=lambda customer, amount: customer,
    properties=lambda result, customer, amount: {"amount": amount, "charge_id": result},
)
async def charge_async(customer: str, amount: int) -> str:
    """Charge a customer, asynchronously."""
    return f"ch_{amount}"


def test_plain_function(segment_events):
    assert charge("u1", 10) == "ch_10"
    [event] = segment_events
    assert event["type"] == "track"
    assert event["event"] == "Charge Completed"
    assert event["userId"] == "u1"
    assert event["properties"] == {"amount": 10, "charge_id": "ch_10"}
    assert event["channel"] == "server"


def test_keyword_arguments_reach_the_callables_as_passed(segment_events):
    assert charge(amount=7, customer="u2") == "ch_7"
    assert segment_events[0]["userId"] == "u2"
    assert segment_events[0]["properties"] == {"amount": 7, "charge_id": "ch_7"}


def test_wraps_semantics():
    assert charge.__wrapped__.__name__ == "charge"  # type: ignore[attr-defined]
    assert charge.__name__ == "charge"
    assert charge.__qualname__ == "charge"
    assert charge.__doc__ == "Charge a customer."
    assert charge.__module__ == __name__
    assert str(inspect.signature(charge)) == "(customer: 'str', amount: 'int') -> 'str'"
    assert not inspect.iscoroutinefunction(charge)


def test_method_receives_self(segment_events):
    assert Billing().charge("u3", 10) == "ch_10"
    [event] = segment_events
    assert event["userId"] == "u3"
    assert event["properties"] == {"amount": 13}
    assert str(inspect.signature(Billing().charge)) == "(customer: 'str', amount: 'int') -> 'str'"


@pytest.mark.parametrize("name", ["refund_below", "refund_above"])
def test_classmethod_in_either_order(segment_events, name):
    method = getattr(Billing, name)
    assert method("u4") == "Billing"
    assert getattr(Billing(), name)("u4") == "Billing"
    assert [(e["event"], e["userId"]) for e in segment_events] == [("Refund Issued", "u4")] * 2
    assert isinstance(inspect.getattr_static(Billing, name), classmethod)


@pytest.mark.parametrize("name", ["coupon_below", "coupon_above"])
def test_staticmethod_in_either_order(segment_events, name):
    assert getattr(Billing, name)("u5") == "ok"
    assert getattr(Billing(), name)("u5") == "ok"
    assert [(e["event"], e["userId"]) for e in segment_events] == [("Coupon Applied", "u5")] * 2
    assert isinstance(inspect.getattr_static(Billing, name), staticmethod)


async def test_async_function(segment_events):
    assert inspect.iscoroutinefunction(charge_async)
    assert charge_async.__wrapped__.__name__ == "charge_async"  # type: ignore[attr-defined]
    assert charge_async.__doc__ == "Charge a customer, asynchronously."
    assert str(inspect.signature(charge_async)) == "(customer: 'str', amount: 'int') -> 'str'"
    assert await charge_async("u6", 5) == "ch_5"  # the callable gets the awaited result
    [event] = segment_events
    assert event["userId"] == "u6"
    assert event["properties"] == {"amount": 5, "charge_id": "ch_5"}


async def test_async_function_reads_the_scope_of_its_task(segment_events):
    @tracked("Signed Up")
    async def sign_up() -> None:
        return None

    with segment_mw.bound(segment_mw.Scope(user_id="u7", context={"ip": "203.0.113.7"})):
        await sign_up()
    [event] = segment_events
    assert event["userId"] == "u7"
    assert event["context"]["ip"] == "203.0.113.7"


def test_celery_task_function_keeps_its_name_and_argument_checks(segment_events):
    # @shared_task on top of @tracked: Celery names the task from the wrapped function and
    # checks .delay() arguments against its real signature (no message is sent for these).
    assert tasks.charge.name == "tests.tracked.charge"
    assert tasks.charge.__wrapped__.__wrapped__.__name__ == "charge"  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        tasks.charge.delay("only-a-customer")
    with pytest.raises(TypeError):
        tasks.charge.delay("u8", 1, 2)
    # Called directly, the task body runs here, tracked like any function.
    assert tasks.charge("u8", 20) == "ch_u8_20"
    assert segment_events[0]["properties"] == {"amount": 20, "charge_id": "ch_u8_20"}


def test_generators_are_refused_at_decoration():
    def numbers() -> Iterator[int]:
        yield 1

    async def anumbers() -> AsyncIterator[int]:
        yield 1

    with pytest.raises(TypeError, match="generator function"):
        tracked("Numbers Listed")(numbers)
    with pytest.raises(TypeError, match="generator function"):
        tracked("Numbers Listed")(anumbers)


def test_bad_arguments_are_refused_at_decoration():
    with pytest.raises(TypeError, match="event name"):
        tracked("")
    with pytest.raises(ValueError, match="on must be one of"):
        tracked("Charge Completed", on="sometimes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="properties"):
        tracked("Charge Completed", properties=["amount"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="user_id"):
        tracked("Charge Completed", user_id=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="integrations"):
        tracked("Charge Completed", integrations=["All"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a callable"):
        tracked("Charge Completed")(42)  # type: ignore[type-var]
