"""The example shops through real servers, with and without segment_mw's middleware.

Three servers, each run twice side by side — the same app with the middleware and without
(``SHOP_SEGMENT_MIDDLEWARE=0``) — and loaded in turn by ``wrk`` (alternating which goes
first, medians over the rounds):

- the Django shop (``example_projects/django_shop``) under gunicorn, sync workers;
- the same under gunicorn, gthread workers;
- the Starlette shop (``example_projects/starlette_shop.py``) under uvicorn.

All the while a real Celery worker (``--pool=solo``, the shop's own Celery app for Django,
``tests/celery_app.py`` for Starlette) delivers the pageviews from a private Redis queue to
the local sink, so the worker's CPU competes as it would on a small host. Each request is a
browser navigation (Chrome user agent, ``Sec-Fetch-*``, ``Accept-Language``, UTM query) so
every request with the middleware makes one pageview. Two loads: ``--connections``
concurrent connections (throughput: requests/s and the loss in %), and one connection
(the latency a request gains, p50/p99). A check line compares the events the sink got with
the requests wrk counted.

    .venv/bin/python benchmarks/bench_servers.py [--duration 4] [--rounds 2]
        [--connections 8] [--workers 2] [--servers django-sync,django-gthread,uvicorn]
        [--quick]

Needs ``wrk`` (``apt-get install -y wrk``) and ``redis-server``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    Processes,
    environment,
    exit_on_sigterm,
    free_port,
    median,
    private_redis,
    running_sink,
    session_cpu_seconds,
    table,
    wait_for,
    wait_listening,
)

ROOT = Path(__file__).resolve().parents[1]
DJANGO_DIR = ROOT / "example_projects" / "django_shop"
PATH = "/?utm_source=newsletter&utm_medium=email&utm_campaign=spring"
HEADERS = {
    "User-Agent": (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
    ),
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language": "de-DE,de;q=0.9,en;q=0.8",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Dest": "document",
    "Sec-Fetch-Site": "none",
    "Referer": "https://news.example/spring",
}
SERVERS = ("django-sync", "django-gthread", "uvicorn")


@dataclass
class Load:
    rps: float
    requests: int
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms: float = 0.0  # the server's CPU per request (master and workers)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(port: int, connections: int, duration: int) -> Load:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s"]
    for name, value in HEADERS.items():
        cmd += ["-H", f"{name}: {value}"]
    out = subprocess.run(
        [*cmd, f"http://127.0.0.1:{port}{PATH}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 60,
    ).stdout
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)$", out, re.MULTILINE)
    bad = int(errors.group(1)) if errors else 0
    if socket_errors:
        bad += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    return Load(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        requests=int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        p50_ms=_ms(percentiles["50"]),
        p99_ms=_ms(percentiles["99"]),
        errors=bad,
    )


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGMENT_", "DJANGO_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(DJANGO_DIR)])
    env.update(extra)
    return env


def start(
    procs: Processes, kind: str, workers: int, redis_url: str, sink_url: str
) -> tuple[dict[bool, int], dict[bool, subprocess.Popen[bytes]], subprocess.Popen[bytes]]:
    """The worker delivering, and a server with and one without the middleware."""
    broker = redis_url.rsplit("/", 1)[0] + "/1"
    bin_dir = os.path.dirname(sys.executable)
    ports = {True: free_port(), False: free_port()}
    if kind.startswith("django"):
        common = {
            "DJANGO_SETTINGS_MODULE": "django_shop.settings",
            "SEGMENT_MW_QUEUE_URL": redis_url,
            "CELERY_BROKER_URL": broker,
            "SHOP_WEBHOOK_URL": f"{sink_url}/hook",
            "SHOP_DB": os.devnull,  # no view reads the database
        }
        worker = procs.start(
            [sys.executable, "-m", "celery", "-A", "django_shop", "worker", *_WORKER_ARGS],
            env=_env(**common),
            cwd=str(DJANGO_DIR),
        )
        worker_class = ["--worker-class", "sync"]
        if kind == "django-gthread":
            worker_class = ["--worker-class", "gthread", "--threads", "4"]
        for middleware, port in ports.items():
            procs.start(
                [
                    os.path.join(bin_dir, "gunicorn"),
                    *("--bind", f"127.0.0.1:{port}", "--workers", str(workers)),
                    *worker_class,
                    *("--log-level", "warning", "--chdir", str(DJANGO_DIR)),
                    "django.core.wsgi:get_wsgi_application()",
                ],
                env=_env(**common, SHOP_SEGMENT_MIDDLEWARE="1" if middleware else "0"),
                cwd=str(DJANGO_DIR),
            )
    else:
        queue = "bench-servers"
        common = {
            "SEGMENT_MW_TEST_SETTINGS": json.dumps(
                {
                    "QUEUE_URL": redis_url,
                    "DESTINATIONS": {"webhook": {"type": "http", "url": f"{sink_url}/hook"}},
                }
            ),
            "SEGMENT_MW_TEST_BROKER": broker,
            "SEGMENT_MW_TEST_CELERY_QUEUE": queue,
        }
        worker = procs.start(
            [sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker", *_WORKER_ARGS],
            env=_env(**common),
            cwd=str(ROOT),
        )
        for middleware, port in ports.items():
            procs.start(
                [
                    os.path.join(bin_dir, "uvicorn"),
                    "--factory",
                    "benchmarks._shop_asgi:app",
                    *("--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)),
                    *("--log-level", "warning", "--no-access-log"),
                ],
                env=_env(**common, SHOP_SEGMENT_MIDDLEWARE="1" if middleware else "0"),
                cwd=str(ROOT),
            )
    servers = dict(zip(ports, procs.procs[-2:], strict=True))
    for middleware, port in ports.items():
        wait_listening(port, servers[middleware])
    return ports, servers, worker


_WORKER_ARGS = (
    "--pool=solo",
    "--without-mingle",
    "--without-gossip",
    "--without-heartbeat",
    "--loglevel=WARNING",
)


def measure(kind: str, args: argparse.Namespace) -> dict[str, object]:
    # Entered in this order so that they end the other way round: the servers and the worker
    # first (their exit drains still reach Redis and the sink), Redis last.
    with private_redis("bench-servers") as redis_url, running_sink() as sink, Processes() as procs:
        import redis

        ports, servers, worker = start(procs, kind, args.workers, redis_url, sink.url)

        def run(middleware: bool, connections: int) -> Load:
            before = session_cpu_seconds(servers[middleware].pid)
            load = wrk(ports[middleware], connections, args.duration)
            spent = session_cpu_seconds(servers[middleware].pid) - before
            load.cpu_ms = spent / max(load.requests, 1) * 1e3
            return load

        served = 0  # requests answered by the server with the middleware
        for middleware, port in ports.items():  # warm up: imports, connections, caches
            load = wrk(port, args.connections, 1)
            served += load.requests if middleware else 0
        # The worker is up once the warm-up's pageviews reach the sink.
        if not wait_for(lambda: sink.stats()["events"] > 0, 60.0):
            sys.exit(f"{kind}: no event reached the sink\n" + procs.log_tail(worker))
        delivered_before = sink.stats()["events"]
        worker_before = session_cpu_seconds(worker.pid)
        busy: dict[bool, list[Load]] = {True: [], False: []}
        one: dict[bool, list[Load]] = {True: [], False: []}
        for n in range(args.rounds):
            order = (True, False) if n % 2 == 0 else (False, True)
            for middleware in order:
                load = run(middleware, args.connections)
                busy[middleware].append(load)
                served += load.requests if middleware else 0
            for middleware in order:
                load = run(middleware, 1)
                one[middleware].append(load)
                served += load.requests if middleware else 0
        sent_by_end = sink.stats()["events"]
        wait_for(lambda: sink.stats()["events"] >= served, 60.0)
        time.sleep(0.5)  # anything beyond wrk's count (answered after its clock) lands now
        received = sink.stats()["events"]
        worker_cpu = session_cpu_seconds(worker.pid) - worker_before
        backlog = redis.Redis.from_url(redis_url).xlen("segment_mw:log")
    errors = sum(load.errors for loads in (*busy.values(), *one.values()) for load in loads)

    def med(loads: list[Load], attr: str) -> float:
        return median([getattr(load, attr) for load in loads])

    with_rps, bare_rps = med(busy[True], "rps"), med(busy[False], "rps")
    return {
        "kind": kind,
        "bare rps": bare_rps,
        "with rps": with_rps,
        "loss %": (1 - with_rps / bare_rps) * 100,
        "busy p50": (med(busy[False], "p50_ms"), med(busy[True], "p50_ms")),
        "busy p99": (med(busy[False], "p99_ms"), med(busy[True], "p99_ms")),
        "one p50": (med(one[False], "p50_ms"), med(one[True], "p50_ms")),
        "one p99": (med(one[False], "p99_ms"), med(one[True], "p99_ms")),
        "cpu": (med(busy[False], "cpu_ms"), med(busy[True], "cpu_ms")),
        "worker cpu": worker_cpu / max(received - delivered_before, 1) * 1e3,
        "served": served,
        "received": received,
        "at end": sent_by_end,
        "backlog": backlog,
        "errors": errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.rounds = 2, 1
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    exit_on_sigterm()
    kinds = [k for k in args.servers.split(",") if k]
    unknown = set(kinds) - set(SERVERS)
    if unknown:
        sys.exit(f"unknown servers: {', '.join(sorted(unknown))} (known: {', '.join(SERVERS)})")
    print(environment().rsplit(", redis", 1)[0] + ", a private redis-server")
    print(
        f"{args.workers} worker process(es) per server, {args.rounds} round(s) of "
        f"{args.duration:g}s per load, a Celery worker delivering meanwhile\n"
    )
    results = [measure(kind, args) for kind in kinds]

    def pair(value: object) -> str:
        bare, with_mw = value  # type: ignore[misc]
        return f"{bare:.2f} → {with_mw:.2f} ({with_mw - bare:+.2f})"

    print(f"throughput, {args.connections} connections (requests/s, medians):")
    print(
        table(
            ["server", "bare", "with segment_mw", "loss %", "p50 ms", "p99 ms"],
            [
                [
                    r["kind"],
                    r["bare rps"],
                    r["with rps"],
                    r["loss %"],
                    pair(r["busy p50"]),
                    pair(r["busy p99"]),
                ]
                for r in results
            ],
        )
    )
    print("\nCPU per request (ms; server: master and workers; worker: per event delivered):")
    print(
        table(
            ["server", "server bare → with", "Celery worker"],
            [[r["kind"], pair(r["cpu"]), r["worker cpu"]] for r in results],
        )
    )
    print("\nlatency added, one connection (ms, bare → with segment_mw):")
    print(
        table(
            ["server", "p50 ms", "p99 ms"],
            [[r["kind"], pair(r["one p50"]), pair(r["one p99"])] for r in results],
        )
    )
    ok = True
    print()
    for r in results:
        complete = r["received"] >= r["served"]  # type: ignore[operator]
        ok = ok and complete and not r["errors"]
        print(
            f"check {r['kind']}: {r['received']:,} events at the sink for {r['served']:,} "
            f"requests wrk counted with the middleware ({r['at end']:,} delivered by the "
            f"last wrk run's end; {r['backlog']:,} in the stream); {r['errors']} errors "
            + ("OK" if complete and not r["errors"] else "INCOMPLETE")
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
