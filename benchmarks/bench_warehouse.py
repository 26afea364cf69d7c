"""The postgres warehouse destination: what parsing exactly costs, and rows per second.

Parsing: the stored bytes of a realistic ``Order Completed`` event parsed by orjson (the
fast baseline, which would turn Decimals into floats) and by the standard library's
``json`` with ``parse_float=Decimal`` (what the destination does, exact), and the cost of
laying the parsed message out as warehouse rows. Writing: events per second through
``PostgresDestination.send`` in batches (two tables per track event: ``tracks`` and the
event's own), beside a bare baseline — psycopg ``executemany`` of the same number of rows
into one fixed table, no schema work, no flattening. Both write to a private database on
the local PostgreSQL (``SEGMENT_MW_BENCH_PG_DSN``), dropped at the end.

    .venv/bin/python benchmarks/bench_warehouse.py [--events 20000] [--batch 500] [--runs 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
import uuid
from decimal import Decimal

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import orjson
import psycopg
from _common import environment, median, table
from psycopg import sql
from psycopg.conninfo import make_conninfo

from segment_mw import events
from segment_mw.destinations.postgres import PostgresDestination
from segment_mw.warehouse.schema import layout

PG_DSN = os.environ.get("SEGMENT_MW_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
CONTEXT = {
    "ip": "203.0.113.7",
    "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/537.36 Chrome/126",
    "locale": "de-DE",
    "page": {"path": "/checkout", "url": "https://shop.example/checkout", "title": "Checkout"},
    "campaign": {"source": "newsletter", "name": "winter sale"},
}


def body(i: int) -> bytes:
    properties = {
        "order_id": f"order-{i}",
        "revenue": Decimal("19.99"),
        "tax": Decimal("3.19"),
        "currency": "EUR",
        "products": [{"sku": "G-32", "price": Decimal("19.99"), "quantity": 1}],
    }
    return events.build(
        "track",
        events.track_fields("Order Completed", properties),
        user_id=f"user-{i % 500}",
        anonymous_id=str(uuid.uuid4()),
        context=CONTEXT,
    ).body


def per_event_us(fn: object, bodies: list[bytes], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for b in bodies:
            fn(b)  # type: ignore[operator]
        times.append((time.perf_counter() - start) / len(bodies) * 1e6)
    return median(times)


def write_floor(dsn: str, source: str, target: str, batch: int) -> float:
    """Events/s writing the rows ``source`` holds again, into tables of the same shape:
    one multi-row INSERT ... ON CONFLICT DO NOTHING per table and batch, in one transaction
    per batch — what PostgreSQL costs for these rows, without parsing, layout or typing."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {target}")
        tables = {}
        for name in ("order_completed", "tracks"):
            conn.execute(f"CREATE TABLE {target}.{name} (LIKE {source}.{name} INCLUDING ALL)")
            rows = conn.execute(f"SELECT * FROM {source}.{name} ORDER BY id").fetchall()
            tables[name] = [(f"f-{row[0]}", *row[1:]) for row in rows]
        events = len(tables["tracks"])
        start = time.perf_counter()
        for i in range(0, events, batch):
            with conn.transaction(), conn.cursor() as cur:
                for name, rows in tables.items():
                    chunk = rows[i : i + batch]
                    one = "(" + ", ".join(["%s"] * len(chunk[0])) + ")"
                    cur.execute(
                        f"INSERT INTO {target}.{name} VALUES {', '.join([one] * len(chunk))}"
                        " ON CONFLICT DO NOTHING",
                        [v for row in chunk for v in row],
                    )
        return events / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    bodies = [body(i) for i in range(args.events)]
    decoder = json.JSONDecoder(parse_float=Decimal)
    now = dt.datetime.now(dt.timezone.utc)
    sample = bodies[: min(len(bodies), 5000)]
    parse_rows = [
        ("orjson.loads (floats: inexact)", per_event_us(orjson.loads, sample, args.runs)),
        (
            "json + parse_float=Decimal (ours)",
            per_event_us(lambda b: decoder.decode(b.decode()), sample, args.runs),
        ),
        (
            "  + layout as warehouse rows",
            per_event_us(lambda b: layout(decoder.decode(b.decode()), now), sample, args.runs),
        ),
    ]
    print(environment() + f", postgresql {PG_DSN.rsplit('@', 1)[-1]}")
    print(f"\nparsing one {len(bodies[0])}-byte Order Completed event (median of {args.runs}):")
    print(table(["", "µs/event"], parse_rows))

    admin = psycopg.connect(PG_DSN, autocommit=True)
    name = f"smw_bench_{uuid.uuid4().hex[:10]}"
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(PG_DSN, dbname=name)
    try:
        ours, floor = [], []
        for run in range(args.runs):
            dest = PostgresDestination("warehouse", {"dsn": dsn, "schema": f"run{run}"})
            start = time.perf_counter()
            for i in range(0, len(bodies), args.batch):
                assert dest.send(bodies[i : i + args.batch]).ok
            ours.append(len(bodies) / (time.perf_counter() - start))
            dest.close()
            floor.append(write_floor(dsn, f"run{run}", f"floor{run}", args.batch))
        print(
            f"\nwriting {args.events:,} track events in batches of {args.batch}"
            f" (median of {args.runs}):"
        )
        print(
            table(
                ["", "events/s", "rows/s"],
                [
                    ("PostgresDestination.send (ours)", median(ours), median(ours) * 2),
                    ("floor: the same rows, plain INSERTs", median(floor), median(floor) * 2),
                ],
            )
        )
    finally:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
