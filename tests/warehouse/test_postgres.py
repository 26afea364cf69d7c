"""The postgres destination against the real PostgreSQL: names, values, idempotence, errors."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
import pytest

import segment_mw
from segment_mw import metrics
from segment_mw.cli import main as cli
from segment_mw.destinations.postgres import PostgresDestination
from segment_mw.warehouse.naming import RESERVED_WORDS

from ..delivery.conftest import free_port, wait_until
from ..pg import Warehouse, dsn_with_password
from .messages import message
from .segment_docs import BEST_EFFORT

Make = Callable[..., PostgresDestination]


def test_awkward_names_make_usable_distinct_identifiers(
    warehouse: Warehouse, destinations: Make
) -> None:
    long_a = "a very long property name that goes on and on past the limit, variant one"
    long_b = "a very long property name that goes on and on past the limit, variant two"
    properties = {
        "with spaces": 1,
        "dotted.name": 2,
        "camelCaseName": 3,
        "HTTPStatus": 4,
        "select": 5,
        "user": 6,
        "2fa": 7,
        "Größe": 8,  # non-ASCII letters only separate words
        long_a: "a",
        long_b: "b",
        "日本": 9,  # no ASCII letter or digit: no column, counted
    }
    long_event = "An Event Whose Name Is Far Longer Than Sixty Three Bytes Of Identifier, Really"
    bodies = [
        message("track", {"event": "Checkout Step.Viewed", "properties": properties}),
        message("track", {"event": long_event}),
        message("track", {"event": "Pages"}),  # not the pages table
        message("track", {"event": "Order"}),  # a reserved word
    ]
    assert destinations().send(bodies) == segment_mw.destinations.Outcome.success()

    columns = warehouse.columns("checkout_step_viewed")
    for name in ("with_spaces", "dotted_name", "camel_case_name", "httpstatus", "_select"):
        assert name in columns
    assert {"_user", "_2fa", "gr_e"} <= columns.keys()
    long_columns = [c for c in columns if c.startswith("a_very_long_property_name")]
    assert len(long_columns) == 2
    assert all(len(c.encode()) <= 63 for c in long_columns)
    (row,) = warehouse.rows("checkout_step_viewed")
    assert sorted(row[c] for c in long_columns) == ["a", "b"]
    assert metrics.counts().get("warehouse_dropped") == 1  # the name with no ASCII at all

    tables = warehouse.tables()
    long_tables = [t for t in tables if t.startswith("an_event_whose_name")]
    assert len(long_tables) == 1
    assert len(long_tables[0]) == 63
    assert {"_pages", "_order"} <= tables
    assert "pages" not in tables  # no page was sent: the event did not land there
    events = {r["event_text"]: r["event"] for r in warehouse.rows("tracks")}
    assert events["Pages"] == "_pages"
    assert events[long_event] == long_tables[0]
    # Every name is usable without quotes.
    warehouse.query(
        "SELECT _select, _user, _2fa, camel_case_name FROM {schema}.checkout_step_viewed"
    )


def test_our_reserved_words_cover_the_servers(warehouse: Warehouse) -> None:
    found = warehouse.query("SELECT word FROM pg_get_keywords() WHERE catcode IN ('R', 'T')")
    assert {r["word"] for r in found} <= RESERVED_WORDS


def test_decimals_land_exact_in_numeric_columns(warehouse: Warehouse, destinations: Make) -> None:
    amounts = ["0.1", "19.99", "12345678901234567890.123456789012", "1E-30"]
    bodies = [
        message("track", {"event": "Order Completed", "properties": {"revenue": Decimal(a)}})
        for a in amounts
    ]
    assert destinations().send(bodies).ok
    assert warehouse.columns("order_completed")["revenue"] == "numeric"
    found = warehouse.query(
        "SELECT revenue::text AS exact FROM {schema}.order_completed ORDER BY revenue"
    )
    assert [r["exact"] for r in found] == [
        "0.000000000000000000000000000001",
        "0.1",
        "19.99",
        "12345678901234567890.123456789012",
    ]
    total = warehouse.query("SELECT sum(revenue)::text AS total FROM {schema}.order_completed")
    # Summed in PostgreSQL, exactly (a float would have made 0.1 + 19.99 inexact).
    assert total[0]["total"] == "12345678901234567910.213456789012000000000000000001"


def test_a_value_that_does_not_fit_its_column_is_converted_or_dropped_and_counted(
    warehouse: Warehouse, destinations: Make, caplog: pytest.LogCaptureFixture
) -> None:
    """BEST_EFFORT: a best effort conversion to the column's type, else dropped."""
    dest = destinations()
    first = {"amount": 10, "flag": True, "at": "2024-05-01T10:00:00Z", "label": "x"}
    assert dest.send([message("track", {"event": "Mixed", "properties": first})]).ok
    later = [
        {"amount": "12.50", "flag": "false", "at": "yesterday", "label": 42},
        {"amount": "lots", "flag": [1], "at": 5, "label": ["a"]},
    ]
    with caplog.at_level(logging.WARNING, logger="segment_mw"):
        for properties in later:
            assert dest.send([message("track", {"event": "Mixed", "properties": properties})]).ok
    rows = warehouse.query(
        "SELECT amount, flag, at, label FROM {schema}.mixed ORDER BY received_at"
    )
    assert rows[1] == {"amount": Decimal("12.50"), "flag": False, "at": None, "label": "42"}
    assert rows[2] == {"amount": None, "flag": None, "at": None, "label": '["a"]'}
    # Converted: "12.50" -> 12.50, "false" -> false. Dropped: "yesterday", "lots", [1], 5.
    assert metrics.counts() == {"warehouse_converted": 2, "warehouse_dropped": 4}, BEST_EFFORT
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "converted" in w]) == 1  # once per interval per kind
    assert len([w for w in warnings if "dropped" in w]) == 1
    assert not any("yesterday" in w or "lots" in w for w in warnings)  # names, never values


