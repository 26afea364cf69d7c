"""A real Celery worker in a thread of the test process, one after another in a run.

kombu before 5.6.2 keeps a stopped worker's event loop as the process's current one, and
the next worker started in the same process adopts it: that loop only fires the first
worker's timer, so the new worker receives countdown and retry tasks but never runs them
(celery/celery#9983). A worker process (``celery worker``) runs one worker and is not
affected; a test run starts many, so each starts and ends with no current event loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from celery import Celery
from celery.contrib.testing.worker import start_worker
from kombu.asynchronous import set_event_loop


@contextlib.contextmanager
def in_process_worker(app: Celery, **options: Any) -> Iterator[Any]:
    set_event_loop(None)
    try:
        with start_worker(app, **options) as worker:
            yield worker
    finally:
        set_event_loop(None)
