"""Destinations by type: ``segment``, ``http``, ``jsonl``, ``log`` and ``postgres``.

``postgres`` is imported when a destination of that type is made: its driver is an extra
that processes which never deliver (web processes with a Redis queue) need not install.
"""

from __future__ import annotations

from ..config import DestinationConfig
from .base import Destination, Outcome
from .http import HttpBatchDestination, SegmentDestination
from .local import JsonlDestination, LogDestination

TYPES: dict[str, type[Destination]] = {
    "segment": SegmentDestination,
    "http": HttpBatchDestination,
    "jsonl": JsonlDestination,
    "log": LogDestination,
}

__all__ = ["Destination", "Outcome", "make_destination"]


def make_destination(config: DestinationConfig) -> Destination:
    if config.type == "postgres":
        from .postgres import PostgresDestination

        return PostgresDestination(config.name, config.options)
    return TYPES[config.type](config.name, config.options)