def test_a_redelivered_batch_inserts_nothing_twice(
    warehouse: Warehouse, destinations: Make
) -> None:
    bodies = [
        message("page", {"name": "Home"}),
        message("track", {"event": "Order Completed", "properties": {"revenue": Decimal("5")}}),
        message("identify", {"traits": {"plan": "pro"}}),
        message("group", {"groupId": "g-1", "traits": {"seats": 3}}),
    ]
    dest = destinations()
    for batch in (bodies, bodies, list(reversed(bodies)), bodies[1:3]):
        assert dest.send(batch).ok
    # A second process (its own pool) re-delivering the same batch changes nothing either.
    assert destinations().send(bodies).ok
    for table in (
        "pages",
        "tracks",
        "order_completed",
        "identifies",
        "groups",
        "users",
        "accounts",
    ):
        assert len(warehouse.rows(table)) == 1, table


def test_users_hold_the_latest_traits_whatever_the_order_of_delivery(
    warehouse: Warehouse, destinations: Make
) -> None:
    t = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
    first = message("identify", {"traits": {"plan": "free", "email": "a@example.com"}}, timestamp=t)
    second = message("identify", {"traits": {"plan": "pro"}}, timestamp=t + dt.timedelta(hours=1))
    other = message("identify", {"traits": {"plan": "team"}}, user_id="u-2", timestamp=t)
    dest = destinations()
    assert dest.send([second]).ok
    assert dest.send([first, other]).ok  # older, delivered later (a replay): fills gaps only
    users = {u["id"]: u for u in warehouse.rows("users")}
    assert (users["u-1"]["plan"], users["u-1"]["email"]) == ("pro", "a@example.com")
    assert users["u-1"]["timestamp"] == t + dt.timedelta(hours=1)
    assert users["u-2"]["plan"] == "team"
    assert len(warehouse.rows("identifies")) == 3


