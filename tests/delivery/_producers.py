"""Code run in child processes by the delivery tests (importable, for ``spawn``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def produce(
    settings: dict[str, Any], broker: str, celery_queue: str, tag: str, count: int, out: str
) -> None:
    """A web process: configure, wire to Celery, emit, record the messageIds, exit normally."""
    from celery import Celery

    import segment_mw
    import segment_mw.celery
    from segment_mw import api, events

    app = Celery(f"producer-{tag}", broker=broker, set_as_current=False)
    app.conf.task_default_queue = celery_queue
    segment_mw.configure(settings)
    segment_mw.celery.install(app, watchdog=False)
    ids = []
    for n in range(count):
        if n % 2:
            ids.append(segment_mw.track("Spawned", {"tag": tag, "n": n}, user_id=tag))
        else:  # the buffered hand-off pageviews use; what is left is handed over at exit
            fields = events.track_fields("Spawned Buffered", {"tag": tag, "n": n})
            ids.append(api.emit("track", fields, user_id=tag, durable=False))
    Path(out).write_text(json.dumps(ids))
