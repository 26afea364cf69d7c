"""Async code: the awaitable calls and ``@tracked`` on ``async def`` never block the event
loop, and their events are in Redis when the await returns; sync calls made on a loop go
to the producer's buffer instead of waiting on Redis."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

import segment_mw
from segment_mw import InvalidEvent, Scope, metrics

from .slow_proxy import SlowProxy, running_proxy

DELAY = 0.02  # added to every Redis round trip, as a remote or busy Redis would
TRACKED = 1000
EACH_CALL = 20  # of each of the six awaitable calls
CONCURRENCY = 50  # calls in flight at once, as requests of a busy async app
# A loop that waits on Redis stalls for DELAY per write, and every task ready in one loop
# iteration writes: CONCURRENCY * DELAY = 1 s at least. A free loop's largest gap is its
# longest iteration (starting 50 calls, GIL hand-offs): under 0.1 s with both cores busy.
MAX_GAP = 0.3

# Scans the stream from its newest entry back for a body containing ARGV[1]; run on the
# server so the look-up costs one round trip whatever the stream holds.
LANDED = """
local last = '+'
while true do
  local page = redis.call('XREVRANGE', KEYS[1], last, '-', 'COUNT', 64)
  if #page == 0 then return 0 end
  for _, entry in ipairs(page) do
    if string.find(entry[2][2], ARGV[1], 1, true) then return 1 end
  end
  last = '(' .. page[#page][1]
end
"""


@pytest.fixture
def slow_redis(redis_url: str) -> Iterator[tuple[str, SlowProxy]]:
    """The test Redis behind a proxy adding ``DELAY`` to each round trip: (url, proxy)."""
    parts = urlsplit(redis_url)
    with running_proxy((parts.hostname or "127.0.0.1", parts.port or 6379), DELAY) as proxy:
        yield urlunsplit(parts._replace(netloc=f"127.0.0.1:{proxy.port}")), proxy


class Ticker:
    """A coroutine waking every 5 ms; its largest gap is how long the loop was blocked."""

    def __init__(self) -> None:
        self.largest = 0.0
        self.ticks = 0

    async def run(self, stop: asyncio.Event) -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            self.largest = max(self.largest, now - last)
            self.ticks += 1
            last = now


@contextlib.asynccontextmanager
async def ticking() -> AsyncIterator[Ticker]:
    ticker, stop = Ticker(), asyncio.Event()
    # A full collection over the test run's heap (Django, Celery, ...) pauses every thread
    # for as long as a blocked loop would: move what exists now out of the collector's way,
    # so the ticker measures the calls alone.
    gc.collect()
    gc.freeze()
    task = asyncio.ensure_future(ticker.run(stop))
    await asyncio.sleep(0.01)  # running before the work starts
    try:
        yield ticker
    finally:
        stop.set()
        await task
        gc.unfreeze()


async def poll(predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out waiting for the condition"
        await asyncio.sleep(0.02)
    return value


def settings(url: str, queue_prefix: str, tmp_path: Any) -> dict[str, Any]:
    return {
        "QUEUE_URL": url,
        "QUEUE_PREFIX": queue_prefix,
        # As for any Redis this far away: 20 ms per round trip is over the 10 ms default,
        # and every write would go to the spill.
        "ENQUEUE_TIMEOUT": 1.0,
        # A destination, so events are kept for it; no consumer, so none leaves the log.
        "DESTINATIONS": {"file": {"type": "jsonl", "path": str(tmp_path / "out.jsonl")}},
        "IN_PROCESS_FLUSHER": False,
    }


async def test_awaited_calls_leave_the_loop_free_and_are_in_redis_on_return(
    configure, slow_redis, queue_prefix, redis_client, tmp_path
):
    url, proxy = slow_redis
    configure(**settings(url, queue_prefix, tmp_path))
    stream = f"{queue_prefix}:log"
    landed = redis_client.register_script(LANDED)
    late: list[str] = []

    def check(needle: str) -> None:
        # Called right after the await returns, with no await in between: no other
        # coroutine runs first. A write that was only buffered would still be in the
        # proxy (it holds each write DELAY before Redis sees it), so it is not found.
        if not landed(keys=[stream], args=[needle]):
            late.append(needle)

    @segment_mw.tracked("Order Completed", properties=lambda result, n: {"call": f"t-{n}"})
    async def charge(n: int) -> None:
        await asyncio.sleep(0)

    calls: dict[str, Callable[[int], Any]] = {
        "track": lambda n: segment_mw.atrack("Clicked", {"call": f"track-{n}"}),
        "page": lambda n: segment_mw.apage("Home", {"call": f"page-{n}"}),
        "screen": lambda n: segment_mw.ascreen("Main", {"call": f"screen-{n}"}),
        "identify": lambda n: segment_mw.aidentify(traits={"call": f"identify-{n}"}),
        "group": lambda n: segment_mw.agroup("g-1", {"call": f"group-{n}"}),
        "alias": lambda n: segment_mw.aalias(f"alias-{n}", "buyer"),
    }
    slots = asyncio.Semaphore(CONCURRENCY)
    message_ids: list[str] = []

    async def tracked_call(n: int) -> None:
        async with slots:
            await charge(n)
            check(f'"call":"t-{n}"')

    async def direct_call(kind: str, n: int) -> None:
        async with slots:
            message_id = await calls[kind](n)
            check(f'"messageId":"{message_id}"')
            message_ids.append(message_id)

    work = [tracked_call(n) for n in range(TRACKED)]
    work += [direct_call(kind, n) for kind in calls for n in range(EACH_CALL)]
    # Identity comes from the scope, carried by the context into the worker threads.
    with segment_mw.bound(Scope(user_id="buyer", context={"page": {"path": "/checkout"}})):
        async with ticking() as ticker:
            await asyncio.gather(*work)

    total = TRACKED + EACH_CALL * len(calls)
    assert late == []
    assert ticker.largest < MAX_GAP, f"the loop was blocked for {ticker.largest:.3f} s"
    assert ticker.ticks > 10  # it ran beside the calls
    assert proxy.forwarded >= total  # every write went through the slow link
    counts = metrics.counts()
    assert counts.get("spilled", 0) == 0
    assert counts.get("buffered_on_loop", 0) == 0
    assert redis_client.xlen(stream) == total
    [first] = redis_client.xrange(stream, count=1)
    event = json.loads(first[1][b"e"])
    assert (event["event"], event["userId"]) == ("Order Completed", "buyer")
    assert len(set(message_ids)) == EACH_CALL * len(calls)


async def test_sync_calls_on_the_loop_go_to_the_buffer(
    configure, slow_redis, queue_prefix, redis_client, tmp_path
):
    url, _ = slow_redis
    configure(**settings(url, queue_prefix, tmp_path))
    stream = f"{queue_prefix}:log"

    @segment_mw.tracked("Refunded", user_id="buyer")
    def refund() -> None:
        pass

    async with ticking() as ticker:
        for n in range(200):  # no await between them: a durable write would block each
            segment_mw.track("Clicked", {"n": n}, user_id="buyer")
            if n % 4 == 0:
                refund()  # a sync tracked function called from async code

    assert ticker.largest < MAX_GAP, f"the loop was blocked for {ticker.largest:.3f} s"
    assert metrics.counts()["buffered_on_loop"] == 250
    # The producer's thread pushes them through the slow link within moments.
    await poll(lambda: redis_client.xlen(stream) == 250)
    assert metrics.counts().get("spilled", 0) == 0


async def test_the_awaitable_calls_match_the_sync_ones(configure, segment_events):
    configure()
    with segment_mw.bound(Scope(anonymous_id="anon-1", context={"page": {"path": "/cart"}})):
        ids = [
            await segment_mw.atrack("Clicked", {"button": "buy"}),
            await segment_mw.apage("Cart", category="Shop"),
            await segment_mw.ascreen("Main"),
            await segment_mw.aidentify("u-1", {"plan": "pro"}),
            await segment_mw.agroup("g-1", {"name": "Acme"}, user_id="u-1"),
            await segment_mw.aalias("anon-1", "u-1", message_id="alias-1"),
        ]
    assert [e["messageId"] for e in segment_events] == ids
    assert ids[-1] == "alias-1"
    assert [e["type"] for e in segment_events] == [
        "track", "page", "screen", "identify", "group", "alias"
    ]  # fmt: skip
    track, page = segment_events[:2]
    assert track["anonymousId"] == "anon-1"  # the scope reached the worker thread
    assert (page["name"], page["category"], page["properties"]["path"]) == ("Cart", "Shop", "/cart")
    assert segment_mw.atrack.__name__ == "atrack"
    assert "track" in (segment_mw.atrack.__doc__ or "")


async def test_invalid_arguments_raise_from_the_await(configure, segment_events):
    configure()
    with pytest.raises(InvalidEvent, match="event"):
        await segment_mw.atrack("", user_id="u-1")
    with pytest.raises(InvalidEvent, match="properties"):
        await segment_mw.atrack("Clicked", {"when": object()}, user_id="u-1")
    with pytest.raises(InvalidEvent):
        await segment_mw.atrack("Clicked")  # no id at all, none in scope
    assert segment_events == []


async def test_aflush_delivers(configure, tmp_path):
    out = tmp_path / "out.jsonl"
    configure(DESTINATIONS={"file": {"type": "jsonl", "path": str(out)}})
    mid = await segment_mw.atrack("Clicked", user_id="u-1")
    assert await segment_mw.aflush(10)
    assert [json.loads(line)["messageId"] for line in out.read_text().splitlines()] == [mid]