def test_bad_messages_are_dead_lettered_alone_and_the_rest_written(
    warehouse: Warehouse, configure: Callable[..., Any]
) -> None:
    client = configure(
        DESTINATIONS={"warehouse": warehouse.destination()}, IN_PROCESS_FLUSHER=False
    )
    segment_mw.page("Home", user_id="u-1")
    segment_mw.track("購入完了", user_id="u-1")  # no ASCII: no table can be named from it
    segment_mw.track("Order Completed", {"revenue": Decimal("9.99")}, user_id="u-1")
    assert segment_mw.flush(timeout=30)
    status = client.status().destinations["warehouse"]
    assert (status.delivered, status.dead) == (2, 1)
    assert "no ASCII letter or digit" in (status.last_error or "")
    assert len(warehouse.rows("pages")) == 1
    assert len(warehouse.rows("order_completed")) == 1


def test_a_value_postgresql_refuses_is_isolated_by_splitting_the_batch(
    warehouse: Warehouse, configure: Callable[..., Any], destinations: Make
) -> None:
    # The team constrained a column: PostgreSQL itself refuses one message's row.
    assert (
        destinations().send([message("track", {"event": "Rated", "properties": {"stars": 3}})]).ok
    )
    warehouse.query("ALTER TABLE {schema}.rated ADD CONSTRAINT stars CHECK (stars <= 5)")
    client = configure(
        DESTINATIONS={"warehouse": warehouse.destination()}, IN_PROCESS_FLUSHER=False
    )
    for stars in (1, 2, 99, 4, 5):
        segment_mw.track("Rated", {"stars": stars}, user_id="u-1")
    assert segment_mw.flush(timeout=30)
    status = client.status().destinations["warehouse"]
    assert (status.delivered, status.dead) == (4, 1)
    assert sorted(r["stars"] for r in warehouse.rows("rated")) == [1, 2, 3, 4, 5]
    assert "99" not in (status.last_error or "")  # the refused value is not repeated


def test_an_unreachable_warehouse_is_a_transient_failure_that_names_no_password(
    warehouse: Warehouse, configure: Callable[..., Any]
) -> None:
    port = free_port()
    dsn = f"postgresql://postgres:hunter2-secret@127.0.0.1:{port}/nowhere"
    client = configure(
        DESTINATIONS={"warehouse": {"type": "postgres", "dsn": dsn, "timeout": 1}},
        IN_PROCESS_FLUSHER=False,
    )
    segment_mw.track("Signed Up", user_id="u-1")
    outcome = client.deliverer.destinations["warehouse"].send([message("track", {"event": "X"})])
    assert outcome.retry
    assert f"127.0.0.1:{port}/nowhere" in (outcome.error or "")
    segment_mw.flush(timeout=5)
    status = client.status()
    assert status.destinations["warehouse"].retrying == 1
    shown = [
        repr(client.settings),
        str(status.as_dict()),
        outcome.error or "",
        repr(client.deliverer.destinations["warehouse"].options),
    ]
    out = io.StringIO()
    cli(["status", "--json"], client=client, stdout=out)
    shown.append(out.getvalue())
    assert not any("hunter2-secret" in text for text in shown)


def test_a_password_in_a_keyword_dsn_is_never_shown(
    warehouse: Warehouse, configure: Callable[..., Any]
) -> None:
    dsn = dsn_with_password(warehouse.dsn, "s3cr3t-pw")
    assert "password=s3cr3t-pw" in dsn
    client = configure(
        DESTINATIONS={"warehouse": {"type": "postgres", "dsn": dsn, "schema": warehouse.schema}},
        IN_PROCESS_FLUSHER=False,
    )
    segment_mw.track("Signed Up", user_id="u-1")
    assert segment_mw.flush(timeout=30)
    assert len(warehouse.rows("signed_up")) == 1
    dest = client.deliverer.destinations["warehouse"]
    assert "s3cr3t-pw" not in repr(client.settings) + repr(dest.options) + str(dest.options)


def test_a_forked_child_uses_a_pool_of_its_own(warehouse: Warehouse, destinations: Make) -> None:
    dest = destinations()
    assert dest.send([message("page", {"name": "Parent"})]).ok
    pid = os.fork()
    if pid == 0:  # the child: deliver through the inherited destination, then leave
        code = 0 if dest.send([message("page", {"name": "Child"})]).ok else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's connection survived the child (which never closed it) and still works.
    assert dest.send([message("page", {"name": "Parent again"})]).ok
    assert sorted(r["name"] for r in warehouse.rows("pages")) == ["Child", "Parent", "Parent again"]


