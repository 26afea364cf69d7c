"""Destinations by type: ``segment``, ``http``, ``jsonl`` and ``log``."""

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
    return TYPES[config.type](config.name, config.options)
