"""Process-local counters of what was dropped or rejected, and logging that cannot flood.

Problems that can repeat per event (a full spill, an unreachable Redis, invalid events from
middleware) are counted here and logged at most once per interval per kind; the producer
adds the counts to the queue backend when it can, so ``segment-mw status`` shows them
for every process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

log = logging.getLogger("segment_mw")

_lock = threading.Lock()
_counts: Counter[str] = Counter()
_unreported: Counter[str] = Counter()
_last_logged: dict[str, float] = {}

LOG_INTERVAL = 60.0


def count(kind: str, n: int = 1) -> None:
    with _lock:
        _counts[kind] += n
        _unreported[kind] += n


def counts() -> dict[str, int]:
    with _lock:
        return dict(_counts)


def take_unreported() -> dict[str, int]:
    with _lock:
        out = dict(_unreported)
        _unreported.clear()
        return out


def restore_unreported(values: dict[str, int]) -> None:
    with _lock:
        _unreported.update(values)


def warn_once_per_interval(
    kind: str, message: str, *args: object, logger: logging.Logger = log, exc_info: bool = False
) -> None:
    """Log ``message`` unless the same kind was logged within the last interval."""
    now = time.monotonic()
    with _lock:
        last = _last_logged.get(kind)
        if last is not None and now - last < LOG_INTERVAL:
            return
        _last_logged[kind] = now
        total = _counts.get(kind, 0)
    logger.warning(message + " (%d so far in this process)", *args, total, exc_info=exc_info)


def reset() -> None:
    """Forget everything (tests)."""
    with _lock:
        _counts.clear()
        _unreported.clear()
        _last_logged.clear()
