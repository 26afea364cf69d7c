"""Events delivered twice on a healthy system, through real Celery workers to a local sink.

Two situations that used to make duplicates of the library's own making:

- **Redis answers late**: durable calls (``segment_mw.track``) go through a TCP proxy on
  loopback that holds back 10% of Redis' replies by 30 ms, past ``ENQUEUE_TIMEOUT``
  (10 ms). Redis has stored those writes; only the reply is late. One Celery worker
  delivers (straight to Redis).
- **A slow destination**: it answers every batch in 0.6 x ``CLAIM_IDLE``; two Celery
  workers deliver 2,000 events in batches of 100, each reading the next batch while it
  sends one, each looking for orphaned batches to claim.

The sink (``tests/sink.py``) records every request; "sent twice" counts messageIds it
received more than once in first sends (a request without ``X-Retry-Count``), "retried"
the requests that repeated a send that timed out (at-least-once delivery, not counted as
ours). ``--baseline PATH`` runs the same scenarios against another checkout (say the
commit before these fixes, from ``git worktree add``) in the same run, side by side.

    .venv/bin/python benchmarks/bench_duplicates.py [--durable 5000] [--events 2000]
        [--baseline ../segment_mw-main]
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import REDIS_URL, delete_prefix, environment, redis_client, table

ROOT = Path(__file__).resolve().parents[1]
BROKER = os.environ.get("SEGMENT_MW_BENCH_BROKER", "redis://127.0.0.1:6379/10")


def _load(name: str) -> ModuleType:
    """A module of this checkout's tests/ by path (the code measured may be another's)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "tests" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class Workers:
    """``celery -A tests.celery_app worker`` processes of the checkout measured."""

    def __init__(self, code: Path, settings: dict[str, Any], queue: str, count: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGMENT_", "DJANGO_"))}
        env.update(
            PYTHONPATH=os.pathsep.join([str(code), str(ROOT)]),
            SEGMENT_MW_TEST_SETTINGS=json.dumps(settings),
            SEGMENT_MW_TEST_CELERY_QUEUE=queue,
            SEGMENT_MW_TEST_BROKER=BROKER,
        )
        self.procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "tests.celery_app",
                    "worker",
                    "--pool=solo",
                    "--without-mingle",
                    "--without-gossip",
                    "--without-heartbeat",
                    "--loglevel=WARNING",
                    f"--hostname=bench{n}-{queue}@%h",
                ],
                cwd=code,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            for n in range(count)
        ]

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _counts(sink: Any) -> tuple[collections.Counter[str], int]:
    """messageIds of first sends, and how many requests were retries."""
    with sink.lock:
        requests = list(sink.requests)
    first = [r for r in requests if "X-Retry-Count" not in r.headers]
    ids = collections.Counter(e["messageId"] for r in first for e in r.body.get("batch", []))
    return ids, len(requests) - len(first)


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def run_slow_redis(code: Path, calls: int) -> dict[str, Any]:
    """Durable calls through a Redis that answers 10% of replies 30 ms late."""
    from celery import Celery

    import segment_mw
    import segment_mw.celery
    from segment_mw import metrics
    from segment_mw.client import reset_client

    sink_mod, proxy_mod = _load("sink"), _load("slow_redis")
    prefix, queue = f"bench-dup-{uuid.uuid4().hex[:8]}", f"bench-dup-{uuid.uuid4().hex[:8]}"
    port = int(REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    db = int(REDIS_URL.rsplit("/", 1)[1])
    with (
        sink_mod.running_sink() as sink,
        proxy_mod.slow_redis(port=port, late=0.10, delay=0.03, seed=15) as proxy,
    ):
        dest = {"hook": {"type": "http", "url": f"{sink.url}/hook"}}
        worker_settings = {"QUEUE_URL": REDIS_URL, "QUEUE_PREFIX": prefix, "DESTINATIONS": dest}
        app = Celery("bench-dup", broker=BROKER, set_as_current=False)
        app.conf.task_default_queue = queue
        segment_mw.configure(
            {**worker_settings, "QUEUE_URL": proxy.url(db), "ENQUEUE_TIMEOUT": 0.01}
        )
        segment_mw.celery.install(app, watchdog=False)
        workers = Workers(code, worker_settings, queue, 1)
        try:
            started = time.perf_counter()
            ids = [segment_mw.track("Charged", {"n": n}, user_id="u") for n in range(calls)]
            elapsed = time.perf_counter() - started
            complete = _wait(lambda: set(_counts(sink)[0]) >= set(ids), 120.0)
            time.sleep(1.0)  # anything sent twice arrives by now
        finally:
            workers.stop()
            segment_mw.celery.uninstall()
            reset_client()
        counts, retried = _counts(sink)
    _cleanup(prefix, queue)
    return {
        "calls": calls,
        "late replies": proxy.delayed,
        "writes timed out": metrics.counts().get("spilled", 0),
        "sent twice": sum(1 for i in ids if counts[i] > 1),
        "lost": sum(1 for i in ids if not counts[i]) if complete else "timed out",
        "retried": retried,
        "µs per call (via proxy)": round(elapsed / calls * 1e6, 1),
    }


def run_slow_destination(code: Path, events: int, claim_idle: float) -> dict[str, Any]:
    """Two workers, a destination answering each batch in 0.6 x CLAIM_IDLE."""
    from celery import Celery

    import segment_mw
    import segment_mw.celery
    from segment_mw.client import reset_client

    sink_mod = _load("sink")
    prefix, queue = f"bench-dup-{uuid.uuid4().hex[:8]}", f"bench-dup-{uuid.uuid4().hex[:8]}"
    with sink_mod.running_sink() as sink:
        sink.delay = 0.6 * claim_idle
        settings = {
            "QUEUE_URL": REDIS_URL,
            "QUEUE_PREFIX": prefix,
            "CLAIM_IDLE": claim_idle,
            "BATCH_MAX_EVENTS": 100,
            # The longest timeout CLAIM_IDLE allows now (CLAIM_IDLE / 1.5).
            "DESTINATIONS": {
                "hook": {"type": "http", "url": f"{sink.url}/hook", "timeout": claim_idle / 1.5}
            },
        }
        app = Celery("bench-dup", broker=BROKER, set_as_current=False)
        app.conf.task_default_queue = queue
        segment_mw.configure(settings)
        segment_mw.celery.install(app, watchdog=False)
        workers = Workers(code, settings, queue, 2)
        try:
            started = time.perf_counter()
            ids = [segment_mw.track("Slow", {"n": n}, user_id="u") for n in range(events)]
            client = segment_mw.get_client()
            complete = _wait(
                lambda: (
                    set(_counts(sink)[0]) >= set(ids)
                    and not client.status().destinations["hook"].queued
                ),
                300.0,
            )
            elapsed = time.perf_counter() - started
        finally:
            workers.stop()
            segment_mw.celery.uninstall()
            reset_client()
        counts, retried = _counts(sink)
    _cleanup(prefix, queue)
    return {
        "events": events,
        "CLAIM_IDLE s": claim_idle,
        "answer s": round(0.6 * claim_idle, 2),
        "sent twice": sum(1 for i in ids if counts[i] > 1),
        "lost": sum(1 for i in ids if not counts[i]) if complete else "timed out",
        "retried": retried,
        "seconds": round(elapsed, 1),
    }


def _cleanup(prefix: str, queue: str) -> None:
    delete_prefix(prefix)
    import redis

    broker = redis.Redis.from_url(BROKER)
    keys = list(broker.scan_iter(f"*{queue}*", count=1000))
    if keys:
        broker.delete(*keys)


def child(args: argparse.Namespace) -> None:
    code = Path(args.code).resolve()
    import segment_mw

    result: dict[str, Any] = {"segment_mw": os.path.dirname(segment_mw.__file__)}
    if args.scenario == "redis":
        result.update(run_slow_redis(code, args.durable))
    else:
        result.update(run_slow_destination(code, args.events, args.claim_idle))
    print(json.dumps(result))


def run(code: Path, scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    path = os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            "--code",
            str(code),
            "--scenario",
            scenario,
            "--durable",
            str(args.durable),
            "--events",
            str(args.events),
            "--claim-idle",
            str(args.claim_idle),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        sys.exit(f"{scenario} on {code} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--durable", type=int, default=5000, help="durable calls (slow Redis)")
    parser.add_argument("--events", type=int, default=2000, help="events (slow destination)")
    parser.add_argument("--claim-idle", type=float, default=4.0)
    parser.add_argument("--baseline", help="another checkout, measured the same way")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--code", default=str(ROOT), help=argparse.SUPPRESS)
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    redis_client()
    print(environment())
    checkouts = [("this checkout", ROOT)]
    if args.baseline:
        checkouts.insert(0, ("baseline", Path(args.baseline).resolve()))
    for scenario, title in (
        ("redis", "Redis answering 10% of replies 30 ms late (durable calls, one worker)"),
        ("destination", "A destination answering in 0.6 x CLAIM_IDLE (two workers)"),
    ):
        results = [(label, run(code, scenario, args)) for label, code in checkouts]
        keys = [k for k in results[0][1] if k != "segment_mw"]
        print(f"\n{title}\n")
        print(table(["", *keys], [[label, *(r[k] for k in keys)] for label, r in results]))
        for label, r in results:
            print(f"  {label}: {r['segment_mw']}")


if __name__ == "__main__":
    main()
