"""The Starlette example shop as uvicorn runs it in ``bench_servers.py``: ``--factory``.

A web process must configure segment_mw and install Celery (so that queued events request
a flush) before serving; ``tests/celery_app.py`` does both from the environment
(``SEGMENT_MW_TEST_SETTINGS``, ``SEGMENT_MW_TEST_BROKER``, ``SEGMENT_MW_TEST_CELERY_QUEUE``),
the same way for this process and for the worker delivering its events.
``SHOP_SEGMENT_MIDDLEWARE=0`` serves the shop without the middleware.
"""

from __future__ import annotations

import importlib
import os
from typing import Any


def app() -> Any:
    importlib.import_module("tests.celery_app")
    from example_projects.starlette_shop import build_app

    return build_app(middleware=os.environ.get("SHOP_SEGMENT_MIDDLEWARE") != "0")
