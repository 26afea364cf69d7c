"""Fixtures for ``@tracked``: a memory queue per test, Django with a PostgreSQL connection
for the on-commit tests, and a real Celery worker (solo pool, in a thread) on a private
queue."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import Any

import django
import pytest
import redis
from celery import Celery

import segment_mw.celery

from ..celery_worker import in_process_worker

BROKER = os.environ.get("SEGMENT_MW_TEST_BROKER", "redis://127.0.0.1:6379/10")
PG_ALIAS = "segment_mw_tracked"
PG = {
    "ENGINE": "django.db.backends.postgresql",
    "NAME": os.environ.get("SEGMENT_MW_TEST_PG_NAME", "test"),
    "USER": os.environ.get("SEGMENT_MW_TEST_PG_USER", "postgres"),
    "HOST": os.environ.get("SEGMENT_MW_TEST_PG_HOST", "127.0.0.1"),
    "PORT": os.environ.get("SEGMENT_MW_TEST_PG_PORT", "5432"),
}

# The suite's Django project (as tests/django uses it), unless the run configured another
# one: set up at collection, like the app at start-up, so its ready() runs before any test.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django_project.settings")
django.setup()


@pytest.fixture(autouse=True)
def _memory_queue(configure: Callable[..., Any]) -> None:
    # No in-process flusher: nothing is delivered here, and closing it costs each test time.
    configure(IN_PROCESS_FLUSHER=False)


@pytest.fixture(scope="session")
def pg_alias() -> Iterator[str]:
    """A PostgreSQL connection under an alias of its own, beside the project's databases.

    It is added to the running connection handler rather than to a settings module, so
    these tests run alone or under the project-wide ``DJANGO_SETTINGS_MODULE``, whose own
    databases (and pytest-django's handling of them) they leave alone.
    """
    from django.db import connections

    config = connections.configure_settings({"default": {}, PG_ALIAS: dict(PG)})[PG_ALIAS]
    connections.settings[PG_ALIAS] = config
    try:
        yield PG_ALIAS
    finally:
        connections[PG_ALIAS].close()
        del connections[PG_ALIAS]
        del connections.settings[PG_ALIAS]


@pytest.fixture
def pg(pg_alias: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """The PostgreSQL alias, with pytest-django's database blocker (if active) lifted."""
    try:
        blocker = request.getfixturevalue("django_db_blocker")
    except pytest.FixtureLookupError:  # pytest-django is not loaded
        blocker = None
    with blocker.unblock() if blocker is not None else nullcontext():
        from django.db import connections

        assert connections[pg_alias].vendor == "postgresql"
        yield pg_alias
        # Closed between tests, so no later request's connection cleanup touches it blocked.
        connections[pg_alias].close()


@pytest.fixture
def charges_table(pg: str) -> Iterator[str]:
    """A table of its own in the test database, dropped afterwards."""
    from django.db import connections

    table = f"tracked_charges_{uuid.uuid4().hex[:10]}"
    with connections[pg].cursor() as cursor:
        cursor.execute(f"CREATE TABLE {table} (id text PRIMARY KEY, amount integer NOT NULL)")
    yield table
    with connections[pg].cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {table}")


@pytest.fixture
def worker_app(redis_url: str) -> Iterator[Celery]:
    """A Celery app on a queue no other test uses, with a real worker consuming it."""
    from . import tasks  # noqa: F401  (the shared tasks this worker runs)

    name = f"tracked-{uuid.uuid4().hex[:10]}"
    app = Celery(name, broker=BROKER, backend=BROKER, set_as_current=False)
    app.conf.update(
        task_default_queue=name,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        result_expires=300,
    )
    segment_mw.celery.install(app, watchdog=False)
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        with in_process_worker(app, pool="solo", concurrency=1, perform_ping_check=False):
            yield app
    finally:
        segment_mw.celery.uninstall()
        # The embedded worker sets up logging (root at ERROR): give later tests theirs back.
        root.setLevel(level)
        root.handlers[:] = handlers
        # The queue (with any flush requested after the worker stopped) and its bindings
        # would otherwise stay in the broker for good.
        redis.Redis.from_url(BROKER).delete(
            name, f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}"
        )
