"""The destination against Segment's documented warehouse schema (see segment_docs.py)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from segment_mw.destinations.postgres import PostgresDestination
from segment_mw.warehouse.naming import snakecase
from segment_mw.warehouse.schema import Row, layout

from ..pg import Warehouse
from .messages import message
from .segment_docs import CASES, DATA_TYPES, NEW_COLUMN_TYPE, SNAKECASE, Case

NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize(("name", "snake"), SNAKECASE, ids=[s for s, _ in SNAKECASE])
def test_names_are_snake_cased_like_go_snakecase(name: str, snake: str) -> None:
    assert snakecase(name) == snake


def _case_message(case: Case) -> bytes:
    return message(case.call, case.fields, context=case.context or None)


def _row_of(case: Case, body: bytes) -> Row:
    laid = layout(json.loads(body), NOW)
    rows = [*laid.rows, *([laid.latest] if laid.latest else [])]
    found = [r for r in rows if r.table == case.table]
    assert len(found) == 1, f"{case.id}: rows in {[r.table for r in rows]}"
    return found[0]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_message_is_laid_out_as_documented(case: Case) -> None:
    row = _row_of(case, _case_message(case))
    for column, value in case.has.items():
        assert row.values.get(column) == value, f"{case.id}: {column}"
    for column in case.lacks:
        assert column not in row.values, f"{case.id}: {column}"
    for column in case.columns:
        assert column in row.values, f"{case.id}: {column}"


def test_the_documented_schema_lands_in_postgresql(
    warehouse: Warehouse, destinations: Callable[..., PostgresDestination]
) -> None:
    """Every documented case, written as one batch, read back from PostgreSQL's catalog."""
    bodies = [_case_message(case) for case in CASES]
    assert destinations().send(bodies).ok
    for case, body in zip(CASES, bodies, strict=True):
        parsed = orjson.loads(body)
        key = parsed["messageId"]
        if case.table == "users":
            key = parsed["userId"]
        elif case.table == "accounts":
            key = parsed["groupId"]
        found = warehouse.query(f"SELECT * FROM {{schema}}.{case.table} WHERE id = %s", key)
        assert len(found) == 1, case.id
        row: dict[str, Any] = found[0]
        for column, value in case.has.items():
            assert row[column] == value, f"{case.id}: {column}"
        columns = warehouse.columns(case.table)
        for column in case.lacks:
            assert column not in columns, f"{case.id}: {column}"
        for column in case.columns:
            assert column in columns, f"{case.id}: {column}"


def test_a_new_column_takes_the_type_of_its_latest_value_in_the_batch(
    warehouse: Warehouse, destinations: Callable[..., PostgresDestination]
) -> None:
    source, section = NEW_COLUMN_TYPE
    bodies = [
        message("track", {"event": "Plan Chosen", "properties": {"seats": 3}}),
        message("track", {"event": "Plan Chosen", "properties": {"seats": "three"}}),
    ]
    assert destinations().send(bodies).ok
    assert warehouse.columns("plan_chosen")["seats"] == "text", f"{source}: {section}"
    assert sorted(r["seats"] for r in warehouse.rows("plan_chosen")) == ["3", "three"]


def test_column_types_are_inferred_from_values(
    warehouse: Warehouse, destinations: Callable[..., PostgresDestination]
) -> None:
    properties = {name: value for name, (value, _) in DATA_TYPES.items()}
    assert destinations().send([message("track", {"event": "Typed", "properties": properties})]).ok
    columns = warehouse.columns("typed")
    assert {name: columns[name] for name in DATA_TYPES} == {
        name: kind for name, (_, kind) in DATA_TYPES.items()
    }
    (row,) = warehouse.rows("typed")
    assert row["seen_at"] == dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.timezone.utc)
    assert row["active"] is True
