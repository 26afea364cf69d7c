"""Mixpanel through its import API (``POST /import?strict=1``) and, for traits, its
profile API (``POST /engage``), gzipped JSON.

Events are authenticated with a service account (``service_account``, ``secret``,
``project_id``) or the project ``token``; profile updates need the ``token``.
``strict=1`` makes Mixpanel validate every event and import the valid ones: a 400 then
lists the failed records, and those alone are dead-lettered. Every event's ``$insert_id``
is its messageId (or a UUID derived from it), on which Mixpanel drops a duplicate; a
profile ``$set`` is the same however often it is applied. An identify is delivered when
both its parts (the ``$identify`` event, the ``$set``) are.
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
from .mapped import MappedDestination, Refused, Skipped, track_event

DEFAULT_HOST = "https://api.mixpanel.com"
MAX_EVENTS = 2000
MAX_BYTES = 10 * 1024 * 1024  # uncompressed, per request


IMPORT, ENGAGE = "import", "engage"


class MixpanelDestination(MappedDestination[list[tuple[str, bytes]]]):
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
        self.engage_url = f"{self.host}/engage?verbose=1"
        self.engage_headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        self.headers = {**self.engage_headers, "Authorization": f"Basic {credentials}"}

    def convert(self, message: dict[str, Any], when: float) -> list[tuple[str, bytes]]:
        user_id, anonymous_id = spec.ids(message)
        distinct_id = user_id or anonymous_id
        if distinct_id is None:
            raise Refused("no userId or anonymousId for Mixpanel's distinct_id")
        if message.get("type") != "identify":
            return [(IMPORT, self._event(message, when, distinct_id))]
        parts = []
        if user_id is not None and anonymous_id is not None:
            parts.append((IMPORT, self._event(message, when, distinct_id)))
        traits = spec.mapping(message.get("traits"))
        if traits and self.token:
            parts.append((ENGAGE, self._profile(message, when, distinct_id, traits)))
        if not parts:
            raise Skipped(
                "an identify call with one id has nothing to merge, and its traits need "
                "the project token"
                if traits
                else "an identify call with one id and no traits has nothing to send"
            )
        return parts

    def _profile(
        self, message: Mapping[str, Any], when: float, distinct_id: str, traits: dict[str, Any]
    ) -> bytes:
        update: dict[str, Any] = {
            "$token": self.token,
            "$distinct_id": distinct_id,
            "$time": int(when * 1000),
            "$set": traits,
        }
        ip = spec.text(spec.context(message).get("ip"))
        if ip:
            update["$ip"] = ip
        return orjson.dumps(update)

    def _event(self, message: Mapping[str, Any], when: float, distinct_id: str) -> bytes:
        kind = message.get("type")
        user_id, anonymous_id = spec.ids(message)
        props: dict[str, Any]
        if kind == "track":
            event = track_event(message)
            props = dict(spec.properties(message))
        elif kind in ("page", "screen"):
            event = spec.page_event_name(message)
            props = dict(spec.properties(message))
            for key in ("name", "category"):
                if isinstance(message.get(key), str):
                    props.setdefault(key, message[key])
        elif kind == "identify":
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

    def deliver(self, items: list[tuple[int, list[tuple[str, bytes]]]], *, attempt: int) -> Outcome:
        events = [(i, data) for i, parts in items for kind, data in parts if kind == IMPORT]
        profiles = [(i, data) for i, parts in items for kind, data in parts if kind == ENGAGE]
        results = []
        if events:
            results.append((events, self._import(events, attempt)))
        if profiles:
            results.append((profiles, self._engage(profiles, attempt)))
        if len(results) == 1:
            return results[0][1]
        return combine(results)

    def _import(self, items: list[tuple[int, bytes]], attempt: int) -> Outcome:
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

    def _engage(self, items: list[tuple[int, bytes]], attempt: int) -> Outcome:
        body = b"[" + b",".join(update for _, update in items) + b"]"
        # Uncompressed: the profile API takes no gzip (Mixpanel's reference says so).
        answer = self.transport.post(self.engage_url, body, self.engage_headers, attempt=attempt)
        if isinstance(answer, Outcome):
            return answer
        outcome = self.transport.outcome(answer)
        if outcome.ok:
            try:
                verdict = orjson.loads(answer.data)
            except orjson.JSONDecodeError:
                verdict = None
            if isinstance(verdict, dict) and verdict.get("status") == 0:
                return Outcome.rejected(
                    f"Mixpanel refused the profile update: {verdict.get('error')}", split=True
                )
            return Outcome.partial({})
        return outcome


def combine(results: list[tuple[list[tuple[int, bytes]], Outcome]]) -> Outcome:
    """One Outcome for requests that each carried parts of the batch's messages.

    A message is delivered when every part of it was; refused when any part was refused
    for good (a request rejected beside another that went through refuses its own parts:
    the other is not to be sent again); otherwise, when a part is to be retried, pending.
    """
    refused: dict[int, str] = {}
    pending: set[int] = set()
    error = retry_after = None
    for parts, outcome in results:
        positions = {i for i, _ in parts}
        if outcome.ok:
            refused.update(dict(outcome.refused))
            pending.update(outcome.pending)
        elif outcome.retry:
            pending.update(positions)
        else:
            refused.update(dict.fromkeys(positions, outcome.error or "rejected"))
        if outcome.error and (outcome.retry or outcome.pending):
            error, retry_after = outcome.error, outcome.retry_after
    return Outcome.partial(refused, pending - set(refused), error=error, retry_after=retry_after)


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
