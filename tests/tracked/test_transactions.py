"""On-commit emission against a real PostgreSQL database: a success inside
``transaction.atomic()`` is queued when the transaction commits and never if it rolls back,
while the message itself (messageId, timestamp, identity, context) is made at call time."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

import segment_mw
from segment_mw import Scope, metrics, tracked

pytestmark = pytest.mark.usefixtures("pg")


class Declined(Exception):
    pass


def make_charge(table: str, alias: str, **options: Any) -> Any:
    from django.db import connections

    @tracked(
        "Charge Completed",
        user_id=lambda charge_id, amount: "u1",
        properties=lambda result, charge_id, amount: {"charge_id": charge_id, "amount": amount},
        using=alias,
        **options,
    )
    def charge(charge_id: str, amount: int) -> str:
        with connections[alias].cursor() as cursor:
            cursor.execute(f"INSERT INTO {table} (id, amount) VALUES (%s, %s)", [charge_id, amount])
        return charge_id

    return charge


def atomic_then_fail(alias: str, action: Callable[[], object]) -> None:
    from django.db import transaction

    with transaction.atomic(using=alias):
        action()
        raise Declined


def rows(table: str, alias: str) -> list[str]:
    from django.db import connections

    with connections[alias].cursor() as cursor:
        cursor.execute(f"SELECT id FROM {table} ORDER BY id")
        return [row[0] for row in cursor.fetchall()]


def test_inside_atomic_the_event_waits_for_the_commit(pg, charges_table, segment_events):
    from django.db import transaction

    charge = make_charge(charges_table, pg)
    with transaction.atomic(using=pg):
        charge("ch_1", 100)
        assert segment_events == []  # the charge is not committed yet
    assert rows(charges_table, pg) == ["ch_1"]
    assert [e["properties"] for e in segment_events] == [{"charge_id": "ch_1", "amount": 100}]


def test_a_rolled_back_charge_is_never_reported(pg, charges_table, segment_events):
    from django.db import transaction

    charge = make_charge(charges_table, pg)
    with pytest.raises(Declined):
        atomic_then_fail(pg, lambda: charge("ch_2", 100))
    assert rows(charges_table, pg) == []
    assert segment_events == []
    with transaction.atomic(using=pg):
        charge("ch_3", 100)
        transaction.set_rollback(True, using=pg)
    assert rows(charges_table, pg) == []
    assert segment_events == []


def test_a_rolled_back_savepoint_drops_only_its_events(pg, charges_table, segment_events):
    from django.db import transaction

    charge = make_charge(charges_table, pg)
    with transaction.atomic(using=pg):
        charge("ch_4", 1)
        with pytest.raises(Declined):
            atomic_then_fail(pg, lambda: charge("ch_5", 2))
        charge("ch_6", 3)
    assert rows(charges_table, pg) == ["ch_4", "ch_6"]
    assert [e["properties"]["charge_id"] for e in segment_events] == ["ch_4", "ch_6"]


def test_outside_a_transaction_the_event_is_queued_at_once(pg, charges_table, segment_events):
    charge = make_charge(charges_table, pg)
    charge("ch_7", 5)  # autocommit
    assert rows(charges_table, pg) == ["ch_7"]
    assert len(segment_events) == 1


def test_the_message_is_made_at_call_time(pg, charges_table, segment_events):
    from django.db import transaction

    charge = make_charge(charges_table, pg)
    request = Scope(anonymous_id="anon-1", context={"ip": "198.51.100.4"})
    with transaction.atomic(using=pg):
        with segment_mw.bound(request):
            charge("ch_8", 9)
        called_by = dt.datetime.now(dt.timezone.utc)
    # Queued after the request's scope was gone, yet with its identity and context, and
    # stamped with the time of the charge rather than the time of the commit.
    [event] = segment_events
    assert event["anonymousId"] == "anon-1"
    assert event["context"]["ip"] == "198.51.100.4"
    assert dt.datetime.fromisoformat(event["timestamp"]) <= called_by
    assert request.emitted == 1


def test_failure_events_do_not_wait_for_the_commit(pg, charges_table, segment_events):
    from django.db import transaction

    @tracked("Charge Failed", on="failure", user_id="u1", using=pg)
    def charge() -> None:
        raise Declined("card declined")

    with pytest.raises(Declined), transaction.atomic(using=pg):
        charge()
    assert [e["properties"]["error_type"] for e in segment_events] == ["Declined"]


def test_on_commit_setting_off_queues_at_once(configure, pg, charges_table, segment_events):
    from django.db import transaction

    configure(ON_COMMIT=False, IN_PROCESS_FLUSHER=False)
    charge = make_charge(charges_table, pg)
    with transaction.atomic(using=pg):
        charge("ch_9", 1)
        assert len(segment_events) == 1
        transaction.set_rollback(True, using=pg)
    assert len(segment_events) == 1


@pytest.mark.parametrize(
    ("setting", "override", "deferred"), [(True, False, False), (False, True, True)]
)
def test_the_decorator_overrides_the_setting(
    configure, pg, charges_table, segment_events, setting, override, deferred
):
    from django.db import transaction

    configure(ON_COMMIT=setting, IN_PROCESS_FLUSHER=False)
    charge = make_charge(charges_table, pg, on_commit=override)
    with transaction.atomic(using=pg):
        charge("ch_10", 1)
        assert len(segment_events) == (0 if deferred else 1)
    assert len(segment_events) == 1


def test_a_transaction_on_another_database_does_not_hold_the_event(pg, segment_events):
    from django.db import connections, transaction

    @tracked("Charge Completed", user_id="u1")  # using the default database
    def charge() -> None:
        return None

    with transaction.atomic(using=pg):
        assert not transaction.get_connection().in_atomic_block
        assert connections[pg].in_atomic_block
        charge()
        assert len(segment_events) == 1


def test_an_unknown_database_alias_is_logged_and_counted(pg, segment_events, caplog):
    @tracked("Charge Completed", user_id="u1", using="no_such_database")
    def charge() -> str:
        return "ok"

    assert charge() == "ok"
    assert segment_events == []
    assert metrics.counts().get("tracked_error") == 1
