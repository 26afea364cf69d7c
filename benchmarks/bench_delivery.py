"""Delivery throughput per worker process: segment_mw's Deliverer vs the official library.

Both deliver the same number of small ``track`` events to the same local sink (an asyncio
server in its own process, answering 200), and again pageviews: the official library's
with the context bench_pageview.py's hand-written middleware gives it, ours as the
middleware queues them (the message with its request's facts, the context made here,
where it is delivered). The official library's ``Consumer`` thread
drains its in-memory queue (filled before the clock starts); segment_mw's
``Deliverer.flush_destination`` drains a Redis stream that was filled before the clock
starts. A "floor" line times only XREADGROUP + joining the stored bytes + XACK (one
XREADGROUP a read, and again as the Redis queue reads: slices of ``READ_SLICE`` in one
round trip). Each
figure is the median of several runs; CPU time is this process's (all threads), the sink
and Redis run in their own processes. The GC column is the time this process spent in
Python's cyclic garbage collector meanwhile: collections are set off by the container
objects made per event (the parsed stream entries, the records), so it shows what a
layout with fewer objects per event would save.

    .venv/bin/python benchmarks/bench_delivery.py [--events 100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    REDIS_URL,
    WRITE_KEY,
    delete_prefix,
    environment,
    median,
    redis_client,
    require_official,
    running_sink,
    table,
    unique_prefix,
)

TARGET_RATIO = 5.0


def event_properties(i: int) -> dict[str, object]:
    return {"order_id": f"order-{i}", "revenue": 19.99, "currency": "USD"}


# The pageview lines: the request bench_pageview.py makes, on a different product each time.
def page_path(i: int) -> str:
    return f"/products/item-{i % 5000}/"


def official_page_context(i: int) -> tuple[dict[str, object], dict[str, object]]:
    """What bench_pageview.py's hand-written middleware gives ``page()``: properties, context."""
    import bench_pageview as pv

    path = page_path(i)
    page = {
        "path": path,
        "url": f"https://{pv.HOST}{path}?{pv.QUERY}",
        "search": f"?{pv.QUERY}",
        "referrer": pv.HEADERS["referer"],
        "title": "Blue Suede Shoes · Shop",
    }
    return page, {"ip": pv.CLIENT_IP, "userAgent": pv.USER_AGENT, "page": page}


class GcTimer:
    """Seconds this process spent in the cyclic garbage collector while it was entered."""

    def __init__(self) -> None:
        self.total = 0.0
        self._began = 0.0

    def __call__(self, phase: str, _info: dict[str, int]) -> None:
        # A collection holds the GIL throughout: starts and stops never interleave.
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._began

    def __enter__(self) -> GcTimer:
        # What filling the queue left for the collector is not charged to the run.
        gc.collect()
        gc.callbacks.append(self)
        return self

    def __exit__(self, *_exc: object) -> None:
        gc.callbacks.remove(self)


# -- the official library ----------------------------------------------------------------


def run_official(
    sink_url: str, n: int, upload_size: int, gzip: bool = False, pages: bool = False
) -> dict[str, float]:
    from segment.analytics.client import Client
    from segment.analytics.consumer import Consumer

    # No consumer thread yet: fill the queue first, so only delivery is timed.
    client = Client(WRITE_KEY, host=sink_url, max_queue_size=n + 1, thread=0, gzip=gzip)
    client.consumers = []
    for i in range(n):
        if pages:
            properties, context = official_page_context(i)
            ok, _ = client.page(
                anonymous_id=f"anon-{i % 1000}",
                name="product",
                properties=properties,
                context=context,
            )
        else:
            ok, _ = client.track(
                user_id=f"user-{i % 1000}", event="Order Completed", properties=event_properties(i)
            )
        assert ok
    consumer = Consumer(client.queue, WRITE_KEY, host=sink_url, upload_size=upload_size, gzip=gzip)
    with GcTimer() as collector:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        consumer.start()
        client.queue.join()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    consumer.pause()
    consumer.join()
    return {"wall": wall, "cpu": cpu, "gc": collector.total}


# -- segment_mw ----------------------------------------------------------------------------


