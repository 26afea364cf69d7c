"""What ``@tracked`` emits for each outcome, whose identity it carries, and that nothing
about the event (a bad callable, a missing id, a broken queue) ever reaches the caller."""

from __future__ import annotations

import logging
import traceback
from decimal import Decimal
from typing import Any

import pytest

import segment_mw
from segment_mw import Scope, events, metrics, tracked


class CardDeclined(Exception):
    pass


def raise_declined(customer: str) -> None:
    raise CardDeclined(f"card of {customer} declined")


REQUEST = Scope(
    user_id="u-req",
    anonymous_id="anon-req",
    context={
        "ip": "203.0.113.9",
        "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/126.0",
        "page": {"path": "/checkout", "url": "https://shop.example/checkout?utm_source=news"},
        "campaign": {"source": "news"},
    },
)


@pytest.fixture(autouse=True)
def _warnings_captured(caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="segment_mw")


# -- properties ----------------------------------------------------------------------------
def test_static_properties_are_copied_per_call(segment_events):
    props: dict[str, Any] = {"plan": "pro", "revenue": Decimal("19.99")}

    @tracked("Subscription Started", properties=props, user_id="u1")
    def subscribe() -> None:
        return None

    subscribe()
    subscribe()
    assert [e["properties"] for e in segment_events] == [{"plan": "pro", "revenue": 19.99}] * 2
    assert props == {"plan": "pro", "revenue": Decimal("19.99")}


