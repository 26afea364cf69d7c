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


def produce_for_users(
    settings: dict[str, Any],
    broker: str,
    celery_queue: str,
    tag: str,
    count: int,
    users: int,
    pace: float,
    out: str,
) -> None:
    """A web process of many users: ``count`` durable track calls, ``pace`` s apart.

    Records the messageId of every call that returned, each with its user and ordinal, and
    whether the process could hand over everything it held before exiting.
    """
    import time

    from celery import Celery

    import segment_mw
    import segment_mw.celery

    app = Celery(f"producer-{tag}", broker=broker, set_as_current=False)
    app.conf.task_default_queue = celery_queue
    client = segment_mw.configure(settings)
    segment_mw.celery.install(app, watchdog=False)
    ids = []
    for n in range(count):
        user = f"{tag}-u{n % users}"
        ids.append(segment_mw.track("Scaled", {"tag": tag, "n": n}, user_id=user))
        if pace:
            time.sleep(pace)
    drained = client.producer.drain(120.0)
    Path(out).write_text(json.dumps({"ids": ids, "drained": drained}))
