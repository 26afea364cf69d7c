"""Batches under Segment's limits (SPEC §5), and the request the HTTP destinations send."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import math
from collections.abc import Callable
from typing import Any

import pytest

import segment_mw
from segment_mw.client import Client
from segment_mw.delivery import _same_attempts, batches
from segment_mw.destinations.http import HttpBatchDestination, SegmentDestination
from segment_mw.queue import Record, Records
from segment_mw.testing import CapturedEvents

from .sink import Received, Sink

MAX_EVENTS = 2500
MAX_BYTES = 475_000


def records(sizes: list[int]) -> Records:
    return Records.of(
        Record(id=str(i), body=b"x" * size, integrations=None, only=None, enqueued_at=0.0)
        for i, size in enumerate(sizes)
    )


def framed(batch: Records, overhead: int) -> int:
    return overhead + sum(len(r.body) + 1 for r in batch)


# -- delivery.batches ---------------------------------------------------------------------


def test_batches_respect_the_event_limit() -> None:
    out = list(batches(records([100] * 6000), MAX_EVENTS, MAX_BYTES, 64))
    assert [len(b) for b in out] == [2500, 2500, 1000]
    assert [r.id for b in out for r in b] == [str(i) for i in range(6000)]


def test_batches_respect_the_byte_limit() -> None:
    out = list(batches(records([1000] * 1200), MAX_EVENTS, MAX_BYTES, 64))
    per_batch = (MAX_BYTES - 64) // 1001
    assert [len(b) for b in out] == [per_batch, per_batch, 1200 - 2 * per_batch]
    assert all(framed(b, 64) <= MAX_BYTES for b in out)


def test_batches_fill_up_to_exactly_the_limit() -> None:
    # Two records that fit exactly, then one byte too many starts a new batch.
    exact = (1000 - 10) // 2 - 1
    assert [len(b) for b in batches(records([exact, exact]), 10, 1000, 10)] == [2]
    assert [len(b) for b in batches(records([exact, exact + 1]), 10, 1000, 10)] == [1, 1]


def test_an_oversized_record_travels_alone() -> None:
    out = list(batches(records([10, 5000, 10]), 10, 1000, 10))
    assert [[len(r.body) for r in b] for b in out] == [[10], [5000], [10]]


def test_empty_input_makes_no_batch() -> None:
    assert list(batches(Records([], []), MAX_EVENTS, MAX_BYTES, 64)) == []


def test_records_tried_a_different_number_of_times_are_never_batched_together() -> None:
    tries = [1, 1, 0, 0, 0, 1, 2, 2]
    rows = Records.of(
        Record(str(i), b"x", None, None, None, attempts) for i, attempts in enumerate(tries)
    )
    runs = list(_same_attempts(rows))
    assert [r.attempts for r in runs] == [[1, 1], [0, 0, 0], [1], [2, 2]]
    assert [rid for run in runs for rid in run.ids] == rows.ids
    same = Records.of(Record(str(i), b"x", None, None, None, 3) for i in range(4))
    assert [list(r) for r in _same_attempts(same)] == [list(same)]
    assert list(_same_attempts(Records([], []))) == []


def greedy(sizes: list[int], max_events: int, max_bytes: int, overhead: int) -> list[int]:
    """The rule stated plainly: add records while both limits hold; lengths of the batches."""
    out: list[int] = []
    count, size = 0, overhead
    for n in sizes:
        if count and (count >= max_events or size + n + 1 > max_bytes):
            out.append(count)
            count, size = 0, overhead
        count, size = count + 1, size + n + 1
    return [*out, count] if count else out


@pytest.mark.parametrize("seed", range(20))
def test_batches_cut_where_the_plain_rule_cuts(seed: int) -> None:
    import random

    rng = random.Random(seed)
    sizes = [rng.choice([rng.randint(1, 400), rng.randint(400, 3000)]) for _ in range(3000)]
    max_events, max_bytes = rng.randint(1, 300), rng.randint(1024, 60_000)
    out = list(batches(records(sizes), max_events, max_bytes, 64))
    assert [len(b) for b in out] == greedy(sizes, max_events, max_bytes, 64)
    assert [r.id for b in out for r in b] == [str(i) for i in range(len(sizes))]


@pytest.mark.parametrize(
    "dest",
    [
        HttpBatchDestination("hook", {"url": "http://127.0.0.1:1/x"}),
        SegmentDestination("Segment", {"write_key": "k" * 200, "host": "http://127.0.0.1:1"}),
    ],
    ids=["http", "segment"],
)
def test_overhead_covers_the_real_request_framing(dest: HttpBatchDestination) -> None:
    bodies = [b'{"a":1}', b'{"b":2}', b'{"c":3}']
    body = dest.body(bodies)
    assert len(body) <= dest.overhead + sum(len(b) + 1 for b in bodies)
    parsed = json.loads(body)
    assert parsed["batch"] == [{"a": 1}, {"b": 2}, {"c": 3}]
    assert "sentAt" in parsed


# -- bursts through the queue to the sink ---------------------------------------------------


def check_requests(requests: list[Received], max_events: int, max_bytes: int) -> None:
    for request in requests:
        assert len(request.raw) <= max_bytes, len(request.raw)
        assert len(request.body["batch"]) <= max_events
        assert request.raw.startswith(b'{"batch":[')


def test_a_burst_of_small_events_respects_the_limits(
    configure: Callable[..., Client],
    redis_settings: dict[str, Any],
    sink: Sink,
    segment_events: CapturedEvents,
) -> None:
    configure(
        **redis_settings,
        ENQUEUE_TIMEOUT=5.0,  # no spill: the order of arrival is asserted
        DESTINATIONS={"hook": {"type": "http", "url": f"{sink.url}/hook"}},
    )
    for i in range(6000):
        segment_mw.track("Item Viewed", {"n": i}, user_id="u1")
    assert segment_mw.flush(30)

    check_requests(sink.requests, MAX_EVENTS, MAX_BYTES)
    ids = [m["messageId"] for m in sink.events]
    assert ids == [m["messageId"] for m in segment_events]  # all, once, in order
    assert len(ids) == 6000
    # As few requests as the limits allow, give or take one partial request per read.
    total = sum(len(e.body) + 1 for e in segment_events.entries)
    fewest = max(math.ceil(6000 / MAX_EVENTS), math.ceil(total / MAX_BYTES))
    assert fewest <= len(sink.requests) <= fewest + math.ceil(6000 / MAX_EVENTS)


def test_the_event_limit_binds_when_events_are_small_enough(
    configure: Callable[..., Client], sink: Sink
) -> None:
    configure(
        IN_PROCESS_FLUSHER=False,
        BATCH_MAX_EVENTS=1000,
        DESTINATIONS={"hook": {"type": "http", "url": f"{sink.url}/hook"}},
    )
    for i in range(6000):
        segment_mw.track("Item Viewed", {"n": i}, user_id="u1")
    assert segment_mw.flush(30)
    assert [len(r.body["batch"]) for r in sink.requests] == [1000] * 6
    check_requests(sink.requests, 1000, MAX_BYTES)


@pytest.mark.parametrize("max_bytes", [MAX_BYTES, 100_000])
def test_a_burst_of_30_kb_events_respects_the_byte_limit(
    configure: Callable[..., Client],
    redis_settings: dict[str, Any],
    sink: Sink,
    segment_events: CapturedEvents,
    max_bytes: int,
) -> None:
    configure(
        **redis_settings,
        ENQUEUE_TIMEOUT=5.0,  # no spill: the order of arrival is asserted
        BATCH_MAX_BYTES=max_bytes,
        DESTINATIONS={"Segment": {"type": "segment", "write_key": "wk", "host": sink.url}},
    )
    for i in range(40):
        segment_mw.track("Report Exported", {"n": i, "blob": "r" * 30_000}, user_id="u1")
    sizes = {len(e.body) for e in segment_events.entries}
    assert all(30_000 < size <= 32 * 1024 for size in sizes)
    assert segment_mw.flush(30)

    check_requests(sink.requests, MAX_EVENTS, max_bytes)
    assert [m["messageId"] for m in sink.events] == [m["messageId"] for m in segment_events]
    per_request = (max_bytes - 100) // (max(sizes) + 1)
    assert len(sink.requests) == math.ceil(40 / per_request)


# -- the request itself -------------------------------------------------------------------


def test_segment_request_headers_and_body(
    configure: Callable[..., Client],
    redis_settings: dict[str, Any],
    sink: Sink,
    segment_events: CapturedEvents,
) -> None:
    configure(
        **redis_settings,
        ENQUEUE_TIMEOUT=5.0,  # no spill: the order of arrival is asserted
        DESTINATIONS={"Segment": {"type": "segment", "write_key": "wk_123", "host": sink.url}},
    )
    segment_mw.track("Signed Up", user_id="u1")
    segment_mw.identify("u1", {"plan": "pro"})
    assert segment_mw.flush(10)

    (request,) = sink.requests
    assert request.path == "/v1/batch"
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert headers["authorization"] == "Basic " + base64.b64encode(b"wk_123:").decode()
    user, _, password = base64.b64decode(headers["authorization"].split()[1]).partition(b":")
    assert (user, password) == (b"wk_123", b"")
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == f"segment_mw/{segment_mw.__version__}"
    assert "content-encoding" not in headers
    assert "x-retry-count" not in headers  # a first attempt

    body = json.loads(request.raw)
    assert set(body) == {"batch", "sentAt", "writeKey"}
    assert body["writeKey"] == "wk_123"
    assert body["batch"] == list(segment_events)
    # sentAt is stamped when the request leaves, so after every event happened.
    sent_at = dt.datetime.fromisoformat(body["sentAt"])
    assert sent_at.utcoffset() == dt.timedelta(0)
    assert body["sentAt"].endswith("+00:00")
    assert all(sent_at >= dt.datetime.fromisoformat(m["timestamp"]) for m in body["batch"])
    # The stored bytes are joined as they are, not parsed and re-serialised.
    joined = b",".join(e.body for e in segment_events.entries)
    assert request.raw.startswith(b'{"batch":[' + joined + b'],"sentAt":"')


def test_http_destination_sends_the_same_body_without_a_write_key(
    configure: Callable[..., Client], sink: Sink
) -> None:
    configure(
        IN_PROCESS_FLUSHER=False,
        DESTINATIONS={
            "hook": {
                "type": "http",
                "url": f"{sink.url}/in?source=app",
                "headers": {"Authorization": "Bearer t0k", "X-Extra": "1"},
            }
        },
    )
    segment_mw.track("Signed Up", user_id="u1")
    assert segment_mw.flush(10)
    (request,) = sink.requests
    assert request.path == "/in?source=app"
    assert request.headers["Authorization"] == "Bearer t0k"
    assert request.headers["X-Extra"] == "1"
    assert request.headers["User-Agent"] == f"segment_mw/{segment_mw.__version__}"
    assert set(request.body) == {"batch", "sentAt"}


def test_gzip_option(
    configure: Callable[..., Client], sink: Sink, segment_events: CapturedEvents
) -> None:
    configure(
        IN_PROCESS_FLUSHER=False,
        DESTINATIONS={
            "Segment": {"type": "segment", "write_key": "wk", "host": sink.url, "gzip": True}
        },
    )
    for i in range(50):
        segment_mw.track("Item Viewed", {"n": i, "text": "same words " * 20}, user_id="u1")
    assert segment_mw.flush(10)
    (request,) = sink.requests
    assert request.headers["Content-Encoding"] == "gzip"
    plain = gzip.decompress(request.raw)
    assert len(request.raw) < len(plain)
    body = json.loads(plain)
    assert body["batch"] == list(segment_events)
    assert body["writeKey"] == "wk"
    joined = b",".join(e.body for e in segment_events.entries)
    assert plain.startswith(b'{"batch":[' + joined + b'],"sentAt":"')