def our_page(i: int, settings: object) -> object:
    """The page event segment_mw's middleware queues for bench_pageview.py's request: the
    message with the request's facts, its context made where it is delivered."""
    import bench_pageview as pv

    from segment_mw.capture import RequestInfo, capture
    from segment_mw.events import build, page_fields

    info = RequestInfo(
        method="GET",
        scheme="https",
        host=pv.HOST,
        path=page_path(i),
        query_string=pv.QUERY,
        headers={k: v for k, v in pv.HEADERS.items() if k != "cookie"},
        cookies={"ajs_anonymous_id": f"anon-{i % 1000}", "_ga": "GA1.1.1234567890.1712345678"},
        peer=pv.CLIENT_IP,
    )
    rc = capture(info, settings)
    rc.scope.set_title("Blue Suede Shoes · Shop")
    return build(
        "page",
        page_fields("product", None, None),
        anonymous_id=rc.anonymous_id,
        request=rc.scope,
        with_page=True,
    )


def fill_stream(prefix: str, n: int, pages: bool = False, settings: object = None) -> int:
    """Push ``n`` serialised events into the stream (as the producer would)."""
    from segment_mw.events import build, track_fields
    from segment_mw.queue.redis import RedisQueue

    queue = RedisQueue(REDIS_URL, prefix=prefix, timeout=10.0)
    chunk = []
    size = 0
    for i in range(n):
        if pages:
            entry = our_page(i, settings)
        else:
            entry = build(
                "track",
                track_fields("Order Completed", event_properties(i)),
                user_id=f"user-{i % 1000}",
            )
        size += len(entry.body)
        chunk.append(entry)
        if len(chunk) == 1000:
            queue.push(chunk)
            chunk = []
    queue.push(chunk)
    queue.close()
    return size // n


def run_ours(sink_url: str, n: int, gzip: bool = False, pages: bool = False) -> dict[str, float]:
    from segment_mw.config import load_settings
    from segment_mw.delivery import Deliverer
    from segment_mw.queue.redis import RedisQueue

    prefix = unique_prefix("delivery")
    try:
        settings = load_settings(
            {
                "QUEUE_URL": REDIS_URL,
                "QUEUE_PREFIX": prefix,
                "DESTINATIONS": {
                    "Segment": {
                        "type": "segment",
                        "write_key": WRITE_KEY,
                        "host": sink_url,
                        "gzip": gzip,
                    }
                },
            },
            environ={},
        )
        queue = RedisQueue(REDIS_URL, prefix=prefix, timeout=10.0)
        queue.ensure_destinations(["Segment"])
        avg = fill_stream(prefix, n, pages, settings)
        deliverer = Deliverer(settings, queue)
        delivered = 0
        with GcTimer() as collector:
            wall0, cpu0 = time.perf_counter(), time.process_time()
            while delivered < n:
                report = deliverer.flush_destination("Segment")
                if report.retry_at is not None or (report.delivered == 0 and not report.more):
                    raise RuntimeError(f"delivery stalled: {report}")
                delivered += report.delivered
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        deliverer.close()
        queue.close()
        return {"wall": wall, "cpu": cpu, "event_bytes": avg, "gc": collector.total}
    finally:
        delete_prefix(prefix)


