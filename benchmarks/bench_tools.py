"""The analytics tools' destinations: what mapping Segment messages onto each API costs.

Each destination is handed the stored bytes of realistic ``Order Completed`` events (a
request's full context, three products) in batches as the worker hands them over, and
sends them to a local sink in another process. Measured: this process's CPU time per
event (parsing, mapping, serialising, gzip where the tool takes it, the HTTP client),
beside two baselines measured in the same run: the ``http`` destination, which joins the
stored bytes without parsing them (the floor for any delivery), and ``orjson.loads`` of
every message (the parse alone). GA4 takes one client's events per request, so its cost
is shown for a user per event (a request each: the HTTP round trip dominates) and for 25
events of one user in a row. Figures, not assertions.

    .venv/bin/python benchmarks/bench_tools.py [--events 20000] [--runs 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import orjson
from _common import environment, median, running_sink, table

from segment_mw import events
from segment_mw.config import load_settings
from segment_mw.destinations import Destination, make_destination
from tests.destinations.tools import CONTEXT  # the request context the tools' tests use

ORDER = {
    "order_id": "o-1",
    "total": 27.5,
    "currency": "EUR",
    "coupon": "WINTER",
    "products": [
        {"product_id": f"p-{n}", "name": "Sock", "price": 12.5, "quantity": 2, "brand": "Acme"}
        for n in range(3)
    ],
}


def stored(n: int, per_user: int = 1) -> list[bytes]:
    """``n`` events, ``per_user`` in a row from each user (and browser)."""
    when = dt.datetime.now(dt.timezone.utc)
    out = []
    for i in range(n):
        user = i // per_user
        context = {**CONTEXT, "googleAnalytics": {"clientId": f"{user}.1700000000"}}
        out.append(
            events.build(
                "track",
                events.track_fields("Order Completed", ORDER),
                user_id=f"user-{user}",
                anonymous_id=f"anon-{user}",
                context=context,
                timestamp=when,
            ).body
        )
    return out


def destination(kind: str, url: str) -> Destination:
    credentials = {
        "ga4": {"measurement_id": "G-BENCH1234", "api_secret": "s"},
        "mixpanel": {"token": "t"},
        "amplitude": {"api_key": "k"},
        "posthog": {"api_key": "k"},
        "http": {"url": f"{url}/hook"},
    }[kind]
    where = {} if kind == "http" else {"host": url}
    settings = load_settings(
        {"QUEUE_URL": "memory://", "DESTINATIONS": {kind: {"type": kind, **where, **credentials}}},
        environ={},
    )
    return make_destination(settings.destinations[0])


def run(kind: str, bodies: list[bytes], url: str) -> float:
    dest = destination(kind, url)
    size = min(dest.max_events or 500, 500)
    started = time.process_time()
    for at in range(0, len(bodies), size):
        outcome = dest.send(bodies[at : at + size])
        if not outcome.ok or outcome.refused or outcome.pending:
            raise SystemExit(f"{kind}: {outcome}")
    spent = time.process_time() - started
    dest.close()
    return spent / len(bodies) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    bodies = stored(args.events)
    print(environment())
    print(f"{args.events} events of {len(bodies[0])} bytes each, median of {args.runs} runs")
    rows = []
    with running_sink() as sink:
        parse = []
        for _ in range(args.runs):
            started = time.process_time()
            for body in bodies:
                orjson.loads(body)
            parse.append((time.process_time() - started) / len(bodies) * 1e6)
        rows.append(("orjson.loads alone (floor)", median(parse), 1e6 / median(parse)))
        for kind in ("http", "ga4", "mixpanel", "amplitude", "posthog"):
            cost = median([run(kind, bodies, sink.url) for _ in range(args.runs)])
            label = {"http": "http (joined bytes, baseline)", "ga4": "ga4, a user per event"}
            rows.append((label.get(kind, kind), cost, 1e6 / cost))
        # GA4 takes one client's events per request: 25 of a user's in a row fill one.
        grouped = stored(args.events, per_user=25)
        cost = median([run("ga4", grouped, sink.url) for _ in range(args.runs)])
        rows.insert(3, ("ga4, 25 events a user", cost, 1e6 / cost))
    print(table(["destination", "CPU µs/event", "events/CPU-s"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
