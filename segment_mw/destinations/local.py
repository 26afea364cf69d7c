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


class LogDestination(Destination):
    """Each message as one log record, for development and debugging."""

    type = "log"

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.logger = logging.getLogger(options.get("logger", "segment_mw.events"))
        level = options.get("level", logging.INFO)
        self.level = logging.getLevelName(level) if isinstance(level, str) else int(level)

    def send(self, bodies: Sequence[bytes], *, attempt: int = 0) -> Outcome:
        for body in bodies:
            self.logger.log(self.level, "%s", body.decode())
        return Outcome.success()
