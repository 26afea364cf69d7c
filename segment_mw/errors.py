"""Exceptions raised to callers; everything else the library logs and counts instead."""

from __future__ import annotations


class InvalidEvent(ValueError):
    """A message that breaks the Segment spec or cannot be serialised; names the field."""


class ConfigurationError(ValueError):
    """A setting that cannot work; the message names the key."""
