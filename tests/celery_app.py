"""The Celery app the delivery tests run real workers with (in a thread or as a process).

Settings come from the environment so a worker started as a subprocess sees the same
queue, prefix and destinations as the test that started it.
"""

from __future__ import annotations

import json
import os

from celery import Celery

import segment_mw
import segment_mw.celery

BROKER = os.environ.get("SEGMENT_MW_TEST_BROKER", "redis://127.0.0.1:6379/10")

app = Celery("segment_mw_tests", broker=BROKER)
app.conf.update(
    task_default_queue=os.environ.get("SEGMENT_MW_TEST_CELERY_QUEUE", "segment_mw_tests"),
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

_settings = os.environ.get("SEGMENT_MW_TEST_SETTINGS")
if _settings:
    segment_mw.configure(json.loads(_settings))
    segment_mw.celery.install(app)


@app.task(name="tests.emit_buffered")
def emit_buffered(tag: str, count: int) -> None:
    """Emit ``count`` buffered events (the hand-off pageviews use), as a task would."""
    from segment_mw import api, events

    for n in range(count):
        api.emit(
            "track",
            events.track_fields("Buffered", {"tag": tag, "n": n}),
            user_id=tag,
            durable=False,
        )