def test_properties_callable_gets_result_and_arguments(segment_events):
    seen: list[tuple[Any, ...]] = []

    def properties(result: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        seen.append((result, args, kwargs))
        return {"total": result}

    @tracked("Order Completed", properties=properties, user_id="u1")
    def order(items: list[int], *, coupon: str | None = None) -> int:
        return sum(items)

    assert order([1, 2], coupon="X") == 3
    assert seen == [(3, ([1, 2],), {"coupon": "X"})]
    assert segment_events[0]["properties"] == {"total": 3}


def test_properties_callable_may_return_none(segment_events):
    @tracked("Signed In", properties=lambda result: None, user_id="u1")
    def sign_in() -> None:
        return None

    sign_in()
    assert segment_events[0]["properties"] == {}


# -- outcomes ------------------------------------------------------------------------------
def test_on_success_emits_nothing_when_the_call_raises(segment_events):
    charge = tracked("Charge Completed", user_id="u1")(raise_declined)
    with pytest.raises(CardDeclined):
        charge("u1")
    assert segment_events == []


def test_on_failure_carries_the_error_and_never_a_traceback(segment_events):
    seen: list[Any] = []

    def properties(result: Any, customer: str) -> dict[str, Any]:
        seen.append(result)
        return {"customer": customer, "error_type": "not mine"}

    charge = tracked(
        "Charge Failed", on="failure", properties=properties, user_id=lambda customer: customer
    )(raise_declined)
    with pytest.raises(CardDeclined) as info:
        charge("u2")
    assert seen == [info.value]  # the callable receives the exception as the result
    [event] = segment_events
    assert event["event"] == "Charge Failed"
    assert event["userId"] == "u2"
    assert event["properties"] == {
        "customer": "u2",
        "error_type": "CardDeclined",
    }
    assert b"Traceback" not in segment_events.entries[0].body
    assert b"raise_declined" not in segment_events.entries[0].body


def test_on_failure_emits_nothing_on_success(segment_events):
    @tracked("Charge Failed", on="failure", user_id="u1")
    def charge() -> str:
        return "ok"

    assert charge() == "ok"
    assert segment_events == []


def test_on_always_emits_for_both(segment_events):
    def properties(result: Any, fail: bool) -> dict[str, Any]:
        return {"ok": not isinstance(result, BaseException)}

    @tracked("Charge Attempted", on="always", properties=properties, user_id="u1")
    def charge(fail: bool) -> str:
        if fail:
            raise CardDeclined("no")
        return "ok"

    charge(False)
    with pytest.raises(CardDeclined):
        charge(True)
    assert [e["properties"] for e in segment_events] == [
        {"ok": True},
        {"ok": False, "error_type": "CardDeclined"},
    ]


def test_the_error_message_is_sent_only_when_asked_and_cut(segment_events):
    @tracked("Card Failed", on="failure", user_id="u1")
    def card() -> None:
        raise ValueError("card 4111 1111 1111 1111 of ada@example.com declined")

    with pytest.raises(ValueError):
        card()
    # str(exc) often carries customer data: by default only the exception's class goes.
    assert segment_events[0]["properties"] == {"error_type": "ValueError"}

    @tracked("Import Failed", on="failure", user_id="u1", error_message=True)
    def run() -> None:
        raise ValueError("x" * 100_000)

    with pytest.raises(ValueError):
        run()
    assert len(segment_events[1]["properties"]["error_message"]) == 1024


def test_error_type_is_the_qualified_class_name(segment_events):
    class Gateway:
        class Timeout(Exception):
            pass

    @tracked("Charge Failed", on="failure", user_id="u1", error_message=True)
    def charge() -> None:
        raise Gateway.Timeout()

    with pytest.raises(Gateway.Timeout):
        charge()
    props = segment_events[0]["properties"]
    assert props["error_type"].endswith("Gateway.Timeout")
    assert props["error_message"] == ""


def test_base_exceptions_are_not_failures(segment_events):
    @tracked("Charge Attempted", on="always", user_id="u1")
    def charge() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        charge()
    assert segment_events == []


def test_celery_retry_is_not_a_failure(segment_events):
    from celery.exceptions import Retry

    @tracked("Charge Failed", on="failure", user_id="u1")
    def charge() -> None:
        raise Retry("again later")

    with pytest.raises(Retry):
        charge()
    assert segment_events == []


# -- the function's own exceptions ---------------------------------------------------------
def test_exceptions_pass_through_untouched(segment_events):
    original: list[BaseException] = []

    def charge(customer: str) -> None:
        try:
            raise_declined(customer)
        except CardDeclined as exc:
            original.append(exc)
            raise

    for on in ("success", "failure", "always"):
        wrapped = tracked("Charge Failed", on=on, user_id="u1")(charge)  # type: ignore[arg-type]
        with pytest.raises(CardDeclined) as info:
            wrapped("u1")
        assert info.value is original[-1]
        assert info.value.__cause__ is None
        assert info.value.__context__ is None
        frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
        assert frames[-2:] == ["charge", "raise_declined"]


def test_exceptions_pass_through_untouched_when_emission_fails(segment_events, caplog):
    def broken(result: Any, customer: str) -> dict[str, Any]:
        raise RuntimeError("properties bug")

    charge = tracked("Charge Failed", on="failure", properties=broken, user_id="u1")(raise_declined)
    with pytest.raises(CardDeclined) as info:
        charge("u1")
    assert info.value.__context__ is None
    assert traceback.extract_tb(info.value.__traceback__)[-1].name == "raise_declined"
    assert metrics.counts().get("tracked_error") == 1
    assert segment_events == []


async def test_async_exceptions_pass_through_untouched(segment_events):
    error = CardDeclined("async decline")

    @tracked("Charge Failed", on="failure", user_id="u1", error_message=True)
    async def charge() -> None:
        raise error

    with pytest.raises(CardDeclined) as info:
        await charge()
    assert info.value is error
    assert traceback.extract_tb(error.__traceback__)[-1].name == "charge"
    assert segment_events[0]["properties"]["error_message"] == "async decline"


# -- emission problems are logged and counted, never raised ---------------------------------
def expect_logged(caplog: Any, event: str, text: str) -> None:
    records = [r for r in caplog.records if r.name == "segment_mw.tracked"]
    assert len(records) == 1, records
    assert event in records[0].getMessage()
    assert text in records[0].getMessage()
    assert records[0].levelno == logging.WARNING


@pytest.mark.parametrize(
    ("properties", "kind", "text"),
    [
        (lambda result: 1 / 0, "tracked_error", "ZeroDivisionError: division by zero"),
        (lambda result: ["not", "a", "mapping"], "invalid", "properties callable returned list"),
        (lambda result: {"bad": object()}, "invalid", "properties"),
        (lambda result: {"big": "x" * 40_000}, "invalid", "bytes serialised"),
    ],
    ids=["raises", "not-a-mapping", "unserialisable", "oversized"],
)
def test_bad_properties_are_logged_and_counted(segment_events, caplog, properties, kind, text):
    @tracked("Report Exported", properties=properties, user_id="u1")
    def export() -> str:
        return "done"

    assert export() == "done"
    assert segment_events == []
    assert metrics.counts().get(kind) == 1
    expect_logged(caplog, "Report Exported", text)


def test_failing_id_resolvers_are_logged_and_counted(segment_events, caplog):
    @tracked("Report Exported", user_id=lambda: {}["missing"])
    def export() -> str:
        return "done"

    @tracked("Report Exported", user_id=lambda: ["not", "an", "id"])
    def export_bad_id() -> str:
        return "done"

    assert export() == "done"
    assert export_bad_id() == "done"
    assert segment_events == []
    assert metrics.counts().get("tracked_error") == 1
    assert metrics.counts().get("invalid") == 1


def test_unexpected_build_failure_is_swallowed(segment_events, monkeypatch, caplog):
    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("serialiser bug")

    monkeypatch.setattr(events, "build", explode)

    @tracked("Report Exported", user_id="u1")
    def export() -> str:
        return "done"

    assert export() == "done"
    assert metrics.counts().get("tracked_error") == 1
    expect_logged(caplog, "Report Exported", "RuntimeError: serialiser bug")


def test_queue_failure_is_swallowed(configure, monkeypatch, tmp_path):
    client = configure(
        DESTINATIONS={"file": {"type": "jsonl", "path": str(tmp_path / "out.jsonl")}},
        IN_PROCESS_FLUSHER=False,
    )

    def unreachable(entries: Any) -> None:
        raise ConnectionError("queue down")

    monkeypatch.setattr(client.push_queue, "push", unreachable)

    @tracked("Report Exported", user_id="u1")
    def export() -> str:
        return "done"

    assert export() == "done"
    # The durable write failed: the event waits in the in-memory spill instead.
    assert metrics.counts().get("spilled") == 1
    assert client.producer.buffered == 1
    monkeypatch.undo()  # the queue is back: the spilled event is pushed
    assert client.producer.drain(5.0)
    assert client.status().destinations["file"].queued == 1


# -- identity and context ------------------------------------------------------------------
def test_identity_and_context_come_from_the_bound_scope(segment_events):
    @tracked("Order Completed", context={"groupId": "acme"}, integrations={"Mixpanel": False})
    def order() -> None:
        return None

    with segment_mw.bound(REQUEST):
        order()
    [event] = segment_events
    assert event["userId"] == "u-req"
    assert event["anonymousId"] == "anon-req"
    assert event["context"]["ip"] == "203.0.113.9"
    assert event["context"]["userAgent"].startswith("Mozilla/5.0")
    assert event["context"]["page"]["path"] == "/checkout"
    assert event["context"]["campaign"] == {"source": "news"}
    assert event["context"]["groupId"] == "acme"
    assert event["context"]["library"]["name"] == "segment_mw"
    assert event["integrations"] == {"Mixpanel": False}
    assert REQUEST.emitted == 1
    REQUEST.emitted = 0


def test_resolvers_override_the_scope_and_fall_back_to_it(segment_events):
    @tracked("Order Completed", user_id=lambda buyer: buyer)
    def order(buyer: str | None) -> None:
        return None

    with segment_mw.bound(REQUEST):
        order("u-arg")
        order(None)
        order("")
    # A buyer other than the request's user is someone else: no anonymous id of the request.
    assert [(e["userId"], e.get("anonymousId")) for e in segment_events] == [
        ("u-arg", None),
        ("u-req", "anon-req"),
        ("u-req", "anon-req"),
    ]


def test_anonymous_id_resolver_and_default_integrations(configure, segment_events):
    configure(INTEGRATIONS={"All": True, "Facebook Pixel": False}, IN_PROCESS_FLUSHER=False)

    @tracked(
        "Cart Viewed", anonymous_id=lambda cart: cart["anon"], integrations={"Amplitude": False}
    )
    def view(cart: dict[str, str]) -> None:
        return None

    view({"anon": "anon-9"})
    [event] = segment_events
    assert "userId" not in event
    assert event["anonymousId"] == "anon-9"
    assert event["integrations"] == {"All": True, "Facebook Pixel": False, "Amplitude": False}


def test_no_identity_is_not_sent_but_logged_and_counted(segment_events, caplog):
    @tracked("Invoice Billed")
    def bill() -> str:
        return "billed"

    @tracked("Invoice Billed", user_id=lambda: None)
    def bill_for_nobody() -> str:
        return "billed"

    assert bill() == "billed"
    assert segment_events == []
    assert metrics.counts().get("no_identity") == 1
    expect_logged(caplog, "Invoice Billed", "no user or anonymous id")
    assert bill_for_nobody() == "billed"
    assert metrics.counts().get("no_identity") == 2


def test_opted_out_scope_queues_nothing(segment_events):
    @tracked("Order Completed")
    def order() -> None:
        return None

    with segment_mw.bound(Scope(user_id="u1", opted_out=True)):
        order()
    with segment_mw.bound(Scope(opted_out=True)):  # no anonymous id is minted for them
        order()
    assert segment_events == []
    assert metrics.counts().get("opted_out") == 2
    assert "no_identity" not in metrics.counts()


def test_the_event_is_written_durably_before_the_call_returns(configure, tmp_path):
    client = configure(
        DESTINATIONS={"file": {"type": "jsonl", "path": str(tmp_path / "out.jsonl")}},
        IN_PROCESS_FLUSHER=False,
    )

    @tracked("Charge Completed", user_id="u1")
    def charge() -> str:
        return "ok"

    charge()
    assert client.producer.buffered == 0  # not left in the in-memory buffer...
    assert client.status().destinations["file"].queued == 1  # ...but in the queue already