def test_a_table_created_at_the_same_moment_by_another_process_is_waited_for(
    warehouse: Warehouse, destinations: Make
) -> None:
    """Someone outside our advisory lock creates the table in an open transaction: our
    CREATE TABLE IF NOT EXISTS waits on it, fails with a unique violation when it commits,
    and is retried."""
    other = psycopg.connect(warehouse.dsn)
    try:
        other.execute(f'CREATE SCHEMA "{warehouse.schema}"')
        other.execute(f'CREATE TABLE "{warehouse.schema}".signed_up (id text PRIMARY KEY)')
        result: list[Any] = []
        sender = threading.Thread(
            target=lambda: result.append(
                destinations().send([message("track", {"event": "Signed Up"})])
            )
        )
        sender.start()
        wait_until(
            lambda: warehouse.query(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = 'segment_mw'"
                " AND wait_event_type = 'Lock'"
            ),
            message="our DDL to wait on the other transaction",
        )
        other.commit()
        sender.join(30)
    finally:
        other.close()
    assert result[0].ok
    assert len(warehouse.rows("signed_up")) == 1
    assert {"event", "received_at", "context_library_name"} <= warehouse.columns("signed_up").keys()


def test_importing_without_psycopg_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "try:\n    import segment_mw.destinations.postgres\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "segment-mw[postgres]" in out.stdout


def test_new_columns_from_two_workers_at_once(warehouse: Warehouse, destinations: Make) -> None:
    """Two destinations (two pools, as in two worker processes) add overlapping new columns
    to the same tables at the same moment, round after round: none fails, nothing is lost."""
    rounds, workers = 6, 2
    barrier = threading.Barrier(workers)
    outcomes: list[Any] = []
    sent: list[str] = []
    lock = threading.Lock()

    def work(worker: int, dest: PostgresDestination) -> None:
        for n in range(rounds):
            names = [f"prop_{n}_{k}" for k in range(4)]
            if worker:
                names.reverse()
            bodies = [
                message(
                    "track",
                    {"event": f"Event {e}", "properties": {p: worker * 100 + n for p in names}},
                )
                for e in (n % 3, (n + 1) % 3)
            ] + [message("identify", {"traits": {f"trait_{n}": worker}}, user_id=f"u-{worker}")]
            barrier.wait(30)
            outcome = dest.send(bodies)
            with lock:
                outcomes.append(outcome)
                sent.extend(json.loads(b)["messageId"] for b in bodies)

    threads = [threading.Thread(target=work, args=(w, destinations())) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(outcomes) == rounds * workers
    assert all(o == segment_mw.destinations.Outcome.success() for o in outcomes), outcomes
    landed = {r["id"] for r in warehouse.query("SELECT id FROM {schema}.tracks")}
    landed |= {r["id"] for r in warehouse.query("SELECT id FROM {schema}.identifies")}
    assert landed == set(sent)
    for n in range(rounds):
        assert all(
            f"prop_{n}_{k}" in warehouse.columns(f"event_{e}")
            for k in range(4)
            for e in (n % 3, (n + 1) % 3)
        )
    assert {f"trait_{n}" for n in range(rounds)} <= warehouse.columns("users").keys()


def test_a_slow_transaction_times_out_as_a_transient_failure(
    warehouse: Warehouse, destinations: Make
) -> None:
    dest = destinations(timeout=1)
    assert dest.send([message("page", {"name": "Home"})]).ok
    blocker = psycopg.connect(warehouse.dsn)
    try:
        blocker.execute(f'LOCK TABLE "{warehouse.schema}".pages IN ACCESS EXCLUSIVE MODE')
        outcome = dest.send([message("page", {"name": "Blocked"})])
    finally:
        blocker.rollback()
        blocker.close()
    assert outcome.retry
    assert "statement timeout" in (outcome.error or "")
    assert dest.send([message("page", {"name": "Later"})]).ok