def run_floor(n: int, count: int, slice_size: int = 0) -> dict[str, float]:
    """XREADGROUP + join + XACK alone: what the stream itself costs.

    ``slice_size``: each read of ``count`` goes as XREADGROUPs of that many in one round
    trip, every reply joined before the next is parsed (as the Redis queue reads).
    """
    import redis

    prefix = unique_prefix("floor")
    try:
        fill_stream(prefix, n)
        client = redis.Redis.from_url(REDIS_URL, protocol=2)
        stream = f"{prefix}:log"
        client.xgroup_create(stream, "g", id="0")
        step = slice_size or count
        sizes = [min(step, left) for left in range(count, 0, -step)]
        # On the connection itself: the replies as hiredis parsed them, no redis-py
        # callbacks (a dict per message) and no pipeline bookkeeping.
        try:
            conn = client.connection_pool.get_connection()
        except TypeError:  # redis-py before 5.3 wants a command name
            conn = client.connection_pool.get_connection("XREADGROUP")
        reads = conn.pack_commands(
            [
                ("XREADGROUP", "GROUP", "g", "c", "COUNT", size, "STREAMS", stream, ">")
                for size in sizes
            ]
        )
        done = 0
        with GcTimer() as collector:
            wall0, cpu0 = time.perf_counter(), time.process_time()
            while True:
                conn.send_packed_command(reads)
                ids: list[bytes] = []
                for _ in sizes:
                    reply = conn.read_response()
                    if reply:
                        rows = reply[0][1]
                        body = b",".join([fields[1] for _id, fields in rows])
                        assert body
                        ids += [row[0] for row in rows]
                if not ids:
                    break
                conn.send_command("XACK", stream, "g", *ids)
                conn.read_response()
                done += len(ids)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        assert done == n, done
        client.connection_pool.release(conn)
        client.close()
        return {"wall": wall, "cpu": cpu, "gc": collector.total}
    finally:
        delete_prefix(prefix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated subset: official,official1000,ours,official_gzip,ours_gzip,"
        "official_pages,ours_pages,floor,floor_sliced",
    )
    args = parser.parse_args()
    n, runs = args.events, args.runs
    logging.getLogger("segment").setLevel(logging.CRITICAL)
    require_official()
    redis_client()

    print(f"bench_delivery: {n:,} small track events per run, median of {runs} runs")
    print(environment())
    results: dict[str, list[dict[str, float]]] = {}
    labels = {
        "official": "official library Consumer (upload_size=100, default)",
        "official1000": "official library Consumer (upload_size=1000, tuned)",
        "ours": "segment_mw Deliverer.flush_destination (Redis)",
        "official_gzip": "official library Consumer, gzip=True",
        "ours_gzip": "segment_mw Deliverer.flush_destination, gzip: True",
        "official_pages": "official library Consumer, pageviews with context (default)",
        "ours_pages": "segment_mw Deliverer, the middleware's pageviews (completed here)",
        "floor": "floor: XREADGROUP + join + XACK (2500/read)",
        "floor_sliced": "floor: the same, read as XREADGROUPs of 250 in one round trip",
    }
    from segment_mw.queue.redis import READ_SLICE

    runners = {
        "official": lambda url: run_official(url, n, 100),
        "official1000": lambda url: run_official(url, n, 1000),
        "ours": lambda url: run_ours(url, n),
        "official_gzip": lambda url: run_official(url, n, 100, gzip=True),
        "ours_gzip": lambda url: run_ours(url, n, gzip=True),
        "official_pages": lambda url: run_official(url, n, 100, pages=True),
        "ours_pages": lambda url: run_ours(url, n, pages=True),
        "floor": lambda url: run_floor(n, 2500),
        "floor_sliced": lambda url: run_floor(n, 2500, READ_SLICE),
    }
    if args.only:
        wanted = set(args.only.split(","))
        labels = {k: v for k, v in labels.items() if k in wanted or k == "official"}
    with running_sink() as sink:
        for _ in range(runs):
            for key in labels:
                sink.reset()
                result = runners[key](sink.url)
                if not key.startswith("floor"):
                    got = sink.wait_for(n, timeout=10)
                    if got["events"] != n:
                        raise SystemExit(f"{key}: the sink received {got['events']} of {n} events")
                    result["requests"] = got["requests"]
                    result["bytes"] = got["bytes"]
                results.setdefault(key, []).append(result)

    base_rate = n / median([r["wall"] for r in results["official"]])
    rows = []
    for key, label in labels.items():
        wall = median([r["wall"] for r in results[key]])
        cpu = median([r["cpu"] for r in results[key]])
        collecting = median([r["gc"] for r in results[key]])
        rate = n / wall
        requests = results[key][0].get("requests")
        rows.append(
            [
                label,
                rate,
                cpu * 100_000 / n,
                f"{collecting * 1e8 / n:.0f}",
                f"{rate / base_rate:.1f}x",
                f"{requests:,}" if requests else "-",
            ]
        )
    print()
    print(
        table(
            [
                "delivery",
                "events/s",
                "CPU-s per 100k",
                "GC ms per 100k",
                "vs official",
                "HTTP requests",
            ],
            rows,
        )
    )

    def rate_of(key: str) -> float:
        return n / median([r["wall"] for r in results[key]])

    print()
    for ours, theirs, what in (
        ("ours", "official", ""),
        ("ours_gzip", "official_gzip", " (gzip)"),
        ("ours_pages", "official_pages", " (pageviews)"),
    ):
        if ours not in results or theirs not in results:
            continue
        ratio = rate_of(ours) / rate_of(theirs)
        print(
            f"target{what}: segment_mw >= {TARGET_RATIO:.0f}x "
            f"the official library per worker process -> {ratio:.1f}x: "
            f"{'MET' if ratio >= TARGET_RATIO else 'NOT MET'}"
        )
    for key, what in (("ours", "track event"), ("ours_pages", "pageview, as queued")):
        if key in results:
            print(f"(mean serialised {what}: {int(results[key][0]['event_bytes'])} bytes)")


if __name__ == "__main__":
    main()
