"""Conformance: every message type, and a whole /v1/batch body, against Segment's schemas.

The schemas in ``tests/data/schemas`` are generated from Segment's own event types plus a
strict overlay for the documented rules (see /work/shared/schemas/README.md). Validation is
Draft 7 with date-time format checking (rfc3339-validator).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

import segment_mw
from segment_mw.client import Client
from segment_mw.testing import CapturedEvents

from .sink import Sink

SCHEMAS = Path(__file__).parent / "data" / "schemas"
CORE = "CoreSegmentEvent.open.schema.json"
STRICT = "segment-batch-strict.schema.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    core = json.loads((SCHEMAS / CORE).read_text())
    strict = json.loads((SCHEMAS / STRICT).read_text())
    registry: Registry[Any] = Registry().with_resource(
        CORE, Resource.from_contents(core, default_specification=DRAFT7)
    )
    jsonschema.Draft7Validator.check_schema(strict)
    return jsonschema.Draft7Validator(
        strict,
        registry=registry,
        format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER,
    )


def errors(validator: jsonschema.Draft7Validator, body: dict[str, Any]) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]


def emit_all_types() -> None:
    segment_mw.track(
        "Order Completed",
        {"order_id": "o1", "revenue": 19.99, "currency": "USD", "products": [{"sku": "a"}]},
        user_id="u1",
        integrations={"Mixpanel": False, "Amplitude": {"session_id": 123}},
    )
    segment_mw.page("Pricing", {"path": "/pricing", "url": "https://x.example/pricing"})
    segment_mw.page()
    segment_mw.screen("Home", {"tab": "feed"}, category="Main")
    segment_mw.identify("u1", {"email": "ada@example.com", "name": "Ada"})
    segment_mw.group("g1", {"name": "Acme", "employees": 12})
    segment_mw.alias("a1", "u1")


SCOPE = segment_mw.Scope(
    anonymous_id="a1",
    context={
        "ip": "203.0.113.9",
        "userAgent": "Mozilla/5.0",
        "locale": "en-US",
        "page": {
            "path": "/pricing",
            "referrer": "",
            "search": "?utm_source=news",
            "title": "Pricing",
            "url": "https://x.example/pricing?utm_source=news",
        },
        "campaign": {"source": "news"},
    },
)


def test_the_validator_rejects_what_segment_would(validator: jsonschema.Draft7Validator) -> None:
    good = {"type": "track", "event": "E", "userId": "u", "messageId": "m", "timestamp": "now"}
    assert errors(validator, {"batch": [good]})  # not a date-time
    good["timestamp"] = "2024-05-01T12:00:00.000+00:00"
    assert errors(validator, {"batch": [good]}) == []
    assert errors(validator, {"batch": [{**good, "userId": ""}]})
    assert errors(validator, {"batch": [{**good, "event": None}]})
    assert errors(validator, {"batch": [{**good, "type": "group"}]})  # no groupId
    assert errors(validator, {"batch": [{**good, "type": "alias"}]})  # no previousId


def test_every_message_type_validates(
    configure: Callable[..., Client],
    segment_events: CapturedEvents,
    validator: jsonschema.Draft7Validator,
) -> None:
    configure(IN_PROCESS_FLUSHER=False, INTEGRATIONS={"All": True})
    with segment_mw.bound(SCOPE):
        emit_all_types()
    assert {e["type"] for e in segment_events} == {
        "track",
        "page",
        "screen",
        "identify",
        "group",
        "alias",
    }
    for message in segment_events:
        assert errors(validator, {"batch": [message]}) == [], message


def test_a_captured_batch_body_validates(
    configure: Callable[..., Client],
    redis_settings: dict[str, Any],
    sink: Sink,
    segment_events: CapturedEvents,
    validator: jsonschema.Draft7Validator,
) -> None:
    configure(
        **redis_settings,
        ENQUEUE_TIMEOUT=5.0,  # no spill: the order of arrival is asserted
        DESTINATIONS={"Segment": {"type": "segment", "write_key": "wk_schema", "host": sink.url}},
    )
    with segment_mw.bound(SCOPE):
        emit_all_types()
    assert segment_mw.flush(10)
    (request,) = sink.requests
    assert request.path == "/v1/batch"
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"wk_schema:").decode()
    body = json.loads(request.raw)
    assert errors(validator, body) == []
    assert body["writeKey"] == "wk_schema"
    assert [m["messageId"] for m in body["batch"]] == [m["messageId"] for m in segment_events]
    # Broken on purpose, the same body fails: the check above could have failed.
    del body["batch"][0]["event"]
    assert errors(validator, body)
