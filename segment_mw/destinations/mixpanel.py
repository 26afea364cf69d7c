"""Mixpanel through its import API (``POST /import?strict=1``), gzipped JSON.

Authenticated with a service account (``service_account``, ``secret``, ``project_id``)
or the project ``token``. ``strict=1`` makes Mixpanel validate every event and import the
valid ones: a 400 then lists the failed records, and those alone are dead-lettered. Every
event's ``$insert_id`` is its messageId (or a UUID derived from it), on which Mixpanel
drops a duplicate.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import orjson

from ..version import __version__
from . import spec
from .base import Outcome
from .http import USER_AGENT
from .mapped import MappedDestination, Refused, Skipped

DEFAULT_HOST = "https://api.mixpanel.com"
MAX_EVENTS = 2000
MAX_BYTES = 10 * 1024 * 1024  # uncompressed, per request


class MixpanelDestination(MappedDestination[bytes]):
    type = "mixpanel"
    default_host = DEFAULT_HOST
    takes_gzip = True
    max_events = MAX_EVENTS

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        self.token = str(options.get("token") or "") or None
        account = options.get("service_account")
        secret = str(options.get("secret") or "")
        if account:
            user, password = str(account), secret
            query = {"strict": "1", "project_id": str(options["project_id"])}
        else:
            user, password = str(self.token), ""
            query = {"strict": "1"}
        credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
        super().__init__(name, options, [s for s in (self.token, secret, credentials) if s])
        self.url = f"{self.host}/import?{urlencode(query)}"
        self.headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Authorization": f"Basic {credentials}",
        }

    def convert(self, message: dict[str, Any], when: float) -> bytes:
        kind = message.get("type")
        user_id, anonymous_id = spec.ids(message)
        distinct_id = user_id or anonymous_id
        if distinct_id is None:
            raise Refused("no userId or anonymousId for Mixpanel's distinct_id")
        props: dict[str, Any]
        if kind == "track":
            event = message.get("event")
            if not isinstance(event, str) or not event:
                raise Refused("a track call with no event name")
            props = dict(spec.properties(message))
        elif kind in ("page", "screen"):
            event = spec.page_event_name(message)
            props = dict(spec.properties(message))
            for key in ("name", "category"):
                if isinstance(message.get(key), str):
                    props.setdefault(key, message[key])
        elif kind == "identify":
            if user_id is None or anonymous_id is None:
                raise Skipped("an identify call without both ids has nothing to merge")
            # Joins the anonymous events to the user (Mixpanel's ID merge).
            event = "$identify"
            props = {"$identified_id": user_id, "$anon_id": anonymous_id}
        else:
            raise Skipped(f"Mixpanel's import API has no equivalent of {kind} calls")
        ctx = spec.context(message)
        page = spec.mapping(ctx.get("page"))
        for source, target in (("url", "$current_url"), ("referrer", "$referrer")):
            value = spec.text(page.get(source))
            if value:
                props.setdefault(target, value)
        for key, value in spec.utm(message).items():
            props.setdefault(key, value)
        ip = spec.text(ctx.get("ip"))
        if ip:
            props.setdefault("ip", ip)
        props.update(
            {
                "time": int(when * 1000),
                "distinct_id": distinct_id,
                "$insert_id": spec.as_uuid(message.get("messageId")),
                "mp_lib": "segment_mw",
                "$lib_version": __version__,
            }
        )
        if anonymous_id is not None:
            props.setdefault("$device_id", anonymous_id)
        if user_id is not None:
            props.setdefault("$user_id", user_id)
        if self.token:
            props["token"] = self.token
        return orjson.dumps({"event": event, "properties": props})

    def deliver(self, items: list[tuple[int, bytes]], *, attempt: int) -> Outcome:
        body = b"[" + b",".join(event for _, event in items) + b"]"
        if len(body) > MAX_BYTES:
            return Outcome.rejected(f"larger than Mixpanel's {MAX_BYTES} bytes", split=True)
        answer = self.post(self.url, body, self.headers, attempt)
        if isinstance(answer, Outcome):
            return answer
        if answer.status == 400:
            failed = _failed_records(answer.data)
            if failed:
                positions = [i for i, _ in items]
                refused = {
                    positions[index]: f"Mixpanel refused it: {why}"
                    for index, why in failed.items()
                    if 0 <= index < len(positions)
                }
                if refused:
                    return Outcome.partial(refused)
        outcome = self.transport.outcome(answer)
        if outcome.ok:
            return Outcome.partial({})
        return outcome


def _failed_records(data: bytes) -> dict[int, str]:
    """``failed_records`` of a strict import's 400: batch index → what was wrong."""
    try:
        answer = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    records = answer.get("failed_records") if isinstance(answer, dict) else None
    out: dict[int, str] = {}
    for record in records if isinstance(records, list) else ():
        if isinstance(record, dict) and isinstance(record.get("index"), int):
            field = record.get("field")
            text = str(record.get("message") or "invalid")
            out[record["index"]] = f"{field}: {text}" if field else text
    return out
