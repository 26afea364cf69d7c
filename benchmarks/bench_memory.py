"""A web process's memory while the destination is down: segment_mw vs the official library.

The destination refuses every connection (a closed local port) for the whole run. Each
variant runs in a fresh process that emits N page events at a busy web process's pace and
samples its resident memory (VmRSS from /proc/self/status) as it goes:

- segment_mw: events go through the producer (buffered, as pageviews are) into Redis; an
  in-process flusher keeps trying to deliver them and keeps failing, backing off. The
  backlog lives in Redis (XLEN grows), so the process stays flat.
- the official library, defaults: its in-memory queue holds at most ``max_queue_size``
  (10,000) events; its consumer thread retries the first batch with backoff, and every
  event past the limit is dropped. Its memory is bounded only by dropping.
- the official library with an unbounded queue: no drops, and memory grows with the
  backlog (what "don't drop" costs without a durable queue).

    .venv/bin/python benchmarks/bench_memory.py [--events 200000]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    REDIS_URL,
    WRITE_KEY,
    closed_port,
    delete_prefix,
    environment,
    redis_client,
    require_official,
    rss_kib,
    table,
    unique_prefix,
)

SAMPLES = 20
WARMUP = 2000
PAUSE = 0.25  # between slices: lets the flusher (or consumer) run its retries meanwhile
# A busy web process, not a tight loop: 500 events, then a 5 ms breath (~25,000 events/s).
PACE_EVERY = 500
PACE_SLEEP = 0.005


def properties(i: int) -> dict[str, object]:
    return {
        "path": f"/products/item-{i % 500}/",
        "url": f"https://shop.example.com/products/item-{i % 500}/",
        "referrer": "https://www.google.com/",
        "search": "",
        "title": "Blue Suede Shoes",
    }


def sample(row: dict[str, object]) -> None:
    print(json.dumps(row), flush=True)


def run_ours(n: int, port: int) -> None:
    import segment_mw
    from segment_mw import api, events

    prefix = unique_prefix("memory")
    attempts = {"n": 0}
    try:
        client = segment_mw.configure(
            {
                "QUEUE_URL": REDIS_URL,
                "QUEUE_PREFIX": prefix,
                "IN_PROCESS_FLUSHER": True,
                "DESTINATIONS": {
                    "Segment": {
                        "type": "segment",
                        "write_key": WRITE_KEY,
                        "host": f"http://127.0.0.1:{port}",
                        "timeout": 1.0,
                    }
                },
            }
        )
        dest = client.deliverer.destinations["Segment"]
        send = dest.send

        def counting_send(bodies, *, attempt=0):
            attempts["n"] += 1
            return send(bodies, attempt=attempt)

        dest.send = counting_send  # type: ignore[method-assign]
        redis = redis_client()
        stream = f"{prefix}:log"

        def emit(i: int) -> None:
            # What the middleware does for a pageview: buffered, never a network wait.
            api.emit(
                "page",
                events.page_fields("Product", properties(i), None),
                anonymous_id=f"anon-{i % 5000}",
                durable=False,
            )

        for i in range(WARMUP):
            emit(i)
        client.producer.drain()
        # Start from the steady state: the flusher has made its first (failed) attempt.
        deadline = time.monotonic() + 5.0
        while not attempts["n"] and time.monotonic() < deadline:
            time.sleep(0.05)
        start = time.monotonic()
        step = n // SAMPLES
        emitted = 0
        for _ in range(SAMPLES):
            peak = 0
            for i in range(emitted, emitted + step):
                emit(i)
                if not i % PACE_EVERY:
                    peak = max(peak, client.producer.buffered)
                    time.sleep(PACE_SLEEP)
            emitted += step
            time.sleep(PAUSE)
            backoff = client.queue.get_backoff("Segment")
            sample(
                {
                    "emitted": emitted,
                    "rss": rss_kib(),
                    "xlen": redis.xlen(stream) - WARMUP,
                    "buffered": client.producer.buffered,
                    "peak": peak,
                    "attempts": attempts["n"],
                    "backoff": backoff.attempts,
                    "t": time.monotonic() - start,
                }
            )
        client.producer.drain()
        status = client.status().destinations["Segment"]
        sample(
            {
                "final": True,
                "xlen": redis.xlen(stream) - WARMUP,
                "queued": status.queued - WARMUP,
                "delivered": status.delivered,
                "dead": status.dead,
                "last_error": status.last_error,
                "counters": client.status().counters,
            }
        )
        client.close()
    finally:
        delete_prefix(prefix)


def run_official(n: int, port: int, max_queue_size: int) -> None:
    from segment.analytics.client import Client

    logging.getLogger("segment").setLevel(logging.CRITICAL)  # one warning per dropped event
    client = Client(WRITE_KEY, host=f"http://127.0.0.1:{port}", max_queue_size=max_queue_size)
    for i in range(WARMUP):
        client.page(anonymous_id=f"anon-{i % 5000}", name="Product", properties=properties(i))
    start = time.monotonic()
    step = n // SAMPLES
    emitted = dropped = 0
    for _ in range(SAMPLES):
        for i in range(emitted, emitted + step):
            ok, _msg = client.page(
                anonymous_id=f"anon-{i % 5000}", name="Product", properties=properties(i)
            )
            dropped += not ok
            if not i % PACE_EVERY:
                time.sleep(PACE_SLEEP)
        emitted += step
        time.sleep(PAUSE)
        sample(
            {
                "emitted": emitted,
                "rss": rss_kib(),
                "queued": client.queue.qsize(),
                "dropped": dropped,
                "t": time.monotonic() - start,
            }
        )
    sample({"final": True, "dropped": dropped, "queued": client.queue.qsize()})
    # Daemon threads: nothing to wait for (the destination never comes back).
    os._exit(0)


def run_variant(variant: str, n: int, port: int) -> None:
    if variant == "ours":
        run_ours(n, port)
    elif variant == "official":
        run_official(n, port, 10_000)
    else:
        run_official(n, port, 0)  # 0: a queue.Queue without a limit


def child(variant: str, n: int, port: int) -> list[dict[str, object]]:
    script = os.path.abspath(__file__)
    out = subprocess.run(
        [sys.executable, script, "--variant", variant, "--events", str(n), "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"variant {variant} failed ({out.returncode})")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def mib(kib: object) -> float:
    return int(kib) / 1024  # type: ignore[call-overload]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--variant", choices=["ours", "official", "unbounded"])
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    n = args.events // SAMPLES * SAMPLES
    if args.variant is not None:
        run_variant(args.variant, n, args.port)
        return

    require_official()
    redis_client()
    port = closed_port()
    print(f"bench_memory: {n:,} page events while the destination refuses connections")
    print(f"(127.0.0.1:{port}); each variant in a fresh process, RSS sampled every {n // 20:,}")
    print(environment())
    ours = child("ours", n, port)
    official = child("official", n, port)
    unbounded = child("unbounded", n, port)

    rows = []
    o_rows = [r for r in ours if "final" not in r]
    f_rows = [r for r in official if "final" not in r]
    u_rows = [r for r in unbounded if "final" not in r]
    for o, f, u in zip(o_rows, f_rows, u_rows, strict=True):
        rows.append(
            [
                f"{o['emitted']:,}",
                mib(o["rss"]),
                f"{o['xlen']:,}",
                f"{o['buffered']} ({o['peak']:,})",
                f"{o['attempts']}/{o['backoff']}",
                mib(f["rss"]),
                f"{f['queued']:,}",
                f"{f['dropped']:,}",
                mib(u["rss"]),
                f"{u['queued']:,}",
            ]
        )
    print()
    print(
        table(
            [
                "emitted",
                "ours RSS MiB",
                "ours XLEN",
                "ours buffer (peak)",
                "ours tries/backoff",
                "official RSS MiB",
                "official queued",
                "official dropped",
                "unbounded RSS MiB",
                "unbounded queued",
            ],
            rows,
        )
    )
    o_final = next(r for r in ours if "final" in r)
    f_final = next(r for r in official if "final" in r)
    o_growth = mib(o_rows[-1]["rss"]) - mib(o_rows[0]["rss"])
    f_growth = mib(f_rows[-1]["rss"]) - mib(f_rows[0]["rss"])
    u_growth = mib(u_rows[-1]["rss"]) - mib(u_rows[0]["rss"])
    span = f"from {o_rows[0]['emitted']:,} to {o_rows[-1]['emitted']:,} events"
    print()
    print(f"RSS growth {span}:")
    o_rss = [mib(r["rss"]) for r in o_rows]
    print(
        f"  segment_mw            {o_growth:+7.1f} MiB   (between {min(o_rss):.1f} and "
        f"{max(o_rss):.1f} MiB throughout)"
    )
    print(
        "                        backlog in Redis: "
        f"{o_final['xlen']:,} events, queued for Segment {o_final['queued']:,}, "
        f"delivered {o_final['delivered']}, dead {o_final['dead']}"
    )
    print(f"                        last error: {o_final['last_error']}")
    print(
        f"  official (10,000 max) {f_growth:+7.1f} MiB   kept {f_final['queued']:,}, "
        f"dropped {f_final['dropped']:,} of {n:,} ({f_final['dropped'] / n:.0%})"
    )
    print(
        f"  official (unbounded)  {u_growth:+7.1f} MiB   kept all {n:,} in memory "
        f"({u_growth * 1024 * 1024 / n:,.0f} bytes per event)"
    )
    # Flat: over the second half (start-up is behind it) the process grows by less than 5%
    # of what the in-memory backlog needs; a few MiB of allocator noise is not a trend.
    mid = len(o_rows) // 2
    o_late = mib(o_rows[-1]["rss"]) - mib(o_rows[mid]["rss"])
    u_late = mib(u_rows[-1]["rss"]) - mib(u_rows[mid]["rss"])
    flat = o_late < 0.05 * u_late and o_final["xlen"] >= n
    print(
        f"second half ({o_rows[mid]['emitted']:,} to {o_rows[-1]['emitted']:,}): segment_mw "
        f"{o_late:+.1f} MiB, official unbounded {u_late:+.1f} MiB"
    )
    print()
    print(
        "target: the web process stays flat while the backlog lives in Redis: "
        + ("MET" if flat else "NOT MET")
    )


if __name__ == "__main__":
    main()
