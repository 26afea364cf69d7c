"""What ``segment-mw status`` (and the Celery worker watchdog, which calls it every few
seconds) costs with a small and with a huge backlog: it must not read the backlog.

For each size the queue is filled with N page events (pipelined pushes), as a busy site
with a slow destination leaves it: destination ``a`` has a batch in flight (read, not
acknowledged), part of it parked for retry and a few dead letters; destination ``b`` has
read nothing. Then ``Client.status()`` is timed, the median of many calls printed per size
side by side, for Redis and for the embedded SQLite queue. The Redis figures come from a
private ``redis-server`` this script starts on a free port (or ``--redis-url`` with a key
prefix of its own, deleted afterwards).

    .venv/bin/python benchmarks/bench_status.py [--sizes 1000,1000000] [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import median, private_redis, table, unique_prefix

CHUNK = 10_000
IN_FLIGHT = 2_500
PARKED = 1_000
DEAD = 100


@contextmanager
def given(url: str) -> Iterator[str]:
    yield url


def fill(client: object, size: int) -> None:
    from segment_mw import events
    from segment_mw.client import Client

    assert isinstance(client, Client)
    entry = events.build(
        "page",
        events.page_fields(
            "Product",
            {"path": "/products/blue-suede-shoes/", "url": "https://shop.example.com/p/"},
            None,
        ),
        anonymous_id="0f7cbb0e-0d4b-4b53-9d2a-5b3f3c0c0a11",
        context={"ip": "203.0.113.9", "userAgent": "Mozilla/5.0 (X11; Linux x86_64)"},
    )
    queue = client.queue
    queue.ensure_destinations(list(client.settings.destination_names))
    left = size
    while left:
        n = min(CHUNK, left)
        queue.push([entry] * n)
        left -= n
    in_flight = queue.read_new("a", "bench:1", IN_FLIGHT)
    queue.hold_for_retry("a", [r.id for r in in_flight[:PARKED]])
    queue.dead_letter("a", in_flight[-DEAD:], "HTTP 400: bench")


def measure(url: str, size: int, runs: int) -> tuple[float, float, int]:
    import segment_mw
    from segment_mw.client import reset_client

    prefix = unique_prefix("status")
    client = segment_mw.configure(
        {
            "QUEUE_URL": url,
            "QUEUE_PREFIX": prefix,
            "DESTINATIONS": {"a": {"type": "log"}, "b": {"type": "log"}},
        }
    )
    try:
        fill(client, size)
        client.status()  # connected, warmed up
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            status = client.status()
            times.append(time.perf_counter() - t0)
        queued = status.destinations["b"].queued
        times.sort()
        return median(times) * 1000, times[int(len(times) * 0.95) - 1] * 1000, queued
    finally:
        if url.startswith("redis"):
            keys = list(client.queue.client.scan_iter(f"{prefix}:*", count=1000))  # type: ignore[attr-defined]
            for i in range(0, len(keys), 1000):
                client.queue.client.delete(*keys[i : i + 1000])  # type: ignore[attr-defined]
        reset_client()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,1000000", help="queued events, comma-separated")
    parser.add_argument("--runs", type=int, default=30, help="status calls timed per size")
    parser.add_argument("--redis-url", help="an existing Redis instead of a private one")
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite queue")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    rows: list[list[object]] = []
    with given(args.redis_url) if args.redis_url else private_redis() as redis_url:
        import redis

        version = redis.Redis.from_url(redis_url).info("server")["redis_version"]
        results = [measure(redis_url, size, args.runs) for size in sizes]
        rows.append(
            [f"redis {version}"] + [f"{med:.2f} ms (p95 {p95:.2f})" for med, p95, _ in results]
        )
        checks = [queued for _, _, queued in results]
    if not args.no_sqlite:
        directory = tempfile.mkdtemp(prefix="bench-status-sqlite-")
        try:
            results = [
                measure(f"sqlite:///{directory}/q{size}.sqlite3", size, args.runs) for size in sizes
            ]
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        rows.append(["sqlite"] + [f"{med:.2f} ms (p95 {p95:.2f})" for med, p95, _ in results])
    print(f"segment-mw status, median of {args.runs} calls, by events queued:\n")
    print(table(["queue"] + [f"{size:,} queued" for size in sizes], rows))
    print(f"\ncheck: destination b reports {', '.join(f'{q:,}' for q in checks)} queued")
    return 0 if checks == sizes else 1


if __name__ == "__main__":
    sys.exit(main())
