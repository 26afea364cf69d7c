"""What an awaited durable write costs in async code, beside the ways it could be done.

Each figure is the wall time per call against the local Redis, in one run:

- ``track()`` (the sync durable write) called from a plain thread: the baseline;
- ``await atrack()`` one after another, and 50 in flight at once (``asyncio.gather``):
  the same write in a worker thread (``asyncio.to_thread``), the loop free meanwhile;
- a bare ``redis.asyncio`` ``XADD`` of an event-sized body: the floor of an asyncio Redis
  client, before building the event or handling a Redis that does not answer;
- the largest gap of a ticker coroutine (waking every 5 ms) while the gathered calls run:
  how long the event loop was held at once.

    .venv/bin/python benchmarks/bench_async.py [--calls 5000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

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
from segment_mw.client import reset_client

CONCURRENCY = 50
BODY = b"x" * 400  # about a track event's serialised size


def configure(prefix: str) -> None:
    segment_mw.configure(
        {
            "QUEUE_URL": REDIS_URL,
            "QUEUE_PREFIX": prefix,
            "DESTINATIONS": {"file": {"type": "jsonl", "path": os.devnull}},
            "IN_PROCESS_FLUSHER": False,
        }
    )


def sync_track(calls: int) -> float:
    prefix = unique_prefix("async")
    configure(prefix)
    segment_mw.track("Warm Up", user_id="u-1")
    started = time.perf_counter()
    for n in range(calls):
        segment_mw.track("Clicked", {"n": n}, user_id="u-1")
    elapsed = time.perf_counter() - started
    reset_client()
    delete_prefix(prefix)
    return elapsed / calls


async def with_ticker(work: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """(seconds ``work`` took, the ticker's largest gap meanwhile)."""
    largest, stop = 0.0, asyncio.Event()

    async def tick() -> None:
        nonlocal largest
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            largest, last = max(largest, now - last), now

    ticker = asyncio.ensure_future(tick())
    started = time.perf_counter()
    await work()
    elapsed = time.perf_counter() - started
    stop.set()
    await ticker
    return elapsed, largest


async def awaited(calls: int, concurrency: int) -> tuple[float, float]:
    prefix = unique_prefix("async")
    configure(prefix)
    await segment_mw.atrack("Warm Up", user_id="u-1")
    slots = asyncio.Semaphore(concurrency)

    async def one(n: int) -> None:
        async with slots:
            await segment_mw.atrack("Clicked", {"n": n}, user_id="u-1")

    async def work() -> None:
        await asyncio.gather(*(one(n) for n in range(calls)))

    elapsed, gap = await with_ticker(work)
    reset_client()
    delete_prefix(prefix)
    return elapsed / calls, gap


async def bare_xadd(calls: int) -> float:
    import redis.asyncio

    prefix = unique_prefix("async")
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    stream = f"{prefix}:log"
    await client.xadd(stream, {"e": BODY})
    started = time.perf_counter()
    for _ in range(calls):
        await client.xadd(stream, {"e": BODY})
    elapsed = time.perf_counter() - started
    await client.aclose()
    delete_prefix(prefix)
    return elapsed / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    redis_client()
    print(environment())
    runs: dict[str, list[float]] = {}
    gaps: list[float] = []
    for _ in range(args.runs):
        runs.setdefault("track() from a thread (baseline)", []).append(sync_track(args.calls))
        per_call, _gap = asyncio.run(awaited(args.calls, 1))
        runs.setdefault("await atrack(), one at a time", []).append(per_call)
        per_call, gap = asyncio.run(awaited(args.calls, CONCURRENCY))
        runs.setdefault(f"await atrack(), {CONCURRENCY} in flight", []).append(per_call)
        gaps.append(gap)
        runs.setdefault("bare redis.asyncio XADD", []).append(asyncio.run(bare_xadd(args.calls)))
    rows = [(name, f"{median(values) * 1e6:.0f} µs") for name, values in runs.items()]
    print(table(("per call (median of runs)", "wall"), rows))
    print(f"largest loop gap while {CONCURRENCY} were in flight: {max(gaps) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
