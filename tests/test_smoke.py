from __future__ import annotations

import json
from decimal import Decimal

import segment_mw


def test_track_reaches_jsonl_and_http_sink_through_redis(configure, redis_settings, sink, tmp_path):
    path = tmp_path / "out.jsonl"
    configure(
        **redis_settings,
        DESTINATIONS={
            "file": {"type": "jsonl", "path": str(path)},
            "hook": {"type": "http", "url": f"{sink.url}/hook"},
        },
    )
    mid = segment_mw.track("Order Completed", {"revenue": Decimal("19.99")}, user_id="u1")
    assert segment_mw.flush(10)
    line = path.read_bytes().splitlines()[0]
    assert json.loads(line)["messageId"] == mid
    assert b'"revenue":19.99' in line
    assert [e["messageId"] for e in sink.events] == [mid]
