"""PostHog through its capture API (``POST /batch/``), gzipped.

``track`` keeps its name, ``page`` and ``screen`` become ``$pageview`` and ``$screen``,
``identify`` is ``$identify`` (traits in ``$set``, the anonymousId merged in through
``$anon_distinct_id``), ``group`` is ``$groupidentify`` and ``alias`` is
``$create_alias``. Every event's ``uuid`` is its messageId (or a UUID derived from it),
on which PostHog drops a duplicate.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from ..version import __version__
from . import spec
from .base import Outcome
from .http import USER_AGENT
from .mapped import MappedDestination, Refused, Skipped, track_event

DEFAULT_HOST = "https://us.i.posthog.com"
DEFAULT_GROUP_TYPE = "company"


class PostHogDestination(MappedDestination[bytes]):
    type = "posthog"
    default_host = DEFAULT_HOST
    takes_gzip = True
    overhead = 128

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        api_key = str(options["api_key"])
        super().__init__(name, options, [api_key])
        self.url = f"{self.host}/batch/"
        self.group_type = str(options.get("group_type") or DEFAULT_GROUP_TYPE)
        self.headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        self._head = b'{"api_key":' + orjson.dumps(api_key) + b',"batch":['

    def convert(self, message: dict[str, Any], when: float) -> bytes:
        kind = message.get("type")
        user_id, anonymous_id = spec.ids(message)
        distinct_id = user_id or anonymous_id
        if distinct_id is None:
            raise Refused("no userId or anonymousId for PostHog's distinct_id")
        props: dict[str, Any]
        if kind == "track":
            event = track_event(message)
            props = dict(spec.properties(message))
        elif kind in ("page", "screen"):
            props = dict(spec.properties(message))
            for key in ("name", "category"):
                if isinstance(message.get(key), str):
                    props.setdefault(key, message[key])
            if kind == "screen":
                event = "$screen"
                if isinstance(message.get("name"), str):
                    props["$screen_name"] = message["name"]
            else:
                event = "$pageview"
        elif kind == "identify":
            event = "$identify"
            props = {"$set": spec.mapping(message.get("traits"))}
            if user_id is not None and anonymous_id is not None:
                props["$anon_distinct_id"] = anonymous_id
        elif kind == "group":
            group_id = spec.text(message.get("groupId"))
            if group_id is None:
                raise Refused("a group call with no groupId")
            event = "$groupidentify"
            props = {
                "$group_type": self.group_type,
                "$group_key": group_id,
                "$group_set": spec.mapping(message.get("traits")),
            }
        elif kind == "alias":
            previous = spec.text(message.get("previousId"))
            if previous is None or user_id is None:
                raise Refused("an alias call needs previousId and userId")
            event = "$create_alias"
            distinct_id = previous
            props = {"distinct_id": previous, "alias": user_id}
        else:
            raise Skipped(f"PostHog has no equivalent of {kind} calls")
        self._context(message, props, kind)
        props["$lib"] = "segment_mw"
        props["$lib_version"] = __version__
        return orjson.dumps(
            {
                "event": event,
                "distinct_id": distinct_id,
                "properties": props,
                "timestamp": spec.iso_time(when),
                "uuid": spec.as_uuid(message.get("messageId")),
            }
        )

    def _context(self, message: Mapping[str, Any], props: dict[str, Any], kind: Any) -> None:
        ctx = spec.context(message)
        if kind in ("track", "page", "screen"):
            page = spec.page_url(message) if kind == "page" else spec.mapping(ctx.get("page"))
            for source, target in (
                ("url", "$current_url"),
                ("path", "$pathname"),
                ("referrer", "$referrer"),
            ):
                value = spec.text(page.get(source))
                if value:
                    props.setdefault(target, value)
            if kind == "page" and spec.text(page.get("title")):
                props.setdefault("title", page["title"])
            for key, value in spec.utm(message).items():
                props.setdefault(key, value)
            group_id = spec.text(ctx.get("groupId"))
            if group_id:
                props.setdefault("$groups", {self.group_type: group_id})
        for source, target in (("ip", "$ip"), ("userAgent", "$raw_user_agent")):
            value = spec.text(ctx.get(source))
            if value:
                props.setdefault(target, value)
        locale = spec.text(ctx.get("locale"))
        if locale:
            props.setdefault("$browser_language", locale)

    def deliver(self, items: list[tuple[int, bytes]], *, attempt: int) -> Outcome:
        body = b"".join(
            (
                self._head,
                b",".join(event for _, event in items),
                b'],"sent_at":"',
                spec.iso_time(time.time()).encode(),
                b'"}',
            )
        )
        answer = self.post(self.url, body, self.headers, attempt)
        if isinstance(answer, Outcome):
            return answer
        return self.transport.outcome(answer)
