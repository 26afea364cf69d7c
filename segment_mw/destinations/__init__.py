"""Destinations by type: ``segment``, ``http``, ``jsonl``, ``log``, ``postgres``, and the
analytics tools ``ga4``, ``mixpanel``, ``amplitude`` and ``posthog``.

``postgres`` is imported when a destination of that type is made: its driver is an extra
that processes which never deliver (web processes with a Redis queue) need not install.
"""

from __future__ import annotations

from ..config import DestinationConfig
from .amplitude import AmplitudeDestination
from .base import Destination, Outcome
from .ga4 import GA4Destination
from .http import HttpBatchDestination, SegmentDestination
from .local import JsonlDestination, LogDestination
from .mixpanel import MixpanelDestination
from .posthog import PostHogDestination

TYPES: dict[str, type[Destination]] = {
    "segment": SegmentDestination,
    "http": HttpBatchDestination,
    "jsonl": JsonlDestination,
    "log": LogDestination,
    "ga4": GA4Destination,
    "mixpanel": MixpanelDestination,
    "amplitude": AmplitudeDestination,
    "posthog": PostHogDestination,
}

__all__ = ["Destination", "Outcome", "make_destination"]


def make_destination(config: DestinationConfig) -> Destination:
    if config.type == "postgres":
        from .postgres import PostgresDestination

        return PostgresDestination(config.name, config.options)
    return TYPES[config.type](config.name, config.options)
