"""segment_mw end to end, with no external server: ``make demo``.

A local Segment-compatible collector stands in for api.segment.io; the embedded SQLite
queue (the default when no QUEUE_URL is set) and the in-process flusher stand in for
Redis and Celery. The example shops — Starlette and Django — are visited by a new
visitor from a campaign link, a returning analytics.js visitor, a crawler, an XHR and a
visitor with Global Privacy Control; a checkout charges a card. Then we show what reached
the collector, the rows the Starlette shop's events made in a PostgreSQL warehouse (when
one is reachable: 127.0.0.1:5432, or ``SEGMENT_MW_DEMO_PG_DSN``), and what
``segment-mw status`` says.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import socket
import sys
import tempfile
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE / "django_shop")]

BROWSER = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
)
NAVIGATE = {
    "user-agent": BROWSER,
    "sec-fetch-mode": "navigate",
    "sec-fetch-dest": "document",
    "accept-language": "de-DE,de;q=0.9,en;q=0.8",
}


class Collector:
    """A Segment-compatible ``POST /v1/batch`` endpoint on 127.0.0.1."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.requests = 0
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                collector.events.extend(json.loads(raw)["batch"])
                collector.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


def visit_starlette() -> None:
    # Starlette prefers httpx2 for its test client now; httpx still works.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

    from example_projects.starlette_shop import build_app

    client = TestClient(build_app(), base_url="https://shop.example", client=("203.0.113.7", 51234))
    # A new visitor from a newsletter link: gets a pageview and an ajs_anonymous_id cookie.
    client.get("/?utm_source=newsletter&utm_campaign=winter%20sale&token=s3cret", headers=NAVIGATE)
    client.get("/products/1", headers={**NAVIGATE, "referer": "https://shop.example/"})
    client.post("/checkout", json={"product": 1}, headers={"user-agent": BROWSER})
    # Not pageviews: a crawler, an XHR, a JSON API, a visitor with Global Privacy Control.
    client.get("/", headers={"user-agent": "Mozilla/5.0 (compatible; Googlebot/2.1)"})
    client.get("/", headers={"user-agent": BROWSER, "sec-fetch-mode": "cors"})
    client.get("/api/cart", headers=NAVIGATE)
    TestClient(build_app()).get("/", headers={**NAVIGATE, "sec-gpc": "1"})


def visit_django() -> None:
    import django
    from django.core.management import call_command
    from django.test import Client

    django.setup()
    call_command("migrate", verbosity=0)
    client = Client(HTTP_HOST="shop.example", REMOTE_ADDR="198.51.100.23", headers=NAVIGATE)
    # A returning analytics.js visitor: the classic cookie format, joined as-is.
    client.cookies["ajs_anonymous_id"] = "%22a1b2c3d4-returning-visitor%22"
    client.get("/products/2/?utm_source=ads&utm_medium=cpc")
    client.post("/checkout/", {"product": "2"})

    from shop.tasks import renew_subscription

    # A nightly billing job: no request, no browser; the user comes from the argument.
    renew_subscription.delay(42, "pro", "9.90")


DEMO_SCHEMA = "segment_mw_demo"  # made afresh by each run, left for you to query
DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def warehouse_dsn() -> tuple[str | None, str]:
    """A PostgreSQL the demo can write its warehouse into, or None and why not."""
    hint = "set SEGMENT_MW_DEMO_PG_DSN=postgresql://user:password@host:5432/dbname to use one"
    dsn = os.environ.get("SEGMENT_MW_DEMO_PG_DSN")
    if not dsn:
        try:
            socket.create_connection(("127.0.0.1", 5432), timeout=0.5).close()
        except OSError:
            return None, f"no PostgreSQL on 127.0.0.1:5432; {hint}"
        dsn = DEFAULT_PG_DSN
    try:
        import psycopg
        from psycopg import sql
    except ImportError:
        return None, "psycopg is not installed: pip install 'segment-mw[postgres]'"
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
            drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(DEMO_SCHEMA))
            conn.execute(drop)
    except psycopg.Error as exc:
        from segment_mw.destinations.postgres import describe_dsn

        return None, f"no connection to {describe_dsn(dsn)} ({type(exc).__name__}); {hint}"
    return dsn, ""


