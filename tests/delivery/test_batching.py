"""Large bursts through the Celery path: request limits, gzip, and the Tracking API's shape."""

from __future__ import annotations

import base64
import datetime as dt
import gzip

import orjson

import segment_mw
from segment_mw.events import Entry

from .conftest import message_ids, wait_until

WRITE_KEY = "wk_burst_123"
MAX_EVENTS = 2500
MAX_BYTES = 475_000


def compact_entry(n: int) -> Entry:
    """A message as small as the spec allows, so 2,500 of them fit under the byte limit."""
    mid = f"c{n:05d}"
    body = orjson.dumps({"type": "track", "event": "E", "userId": "u", "messageId": mid})
    return Entry(body=body, integrations=None, message_id=mid, type="track")


def test_burst_is_split_by_count_and_bytes_gzip_and_segment_shape(setup, sink, worker):
    client = setup(
        DESTINATIONS={
            "Segment": {"type": "segment", "write_key": WRITE_KEY, "host": sink.url, "gzip": True},
            "hook": {"type": "http", "url": f"{sink.url}/hook"},
        }
    )
    # Queue the whole burst before any worker runs, as after a worker outage.
    expected = []
    for n in range(6000):
        entry = compact_entry(n)
        client.emit(entry, durable=False)
        expected.append(entry.message_id)
    padding = "x" * 800
    for n in range(1000):
        expected.append(segment_mw.track("Big", {"n": n, "pad": padding}, user_id=f"user-{n}"))
    assert client.producer.drain(10.0)

    with worker():
        wait_until(
            lambda: (
                len(message_ids(sink, "/v1/batch")) >= len(expected)
                and len(message_ids(sink, "/hook")) >= len(expected)
            ),
            30.0,
            "the burst to reach both destinations",
        )

    for path in ("/v1/batch", "/hook"):
        assert sorted(message_ids(sink, path)) == sorted(expected), path
        requests = [r for r in sink.requests if r.path == path]
        sizes = []
        for request in requests:
            data = gzip.decompress(request.raw) if path == "/v1/batch" else request.raw
            assert len(request.body["batch"]) <= MAX_EVENTS
            assert len(data) < MAX_BYTES, (path, len(data))
            sizes.append((len(request.body["batch"]), len(data)))
        # Both limits were reached: full-count requests of compact messages, and
        # requests of big messages that stopped short of the byte limit.
        assert any(count == MAX_EVENTS for count, _ in sizes), sizes
        assert any(count < MAX_EVENTS and size > MAX_BYTES - 2000 for count, size in sizes), sizes

    # The Segment destination speaks the HTTP Tracking API (SPEC §5).
    token = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    for request in (r for r in sink.requests if r.path == "/v1/batch"):
        headers = {k.lower(): v for k, v in request.headers.items()}
        assert headers["authorization"] == f"Basic {token}"
        assert headers["content-type"] == "application/json"
        assert headers["content-encoding"] == "gzip"
        assert request.raw[:2] == b"\x1f\x8b"
        assert headers["user-agent"].startswith("segment_mw/")
        assert "x-retry-count" not in headers
        assert set(request.body) == {"batch", "sentAt", "writeKey"}
        assert request.body["writeKey"] == WRITE_KEY
        sent_at = dt.datetime.fromisoformat(request.body["sentAt"])
        assert sent_at.utcoffset() == dt.timedelta(0)
        # sentAt is stamped as the request leaves, so it follows every event's timestamp.
        for event in request.body["batch"]:
            if "timestamp" in event:
                assert dt.datetime.fromisoformat(event["timestamp"]) <= sent_at
    for request in (r for r in sink.requests if r.path == "/hook"):
        headers = {k.lower(): v for k, v in request.headers.items()}
        assert "authorization" not in headers
        assert "content-encoding" not in headers
        assert set(request.body) == {"batch", "sentAt"}

    # Messages reach the wire byte for byte as serialised at emit time.
    big = next(e for e in sink.events if e.get("event") == "Big")
    assert big["properties"]["pad"] == padding
    assert big["channel"] == "server"
    status = client.status()
    assert status.depth == 0
    for name in ("Segment", "hook"):
        assert status.destinations[name].delivered == len(expected)
