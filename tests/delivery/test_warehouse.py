"""The warehouse destination through the real queue and real Celery workers.

Routing by ``integrations`` (payments to Segment and the warehouse, pageviews to the
warehouse only), the README's funnel query run on what landed, and a worker SIGKILLed
while its transaction is open: the batch lands exactly once, from the next worker.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from pathlib import Path

import psycopg

import segment_mw

from ..pg import Warehouse
from .conftest import ROOT, wait_until

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


def readme_query(schema: str) -> str:
    """The SQL of the README's warehouse section, on ``schema`` instead of ``segment``."""
    text = Path(ROOT, "README.md").read_text()
    section = text[text.index("## Warehouse (PostgreSQL)") :]
    query = re.search(r"```sql\n(.*?)```", section, re.S)
    assert query is not None
    return re.sub(r"\bsegment\.(\w+)", rf'"{schema}".\1', query.group(1))


def test_routed_through_celery_into_the_warehouse_and_queried(
    setup, sink, worker, warehouse: Warehouse
) -> None:
    client = setup(
        DESTINATIONS={
            "Segment": {"type": "segment", "write_key": "wk", "host": sink.url},
            "warehouse": warehouse.destination(),
        },
        INTEGRATIONS={"Segment": False},  # the README's: pageviews to the warehouse only
    )
    minute = dt.timedelta(minutes=1)
    visits = [("anon-A", "/products/1", T0), ("anon-B", "/products/2", T0)]
    visits += [("anon-C", "/products/3", T0), ("anon-D", "/", T0)]
    for anonymous_id, path, at in visits:
        segment_mw.page("Product", {"path": path}, anonymous_id=anonymous_id, timestamp=at)
    orders = [("anon-A", "19.99", T0 + 5 * minute), ("anon-C", "5.00", T0 - 60 * minute)]
    orders += [("anon-D", "7.50", T0 + minute)]
    order_ids = [
        segment_mw.track(
            "Order Completed",
            {"revenue": Decimal(revenue), "currency": "EUR"},
            anonymous_id=anonymous_id,
            user_id=f"user-{anonymous_id}",
            timestamp=at,
            integrations={"Segment": True},  # payments: Segment and the warehouse
        )
        for anonymous_id, revenue, at in orders
    ]
    segment_mw.identify("user-anon-A", {"plan": "pro"}, anonymous_id="anon-A")
    with worker():
        wait_until(
            lambda: client.status().destinations["warehouse"].delivered == 8,
            30.0,
            "the warehouse to receive every event",
        )
        wait_until(lambda: len(sink.events) == 3, 30.0, "Segment to receive the payments")
    assert sorted(e["messageId"] for e in sink.events) == sorted(order_ids)
    assert len(warehouse.rows("pages")) == 4
    assert {r["id"] for r in warehouse.rows("order_completed")} == set(order_ids)
    assert warehouse.rows("users")[0]["plan"] == "pro"

    (result,) = warehouse.query(readme_query(warehouse.schema))
    # A and C viewed products; only A ordered afterwards. D's order followed no product view.
    assert result == {
        "visitors": 3,
        "buyers": 1,
        "conversion_pct": Decimal("33.3"),
        "revenue": Decimal("19.99"),
    }


def test_a_worker_killed_mid_transaction_leaves_nothing_and_the_next_lands_it_once(
    fast_settings, setup, worker_process, warehouse: Warehouse
) -> None:
    # Long enough a statement timeout for the worker to be killed while it waits on the
    # lock; CLAIM_IDLE must be 1.5 times that, and the next worker claims after it.
    settings = {
        **fast_settings,
        "CLAIM_IDLE": 7.5,
        "DESTINATIONS": {"warehouse": warehouse.destination(timeout=5)},
    }
    client = setup(**settings)
    # The tables exist already (an earlier batch), so the worker goes straight to writing.
    segment_mw.track("Order Completed", {"revenue": Decimal("1")}, user_id="u-0")
    assert segment_mw.flush(timeout=30)
    assert len(warehouse.rows("tracks")) == 1

    # Someone holds a lock on tracks: the worker's transaction inserts into
    # order_completed (tables are written in name order), then waits, open.
    blocker = psycopg.connect(warehouse.dsn)
    blocker.execute(f'LOCK TABLE "{warehouse.schema}".tracks IN SHARE MODE')
    try:
        expected = [
            segment_mw.track("Order Completed", {"revenue": Decimal(n)}, user_id=f"u-{n}")
            for n in range(1, 6)
        ]
        # A property no column can be named for: dropped and counted by the worker.
        expected.append(segment_mw.track("Order Completed", {"日本": 1}, user_id="u-6"))
        first = worker_process(settings)
        first.wait_ready()
        waiting = wait_until(
            lambda: warehouse.query(
                "SELECT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid"
                " JOIN pg_class c ON c.oid = l.relation"
                " WHERE a.application_name = 'segment_mw' AND a.wait_event_type = 'Lock'"
                " AND c.relname = 'order_completed' AND l.mode = 'RowExclusiveLock'"
                " AND l.granted"
            ),
            30.0,
            "the worker's transaction to have written and be waiting",
            first,
        )
        backend = waiting[0]["pid"]
        first.kill()  # SIGKILL, with the transaction open
    finally:
        blocker.rollback()  # the dead worker's backend finds its client gone and rolls back
        blocker.close()
    wait_until(
        lambda: not warehouse.query("SELECT 1 FROM pg_stat_activity WHERE pid = %s", backend),
        30.0,
        "the killed worker's session to end",
    )
    assert len(warehouse.rows("order_completed")) == 1  # nothing of its batch was committed

    second = worker_process(settings)
    wait_until(
        lambda: len(warehouse.rows("order_completed")) == 7,
        30.0,
        "the next worker to land the orphaned batch",
        second,
    )
    wait_until(lambda: client.status().depth == 0, 15.0, "the queue to drain", second)
    landed = [r["id"] for r in warehouse.rows("tracks")]
    assert len(landed) == len(set(landed)) == 7
    assert set(expected) <= set(landed)
    status = client.status()
    assert status.destinations["warehouse"].dead == 0
    # Counted in the worker, shown by `segment-mw status` here.
    assert status.counters.get("warehouse_dropped") == 1