def show_warehouse(dsn: str) -> None:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    from segment_mw.destinations.postgres import describe_dsn

    print(f"\nThe warehouse (PostgreSQL at {describe_dsn(dsn)}, schema {DEMO_SCHEMA}):")
    with psycopg.connect(dsn) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s"
            " ORDER BY table_name",
            [DEMO_SCHEMA],
        ).fetchall()
        for (table,) in tables:
            (rows,) = conn.execute(f"SELECT count(*) FROM {DEMO_SCHEMA}.{table}").fetchone() or (0,)
            print(f"  {DEMO_SCHEMA}.{table}: {rows} row(s)")
        queries = [
            f"SELECT name, path, context_campaign_source AS campaign, context_locale AS locale"
            f" FROM {DEMO_SCHEMA}.pages ORDER BY timestamp",
            f"SELECT event_text, revenue, currency, context_ip FROM {DEMO_SCHEMA}.order_completed",
        ]
        for query in queries:
            print(f"\n  => {query};")
            cur = conn.execute(query)
            names = [d.name for d in cur.description or ()]
            print("  " + " | ".join(names))
            for row in cur.fetchall():
                print("  " + " | ".join("" if v is None else str(v) for v in row))
    params = conninfo_to_dict(dsn)
    where = " ".join(
        f"-{flag} {params[key]}"
        for flag, key in (("h", "host"), ("p", "port"), ("U", "user"), ("d", "dbname"))
        if params.get(key)
    )
    print(f"\n  Query them yourself: psql {where} -c 'SELECT * FROM {DEMO_SCHEMA}.tracks'")


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="segment_mw-demo-"))
    os.environ["XDG_STATE_HOME"] = str(workdir)  # the embedded queue lives here
    os.environ["SHOP_DB"] = str(workdir / "shop.sqlite3")
    os.environ["SHOP_EVENTS_FILE"] = str(workdir / "django-events.jsonl")
    os.environ["DJANGO_SETTINGS_MODULE"] = "django_shop.settings"
    os.environ["CELERY_TASK_ALWAYS_EAGER"] = "1"  # no broker here: tasks run inline
    collector = Collector()

    import segment_mw
    from segment_mw.cli import main as cli

    settings: dict[str, Any] = {
        "DESTINATIONS": {
            "Segment": {"type": "segment", "write_key": "demo-write-key", "host": collector.url},
            "archive": {"type": "jsonl", "path": str(workdir / "events.jsonl")},
        },
        "INTEGRATIONS": {"Facebook Pixel": False},
    }
    dsn, why_not = warehouse_dsn()
    if dsn is not None:
        settings["DESTINATIONS"]["warehouse"] = {
            "type": "postgres",
            "dsn": dsn,
            "schema": DEMO_SCHEMA,
        }
    segment_mw.configure(settings)
    print(f"embedded queue and files in {workdir}\n")
    visit_starlette()
    segment_mw.flush(timeout=10)
    starlette_status = io.StringIO()
    cli(["status"], client=segment_mw.get_client(), stdout=starlette_status)

    # The Django shop gets a queue of its own; its app config re-configures segment_mw.
    os.environ["SEGMENT_MW_QUEUE_URL"] = f"sqlite:///{workdir / 'django-queue.sqlite3'}"
    visit_django()
    segment_mw.flush(timeout=10)

    print(
        f"The collector received {len(collector.events)} events in {collector.requests} "
        "request(s) from the Starlette shop:"
    )
    collector.events.sort(key=lambda e: e["timestamp"])
    for event in collector.events:
        ctx = event["context"]
        what = event.get("event") or event.get("name") or ""
        extra = ""
        if event["type"] == "page":
            extra = f"url={ctx['page']['url']} title={ctx['page']['title']!r}"
        if event["type"] == "track":
            extra = f"revenue={event['properties']['revenue']} {event['properties']['currency']}"
        print(
            f"  {event['type']:<6} {what:<20} anon={event.get('anonymousId', '')[:8]}… "
            f"ip={ctx.get('ip')} locale={ctx.get('locale')} "
            f"campaign={ctx.get('campaign', {})} {extra}"
        )
    lines = Path(os.environ["SHOP_EVENTS_FILE"]).read_text().splitlines()
    print(f"\nThe Django shop's archive destination holds {len(lines)} events:")
    for line in lines:
        event = json.loads(line)
        print(
            f"  {event['type']:<6} {event.get('event') or event.get('name') or '':<20} "
            f"user={event.get('userId')} anon={event.get('anonymousId')} "
            f"campaign={event['context'].get('campaign')}"
        )
    print("\n(The crawler, the XHR, the JSON API call and the GPC visitor made no events.)")
    if dsn is not None:
        show_warehouse(dsn)
    else:
        print(f"\nWarehouse skipped: {why_not}.")
    print("\n$ segment-mw status   # the Starlette shop's queue, after delivery")
    print(starlette_status.getvalue(), end="")
    print("\n$ python manage.py segment_mw status   # the Django shop's queue")
    return cli(["status"], client=segment_mw.get_client())


if __name__ == "__main__":
    raise SystemExit(main())
