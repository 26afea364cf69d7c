"""Destinations that need no network: an append-only JSON Lines file and a logger."""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .base import Destination, Outcome


class JsonlDestination(Destination):
    """One message per line, byte for byte as serialised at emit time."""

    type = "jsonl"

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.path = Path(os.fspath(options["path"]))

    def send(self, bodies: Sequence[bytes], *, attempt: int = 0) -> Outcome:
        data = b"\n".join(bodies) + b"\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as fh:
                # Several workers may append at once; the lock keeps lines whole.
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    fh.write(data)
                    fh.flush()
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
        except OSError as exc:
            return Outcome.transient(f"{type(exc).__name__}: {exc.strerror or exc}")
        return Outcome.success()


def log_level(value: Any) -> int:
    """A level number from ``20`` or a name such as ``"INFO"``/``"info"``; ValueError if not."""
    if isinstance(value, str):
        value = logging.getLevelName(value.upper())  # a number for a known name
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"not a logging level: {value!r}")
    return value


class LogDestination(Destination):
    """Each message as one log record, for development and debugging."""

    type = "log"

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.logger = logging.getLogger(options.get("logger", "segment_mw.events"))
        self.level = log_level(options.get("level", logging.INFO))

    def send(self, bodies: Sequence[bytes], *, attempt: int = 0) -> Outcome:
        for body in bodies:
            self.logger.log(self.level, "%s", body.decode())
        return Outcome.success()
