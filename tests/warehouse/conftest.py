"""Fixtures for the warehouse tests: messages as the library builds them, and postgres
destinations writing into the test's own schema (closed afterwards)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from segment_mw.config import load_settings
from segment_mw.destinations import make_destination
from segment_mw.destinations.postgres import PostgresDestination

from ..pg import Warehouse


@pytest.fixture
def destinations(warehouse: Warehouse) -> Iterator[Callable[..., PostgresDestination]]:
    """Make postgres destinations (through the settings, as an app would) for the schema."""
    made: list[PostgresDestination] = []

    def _make(name: str = "warehouse", **options: Any) -> PostgresDestination:
        settings = load_settings(
            {"QUEUE_URL": "memory://", "DESTINATIONS": {name: warehouse.destination(**options)}},
            environ={},
        )
        dest = make_destination(settings.destinations[0])
        assert isinstance(dest, PostgresDestination)
        made.append(dest)
        return dest

    yield _make
    for dest in made:
        dest.close()
