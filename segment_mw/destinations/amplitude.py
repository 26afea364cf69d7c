"""Amplitude through its HTTP V2 API (``POST /2/httpapi``), US or EU, gzipped.

``identify`` and ``group`` are ``$identify`` events (traits in ``user_properties.$set``;
the group in ``groups``). Every event's ``insert_id`` is its messageId, on which Amplitude
drops a duplicate. Amplitude refuses a whole request for a few bad events (a 400 naming
them): they are dead-lettered and the rest sent again at once. A 429 names the devices
and users it throttles: events of those over their daily quota are dead-lettered, the
rest retried after a pause; a 413 splits the batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ..version import __version__
from . import spec
from .base import Outcome
from .http import USER_AGENT, parse_retry_after
from .mapped import MappedDestination, Refused, Skipped, track_event

HOSTS = {"us": "https://api2.amplitude.com", "eu": "https://api.eu.amplitude.com"}
MAX_EVENTS = 2000
MAX_BYTES = 1_000_000  # HTTP V2's request limit; 413 above it
# What Amplitude asks of a client whose devices are throttled: pause about 30 s.
THROTTLE_PAUSE = 30.0
DEFAULT_GROUP_TYPE = "[Segment] Group"  # the group type Segment's own destination uses


class AmplitudeDestination(MappedDestination[dict[str, Any]]):
    type = "amplitude"
    max_events = MAX_EVENTS
    max_bytes = MAX_BYTES
    # HTTP V2 takes gzipped bodies (it counts events after decompressing them).
    takes_gzip = True

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        self.default_host = HOSTS[str(options.get("region") or "us").lower()]
        api_key = str(options["api_key"])
        super().__init__(name, options, [api_key])
        self.url = f"{self.host}/2/httpapi"
        self.group_type = str(options.get("group_type") or DEFAULT_GROUP_TYPE)
        self.headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        head: dict[str, Any] = {"api_key": api_key}
        if options.get("min_id_length") is not None:
            head["options"] = {"min_id_length": int(options["min_id_length"])}
        self._head = orjson.dumps(head)[:-1] + b',"events":['

    def convert(self, message: dict[str, Any], when: float) -> dict[str, Any]:
        kind = message.get("type")
        user_id, anonymous_id = spec.ids(message)
        event: dict[str, Any] = {}
        user_properties: dict[str, Any] = {}
        if kind == "track":
            name = track_event(message)
            props = spec.properties(message)
            event.update(event_type=name, event_properties=props)
            revenue = spec.number(props.get("revenue"))
            if revenue is not None:
                event["revenue"] = revenue
        elif kind in ("page", "screen"):
            props = dict(spec.properties(message))
            for key in ("name", "category"):
                if isinstance(message.get(key), str):
                    props.setdefault(key, message[key])
            event.update(event_type=spec.page_event_name(message), event_properties=props)
        elif kind == "identify":
            event["event_type"] = "$identify"
            traits = spec.mapping(message.get("traits"))
            if traits:
                user_properties["$set"] = dict(traits)
        elif kind == "group":
            group_id = spec.text(message.get("groupId"))
            if group_id is None:
                raise Refused("a group call with no groupId")
            event.update(event_type="$identify", groups={self.group_type: group_id})
            user_properties["$set"] = {self.group_type: group_id}
        else:
            raise Skipped(f"Amplitude's HTTP API has no equivalent of {kind} calls")
        if user_id is not None:
            event["user_id"] = user_id
        if anonymous_id is not None:
            event["device_id"] = anonymous_id
        if not (user_id or anonymous_id):
            raise Refused("no userId or anonymousId for Amplitude's user_id / device_id")
        ctx = spec.context(message)
        for source, target in (("ip", "ip"), ("locale", "language"), ("userAgent", "user_agent")):
            value = spec.text(ctx.get(source))
            if value:
                event[target] = value
        campaign = spec.utm(message)
        referrer = spec.text(spec.mapping(ctx.get("page")).get("referrer"))
        if referrer:
            campaign["referrer"] = referrer
        if campaign:
            # As Segment's destination does: the latest touch, and the first one once.
            user_properties.setdefault("$set", {}).update(campaign)
            user_properties["$setOnce"] = {f"initial_{k}": v for k, v in campaign.items()}
        if user_properties:
            event["user_properties"] = user_properties
        event.update(
            time=int(when * 1000),
            insert_id=str(message["messageId"]),
            library=f"segment_mw/{__version__}",
        )
        return event

    def deliver(self, items: list[tuple[int, dict[str, Any]]], *, attempt: int) -> Outcome:
        outcome = self._send(items, attempt)
        if outcome[0] is not None:
            return outcome[0]
        refused, rest = outcome[1], outcome[2]
        if not rest:
            return Outcome.partial(refused)
        # Amplitude took none of the request: the valid events are sent again at once.
        again, more_refused, _ = self._send(rest, attempt)
        if again is None:
            again = Outcome.partial(more_refused)
        if again.ok:
            return Outcome.partial(
                {**refused, **dict(again.refused)},
                again.pending,
                error=again.error,
                retry_after=again.retry_after,
            )
        if again.retry:
            return Outcome.partial(
                refused, [i for i, _ in rest], error=again.error, retry_after=again.retry_after
            )
        return Outcome.partial(
            {**refused, **dict.fromkeys((i for i, _ in rest), again.error or "rejected")}
        )

    def _send(
        self, items: list[tuple[int, dict[str, Any]]], attempt: int
    ) -> tuple[Outcome | None, dict[int, str], list[tuple[int, dict[str, Any]]]]:
        """One request: its Outcome, or (for a 400 naming its bad events) those and the rest."""
        body = self._head + b",".join(orjson.dumps(e) for _, e in items) + b"]}"
        answer = self.post(self.url, body, self.headers, attempt)
        if isinstance(answer, Outcome):
            return answer, {}, []
        positions = [i for i, _ in items]
        if answer.status == 400 and b"Invalid API key" in answer.data:
            return Outcome.rejected(self.transport.error(answer)), {}, []
        if answer.status == 400:
            bad = _invalid_events(answer.data)
            if bad:
                error = self.transport.error(answer)
                refused = {positions[i]: error for i in bad if 0 <= i < len(positions)}
                rest = [item for n, item in enumerate(items) if n not in bad]
                return None, refused, rest
        if answer.status == 429:
            return self._throttled(answer, items), {}, []
        return self.transport.outcome(answer), {}, []

    def _throttled(self, answer: Any, items: list[tuple[int, dict[str, Any]]]) -> Outcome:
        try:
            detail = orjson.loads(answer.data)
        except orjson.JSONDecodeError:
            detail = {}
        detail = detail if isinstance(detail, dict) else {}
        users = spec.mapping(detail.get("exceeded_daily_quota_users"))
        devices = spec.mapping(detail.get("exceeded_daily_quota_devices"))
        refused = {
            index: "over Amplitude's daily event quota for this user or device"
            for index, event in items
            if event.get("user_id") in users or event.get("device_id") in devices
        }
        throttled = detail.get("throttled_devices") or detail.get("throttled_users")
        retry_after = parse_retry_after(answer.headers.get("Retry-After"))
        if retry_after is None and throttled:
            retry_after = THROTTLE_PAUSE
        pending = [index for index, _ in items if index not in refused]
        error = self.transport.error(answer)
        if not refused:
            return Outcome.transient(error, retry_after)
        return Outcome.partial(refused, pending, error=error, retry_after=retry_after)


def _invalid_events(data: bytes) -> set[int]:
    """Indices a 400 says are invalid (``events_with_invalid_fields`` and the like)."""
    try:
        answer = orjson.loads(data)
    except orjson.JSONDecodeError:
        return set()
    if not isinstance(answer, dict):
        return set()
    out: set[int] = set()
    for key in (
        "events_with_invalid_fields",
        "events_with_missing_fields",
        "events_with_invalid_id_lengths",
    ):
        for indices in spec.mapping(answer.get(key)).values():
            if isinstance(indices, list):
                out.update(i for i in indices if isinstance(i, int))
    silenced = answer.get("silenced_events")
    if isinstance(silenced, list):
        out.update(i for i in silenced if isinstance(i, int))
    return out
