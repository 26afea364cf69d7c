"""What ``@tracked`` adds to a call, beside the bare call and the durable write it makes.

The function is the example shop's own ``charge`` (``example_projects/django_shop/shop/
billing.py``: a dataclass built, a properties callable with a Decimal and a products
array), called through the decorator and bare (``charge.__wrapped__``). Per call, in one
run, the variants interleaved and the median of ``--runs`` taken:

- the bare call;
- ``@tracked`` with ``ENABLED`` False: the decorator, the properties callable and the
  event's checks, nothing written;
- ``@tracked``: the same and the durable write to Redis (what a deployment runs), and
  again without Celery installed (no flush requested: what the request of a flush adds);
- ``track()`` with the same properties: the durable write alone, built by hand;
- a bare redis-py ``XADD`` of a body of the event's size: the floor of a durable write.

Celery is installed as a deployment has it (a flush requested per push, debounced; no
worker runs, so the one flush task requested stays in a broker queue of this run's own,
deleted at the end). Wall time per call is the headline; CPU time (this process's threads,
the producer's writer included) is beside it.

    .venv/bin/python benchmarks/bench_tracked.py [--calls 5000] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "example_projects" / "django_shop"))

from _common import (
    REDIS_URL,
    delete_prefix,
    environment,
    median,
    redis_client,
    table,
    unique_prefix,
)

import segment_mw
import segment_mw.celery
from segment_mw.client import reset_client

BROKER = os.environ.get("SEGMENT_MW_BENCH_BROKER", "redis://127.0.0.1:6379/10")
PRICE = Decimal("19.99")


def settings(prefix: str, enabled: bool) -> dict[str, Any]:
    return {
        "ENABLED": enabled,
        "QUEUE_URL": REDIS_URL,
        "QUEUE_PREFIX": prefix,
        "DESTINATIONS": {"file": {"type": "jsonl", "path": os.devnull}},
        "IN_PROCESS_FLUSHER": False,
    }


def variants(prefix: str) -> dict[str, tuple[bool, bool, Callable[[], object]]]:
    """name: (segment_mw enabled, Celery installed, one call)."""
    from shop.billing import charge

    bare = charge.__wrapped__  # type: ignore[attr-defined]
    client = redis_client()
    body = segment_mw_body(prefix)
    stream = f"{prefix}:floor"

    def by_hand() -> object:
        order = bare(1, PRICE)
        segment_mw.track(
            "Order Completed",
            {
                "order_id": order.order_id,
                "revenue": order.total,
                "currency": order.currency,
                "products": [{"product_id": 1, "price": order.total, "quantity": 1}],
            },
        )
        return order

    return {
        "bare call": (True, True, lambda: bare(1, PRICE)),
        "@tracked, ENABLED False": (False, True, lambda: charge(1, PRICE)),
        "@tracked (durable write)": (True, True, lambda: charge(1, PRICE)),
        "@tracked, Celery not installed": (True, False, lambda: charge(1, PRICE)),
        "track() by hand": (True, True, by_hand),
        "XADD floor": (True, True, lambda: client.xadd(stream, {b"m": body})),  # type: ignore[attr-defined]
    }


def segment_mw_body(prefix: str) -> bytes:
    """The bytes one ``Order Completed`` event of this run takes in the queue."""
    client = redis_client()
    stream = f"{prefix}:log"
    segment_mw.configure(settings(prefix, True))
    from shop.billing import charge

    with segment_mw.bound(segment_mw.Scope(user_id="u-1")):
        charge(1, PRICE)
    segment_mw.get_client().producer.drain()
    entries = client.xrange(stream, count=1)  # type: ignore[attr-defined]
    reset_client()
    if not entries:
        return b"x" * 700
    return b"".join(entries[0][1].values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000, help="calls per run and variant")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="500 calls, 2 runs")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.runs = 500, 2
    from celery import Celery

    prefix, queue = unique_prefix("tracked"), f"bench-tracked-{uuid.uuid4().hex[:8]}"
    app = Celery("bench-tracked", broker=BROKER, set_as_current=False)
    app.conf.task_default_queue = queue
    timings: dict[str, list[tuple[float, float]]] = {}
    # A signed-in user, as a request or task binds one: the events' identity.
    user = segment_mw.bound(segment_mw.Scope(user_id="u-1"))
    try:
        calls = variants(prefix)
        user.__enter__()
        names = list(calls)
        for run in range(args.runs):
            # Rotated, so that no variant always runs first (or right after another).
            for name in names[run % len(names) :] + names[: run % len(names)]:
                enabled, celery, call = calls[name]
                segment_mw.configure(settings(prefix, enabled))
                if celery:
                    segment_mw.celery.install(app, watchdog=False)
                for _ in range(50):  # warm up: connections, the first kick
                    call()
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(args.calls):
                    call()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                segment_mw.get_client().producer.drain()
                timings.setdefault(name, []).append((wall / args.calls, cpu / args.calls))
                segment_mw.celery.uninstall()
                reset_client()
    finally:
        user.__exit__(None, None, None)
        segment_mw.celery.uninstall()
        reset_client()
        delete_prefix(prefix)
        import redis

        broker = redis.Redis.from_url(BROKER)
        broker.delete(queue, *broker.keys(f"_kombu.binding.{queue}"))

    print(environment())
    print(f"{args.calls:,} calls per run and variant, median of {args.runs} runs\n")
    bare = median([w for w, _ in timings["bare call"]])
    rows = []
    for name in names:
        wall = median([w for w, _ in timings[name]])
        cpu = median([c for _, c in timings[name]])
        rows.append([name, wall * 1e6, cpu * 1e6, (wall - bare) * 1e6])
    print(table(["per call", "wall µs", "CPU µs", "added to the bare call µs"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
