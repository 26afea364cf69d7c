"""End-to-end latency: from the call in the web process to the event arriving at the sink.

This process plays the web process: segment_mw configured on a private Redis, Celery
installed (each push requests a flush, debounced), events emitted at a steady rate. A real
Celery worker (``tests/celery_app.py``, ``--pool=solo``, its own process) delivers them to
the local sink (``_common.py``, its own process), which subtracts each message's
``properties.emitted_at`` (``time.time()`` at the call) from its arrival time. Two ways in:

- ``track()``: the durable write (one Redis round trip in the call);
- buffered: the hand-off pageviews use (``durable=False``: an in-process buffer pushed by
  the producer's writer thread within ``BUFFER_MAX_DELAY``).

Two loads: light (``--light``, 100 events/s) and heavy (``--heavy``, 10,000 events/s, or
the most one thread sustains: the achieved rate is printed). Each with ``FLUSH_DELAY`` at
its default (0.5 s) and at the values in ``--flush-delays``, the worker restarted for each.

    .venv/bin/python benchmarks/bench_latency.py [--light 100] [--heavy 10000]
        [--seconds 4] [--flush-delays 0.5,0.1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    Processes,
    Sink,
    environment,
    exit_on_sigterm,
    percentile,
    private_redis,
    running_sink,
    table,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[1]
QUEUE = "bench-latency"


def emitter(path: str) -> Any:
    import segment_mw
    from segment_mw import api, events

    if path == "track()":
        return lambda: segment_mw.track("Clicked", {"emitted_at": time.time()}, user_id="u-1")
    return lambda: api.emit(
        "track",
        events.track_fields("Clicked", {"emitted_at": time.time()}),
        user_id="u-1",
        durable=False,
    )


def run_load(path: str, rate: float, seconds: float, sink: Sink) -> dict[str, Any]:
    """Emit at ``rate`` for ``seconds``; wait for every event; the delays' figures."""
    from segment_mw import metrics

    emit = emitter(path)
    total = int(rate * seconds)
    spilled = metrics.counts().get("spilled", 0)
    sink.delays()  # forget anything earlier
    requests = sink.stats()["requests"]
    started = time.perf_counter()
    sent = 0
    while sent < total:
        due = min(total, int((time.perf_counter() - started) * rate) + 1)
        while sent < due:
            emit()
            sent += 1
        ahead = started + sent / rate - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
    elapsed = time.perf_counter() - started
    spilled = metrics.counts().get("spilled", 0) - spilled
    delays: list[float] = []

    def arrived() -> bool:
        delays.extend(sink.delays())
        return len(delays) >= total

    complete = wait_for(arrived, 60.0)
    requests = sink.stats()["requests"] - requests
    return {
        "path": path,
        "target": rate,
        "achieved": total / elapsed,
        "events": total,
        "received": len(delays),
        "p50": percentile(delays, 50) * 1e3,
        "p99": percentile(delays, 99) * 1e3,
        "max": max(delays, default=float("nan")) * 1e3,
        "complete": complete,
        "spilled": spilled,
        "per batch": len(delays) / max(requests, 1),
    }


def measure(flush_delay: float, args: argparse.Namespace) -> list[dict[str, Any]]:
    from celery import Celery

    import segment_mw
    import segment_mw.celery
    from segment_mw.client import reset_client

    # Ended the other way round: the worker first, Redis last.
    with (
        private_redis("bench-latency") as redis_url,
        running_sink(delays=True) as sink,
        Processes() as procs,
    ):
        broker = redis_url.rsplit("/", 1)[0] + "/1"
        settings = {
            "QUEUE_URL": redis_url,
            "DESTINATIONS": {"webhook": {"type": "http", "url": f"{sink.url}/hook"}},
            "FLUSH_DELAY": flush_delay,
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENT_")}
        env.update(
            PYTHONPATH=str(ROOT),
            SEGMENT_MW_TEST_SETTINGS=json.dumps(settings),
            SEGMENT_MW_TEST_BROKER=broker,
            SEGMENT_MW_TEST_CELERY_QUEUE=QUEUE,
        )
        worker = procs.start(
            [
                *(sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker"),
                *("--pool=solo", "--without-mingle", "--without-gossip"),
                *("--without-heartbeat", "--loglevel=WARNING"),
            ],
            env=env,
            cwd=str(ROOT),
        )
        app = Celery("bench-latency", broker=broker, set_as_current=False)
        app.conf.task_default_queue = QUEUE
        segment_mw.configure(settings)
        segment_mw.celery.install(app, watchdog=False)
        try:
            # Up once a first event gets through (the worker's start is not timed).
            segment_mw.track("Warm Up", {"emitted_at": time.time()}, user_id="u-1")
            if not wait_for(lambda: sink.stats()["events"] > 0, 60.0):
                sys.exit("no event reached the sink\n" + procs.log_tail(worker))
            rows = []
            for path in ("track()", "buffered"):
                for rate, seconds in ((args.light, args.seconds), (args.heavy, args.seconds)):
                    row = run_load(path, rate, seconds, sink)
                    row["flush delay"] = flush_delay
                    rows.append(row)
        finally:
            segment_mw.celery.uninstall()
            reset_client()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--light", type=float, default=100.0, help="events/s")
    parser.add_argument("--heavy", type=float, default=10_000.0, help="events/s")
    parser.add_argument("--seconds", type=float, default=4.0, help="per load")
    parser.add_argument("--flush-delays", default="0.5,0.1", help="FLUSH_DELAY values")
    parser.add_argument("--quick", action="store_true", help="1.5 s per load, default delay")
    args = parser.parse_args()
    delays = [float(d) for d in args.flush_delays.split(",") if d]
    if args.quick:
        args.seconds, delays = 1.5, delays[:1]
    exit_on_sigterm()
    print(environment().rsplit(", redis", 1)[0] + ", a private redis-server")
    print(f"{args.seconds:g}s per load; a Celery worker (solo pool) delivering to the sink\n")
    rows = [row for delay in delays for row in measure(delay, args)]
    print("milliseconds from the call to the sink:")
    print(
        table(
            [
                *("FLUSH_DELAY", "call", "target/s", "achieved/s"),
                *("p50 ms", "p99 ms", "max ms", "events/batch", "spilled"),
            ],
            [
                [
                    f"{r['flush delay']:g} s",
                    r["path"],
                    r["target"],
                    r["achieved"],
                    r["p50"],
                    r["p99"],
                    r["max"],
                    r["per batch"],
                    r["spilled"],
                ]
                for r in rows
            ],
        )
    )
    short = [r for r in rows if r["achieved"] < 0.95 * r["target"]]
    for r in short:
        print(
            f"note: {r['path']} at {r['target']:,.0f}/s: one thread sustained "
            f"{r['achieved']:,.0f}/s (the most this machine gave it)"
        )
    if any(r["spilled"] for r in rows):
        print(
            "spilled: durable writes that took longer than ENQUEUE_TIMEOUT (a busy machine) "
            "and were pushed again from the buffer"
        )
    ok = all(r["complete"] for r in rows)
    print(
        "check: "
        + ", ".join(f"{r['received']:,}/{r['events']:,}" for r in rows)
        + " events at the sink "
        + ("OK" if ok else "INCOMPLETE")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
