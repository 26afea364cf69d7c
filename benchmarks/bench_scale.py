"""Scale-out: events/s enqueued and delivered on one Redis and on a 3-master Redis Cluster.

Starts its own cluster (three masters, no replicas: ``redis-server`` processes on free
ports, data in a temporary directory, stopped at the end) beside the usual single Redis.
Each row: several producer processes push small ``track`` events (batches of 100, as the
producer's writer thread does) as fast as they can; then two worker processes drain
every destination with the Deliverer into a local sink (its own process, answering 200).
Rows vary the log's shards and the number of destinations, so how the cost grows with
each shows. One machine runs everything (producers, workers, sink and every Redis
process), so the figures compare the setups with each other, not with a real cluster
whose nodes each have cores of their own.

    .venv/bin/python benchmarks/bench_scale.py [--events 60000] [--producers 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The private cluster is the test fixtures' own.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import (
    REDIS_URL,
    WRITE_KEY,
    delete_prefix,
    environment,
    median,
    redis_client,
    running_sink,
    table,
    unique_prefix,
)

WORKERS = 2
CHUNK = 100


def _settings(url: str, prefix: str, shards: int | None, sink_url: str, dests: int) -> dict:
    return {
        "QUEUE_URL": url,
        "QUEUE_PREFIX": prefix,
        "QUEUE_SHARDS": shards,
        "DESTINATIONS": {
            f"d{i}": {"type": "segment", "write_key": WRITE_KEY, "host": sink_url}
            for i in range(dests)
        },
    }


def _produce(settings: dict, tag: str, count: int, start: Any, done: Any) -> None:
    from segment_mw.config import load_settings
    from segment_mw.events import build, track_fields
    from segment_mw.queue import open_queue

    loaded = load_settings(settings, environ={})
    queue = open_queue(
        loaded.queue_url, prefix=loaded.queue_prefix, timeout=10.0, shards=loaded.queue_shards
    )
    entries = [
        build(
            "track",
            track_fields("Order Completed", {"order": i, "revenue": 19.99}),
            user_id=f"{tag}-user-{i % 500}",
        )
        for i in range(count)
    ]
    queue.push(entries[:1])  # connected (and the server checked) before the clock starts
    start.wait()
    cpu = time.process_time()
    for at in range(1, count, CHUNK):
        queue.push(entries[at : at + CHUNK])
    done.put((time.perf_counter(), time.process_time() - cpu))
    queue.close()


def _deliver(settings: dict, start: Any, done: Any) -> None:
    from segment_mw.config import load_settings
    from segment_mw.delivery import Deliverer
    from segment_mw.queue import open_queue

    loaded = load_settings(settings, environ={})
    queue = open_queue(
        loaded.queue_url, prefix=loaded.queue_prefix, timeout=10.0, shards=loaded.queue_shards
    )
    deliverer = Deliverer(loaded, queue)
    names = list(loaded.destination_names)
    queue.ensure_destinations(names)
    start.wait()
    cpu = time.process_time()
    idle_rounds = 0
    while idle_rounds < 3:  # every destination found empty three times over
        delivered = sum(deliverer.flush_destination(n).delivered for n in names)
        idle_rounds = 0 if delivered else idle_rounds + 1
    done.put((time.perf_counter(), time.process_time() - cpu))
    deliverer.close()
    queue.close()


def run(url: str, shards: int | None, dests: int, events: int, producers: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    prefix = unique_prefix("scale")
    per = events // producers
    with running_sink() as sink:
        settings = _settings(url, prefix, shards, sink.url, dests)
        # Cursors first: the workers must find every event from the first one on.
        from segment_mw.config import load_settings
        from segment_mw.queue import open_queue

        loaded = load_settings(settings, environ={})
        setup = open_queue(url, prefix=prefix, shards=loaded.queue_shards)
        setup.ensure_destinations(list(loaded.destination_names))

        start, done = ctx.Event(), ctx.Queue()
        procs = [
            ctx.Process(target=_produce, args=(settings, f"p{i}", per + 1, start, done))
            for i in range(producers)
        ]
        for proc in procs:
            proc.start()
        time.sleep(3.0)  # every producer built its events and connected
        t0 = time.perf_counter()
        start.set()
        ends = [done.get(timeout=600) for _ in procs]
        enqueue = (per * producers) / (max(end for end, _ in ends) - t0)
        push_cpu = sum(cpu for _, cpu in ends) / (per * producers) * 1e6
        for proc in procs:
            proc.join(60)

        stored = setup.status(list(loaded.destination_names)).stored
        start2 = ctx.Event()
        workers = [
            ctx.Process(target=_deliver, args=(settings, start2, done)) for _ in range(WORKERS)
        ]
        for proc in workers:
            proc.start()
        time.sleep(3.0)
        t1 = time.perf_counter()
        start2.set()
        stats = sink.wait_for(stored * dests, timeout=600)
        t_all = time.perf_counter() - t1
        worked = [done.get(timeout=120) for _ in workers]
        for proc in workers:
            proc.join(120)
        setup.close()
    # The workers' CPU includes their last idle rounds over every shard: a few ms.
    deliver_cpu = sum(cpu for _, cpu in worked) / max(stats["events"], 1) * 1e6
    if stats["events"] < stored * dests:
        raise RuntimeError(f"delivered {stats['events']} of {stored * dests}")
    return {
        "enqueue": enqueue,
        "deliver": stats["events"] / t_all,
        "push_cpu": push_cpu,
        "deliver_cpu": deliver_cpu,
        "events": stored,
        "prefix": prefix,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--producers", type=int, default=3)
    parser.add_argument("--runs", type=int, default=1, help="median of this many runs per row")
    args = parser.parse_args()
    redis_client()
    from tests.topologies import Cluster, running, unavailable

    why = unavailable()
    if why:
        sys.exit(f"bench_scale needs a private Redis Cluster: {why}")
    print(
        f"bench_scale: {args.events:,} track events per row, {args.producers} producer "
        f"processes, {WORKERS} worker processes"
    )
    print(environment())
    rows = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        running(Cluster(Path(tmp), masters=3, replicas=0)) as cluster,
    ):
        setups = [
            ("one Redis, 1 stream", REDIS_URL, None, 1),
            ("one Redis, 3 shards", REDIS_URL, 3, 1),
            ("cluster, 1 shard", cluster.url, 1, 1),
            ("cluster, 3 shards", cluster.url, 3, 1),
            ("cluster, 6 shards", cluster.url, 6, 1),
            ("one Redis, 1 stream, 3 destinations", REDIS_URL, None, 3),
            ("cluster, 3 shards, 3 destinations", cluster.url, 3, 3),
        ]
        results: dict[str, list[dict]] = {label: [] for label, *_ in setups}
        for _ in range(args.runs):  # interleaved: a busy spell of the machine hits every row
            for label, url, shards, dests in setups:
                result = run(url, shards, dests, args.events, args.producers)
                results[label].append(result)
                if url == REDIS_URL:
                    delete_prefix(result["prefix"])
                    client = redis_client()
                    for key in client.scan_iter(f"*{result['prefix']}*", count=1000):  # type: ignore[attr-defined]
                        client.delete(key)  # type: ignore[attr-defined]
                print(f"  {label}: done", flush=True)
        for label, _url, _shards, dests in setups:
            got = results[label]
            rows.append(
                (
                    label,
                    dests,
                    median([r["enqueue"] for r in got]),
                    median([r["push_cpu"] for r in got]),
                    median([r["deliver"] for r in got]),
                    median([r["deliver_cpu"] for r in got]),
                )
            )
    print()
    print(
        table(
            [
                "setup",
                "destinations",
                "enqueued events/s",
                "producer CPU µs/event",
                "deliveries/s",
                "worker CPU µs/delivery",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
