"""Destinations that map Segment messages onto another tool's API.

The stored bytes are parsed (once, with orjson) and each message is converted or, where
the tool has no equivalent, skipped — counted and logged, then acknowledged like a
delivered one — or refused with a reason (unreadable, older than the tool accepts, no id
the tool can use), which dead-letters that message alone. What the tool then answers is
put together with those refusals into one :class:`Outcome`, by position in the batch.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

import orjson

from .. import metrics
from .base import Destination, Outcome
from .http import Transport, base_url
from .spec import event_time

log = logging.getLogger("segment_mw.destinations")

T = TypeVar("T")


class Skipped(Exception):
    """The tool has nothing for this message (a ``group`` call where it has no groups)."""


class Refused(Exception):
    """This message can never be delivered to the tool; the text says why."""


def track_event(message: Mapping[str, Any]) -> str:
    """A ``track`` call's event name; :class:`Refused` when it has none."""
    event = message.get("event")
    if not isinstance(event, str) or not event:
        raise Refused("a track call with no event name")
    return event


class MappedDestination(Destination, Generic[T], abc.ABC):
    #: the tool's public endpoint, used when no ``host`` option is given
    default_host = ""
    #: the oldest event the tool accepts, in seconds (None: it takes any age)
    limit_age: float | None = None
    #: whether the API takes gzip request bodies
    takes_gzip = False

    def __init__(self, name: str, options: Mapping[str, Any], secrets: Sequence[str]) -> None:
        super().__init__(name, options)
        self.host = base_url(options, self.default_host)
        self.timeout = float(options.get("timeout", 10.0))
        self.gzip = self.takes_gzip and bool(options.get("gzip", True))
        self.transport = Transport(name, self.timeout, secrets)
        max_age = options.get("max_age")
        self.max_age = self.limit_age if max_age is None else float(max_age)

    @abc.abstractmethod
    def convert(self, message: dict[str, Any], when: float) -> T:
        """The tool's form of one message (``when``: its time, in epoch seconds).

        Raises :class:`Skipped` or :class:`Refused`.
        """

    @abc.abstractmethod
    def deliver(self, items: list[tuple[int, T]], *, attempt: int) -> Outcome:
        """Send converted messages; the Outcome's positions are the items' batch positions."""

    def post(self, url: str, payload: bytes, headers: Mapping[str, str], attempt: int) -> Any:
        return self.transport.post(url, payload, headers, compress=self.gzip, attempt=attempt)

    def send(self, bodies: Sequence[bytes], *, attempt: int = 0) -> Outcome:
        refused: dict[int, str] = {}
        items: list[tuple[int, T]] = []
        now = time.time()
        for index, body in enumerate(bodies):
            try:
                message = orjson.loads(body)
            except orjson.JSONDecodeError:
                refused[index] = "not a JSON message"
                continue
            if not isinstance(message, dict):
                refused[index] = "not a JSON object"
                continue
            if not isinstance(message.get("messageId"), str) or not message["messageId"]:
                refused[index] = "no messageId to make the tool's dedupe key from"
                continue
            when = event_time(message, now)
            if self.max_age is not None and now - when > self.max_age:
                refused[index] = (
                    f"timestamp {message.get('timestamp')} is older than {self.type} accepts "
                    f"({self.max_age / 3600:g} h)"
                )
                continue
            try:
                items.append((index, self.convert(message, when)))
            except Skipped as why:
                self.skip(message, str(why))
            except Refused as why:
                refused[index] = str(why)
        if not items:
            return Outcome.partial(refused)
        return merge(self.deliver(items, attempt=attempt), refused, [i for i, _ in items])

    def skip(self, message: Mapping[str, Any], why: str) -> None:
        kind = f"skipped_{self.type}"
        metrics.count(kind)
        metrics.warn_once_per_interval(
            kind,
            "destination %s: a %s message was skipped: %s",
            self.name,
            message.get("type"),
            why,
            logger=log,
        )

    def close(self) -> None:
        self.transport.close()


def merge(outcome: Outcome, refused: Mapping[int, str], sent: Sequence[int]) -> Outcome:
    """What the tool answered for the ``sent`` positions, with the ones refused before."""
    if not refused:
        return outcome
    if outcome.ok:
        return Outcome.partial(
            {**refused, **dict(outcome.refused)},
            outcome.pending,
            error=outcome.error,
            retry_after=outcome.retry_after,
        )
    if outcome.retry:
        return Outcome.partial(refused, sent, error=outcome.error, retry_after=outcome.retry_after)
    if outcome.split and len(sent) > 1:
        return outcome  # the halves are converted (and refused) again
    error = outcome.error or "rejected"
    return Outcome.partial({**refused, **dict.fromkeys(sent, error)})
