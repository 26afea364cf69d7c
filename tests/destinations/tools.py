"""Helpers for the analytics tools' tests: messages as segment_mw stores them, and
destinations pointed at a local sink."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from typing import Any

from segment_mw import events
from segment_mw.config import load_settings
from segment_mw.destinations import Destination, Outcome, make_destination

from ..sink import Received

CONTEXT = {
    "ip": "203.0.113.7",
    "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0",
    "locale": "en-GB",
    "page": {
        "path": "/checkout",
        "referrer": "https://search.example/?q=shoes",
        "search": "",
        "title": "Checkout",
        "url": "https://shop.example/checkout",
    },
    "campaign": {"name": "winter", "source": "newsletter", "medium": "email"},
}
WHEN = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.timezone.utc)


def stored(type_: str, fields: dict[str, Any], **kwargs: Any) -> bytes:
    """The bytes segment_mw queues for a message (what a destination's send() is handed)."""
    kwargs.setdefault("context", CONTEXT)
    return events.build(type_, fields, **kwargs).body


def track(event: str, properties: dict[str, Any] | None = None, **kwargs: Any) -> bytes:
    return stored("track", events.track_fields(event, properties or {}), **kwargs)


def make(kind: str, host: str, **options: Any) -> Destination:
    settings = load_settings(
        {"QUEUE_URL": "memory://", "DESTINATIONS": {kind: {"type": kind, "host": host, **options}}},
        environ={},
    )
    return make_destination(settings.destinations[0])


def send_one_request(kind: str, sink: Any, bodies: list[bytes], **options: Any) -> Received:
    """Send ``bodies`` through our ``kind`` destination to ``sink``; the one request it made."""
    dest = make(kind, sink.url, **options)
    try:
        assert dest.send(bodies) == Outcome.partial({})
    finally:
        dest.close()
    (request,) = sink.requests
    return request  # type: ignore[no-any-return]


def body(request: Received) -> Any:
    """A request's JSON body, gunzipped (or a form's ``data`` field, as Mixpanel's SDK posts)."""
    raw = request.raw
    if request.headers.get("Content-Encoding") == "gzip":
        raw = gzip.decompress(raw)
    if request.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
        from urllib.parse import parse_qs

        return json.loads(parse_qs(raw.decode())["data"][0])
    return json.loads(raw)
