"""The real PostgreSQL for the warehouse tests: a private database per run, a schema per test.

Both are dropped afterwards. The server is the local one (``SEGMENT_MW_TEST_PG_DSN``, by
default ``postgresql://postgres@127.0.0.1:5432/postgres``, trust authentication).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

ADMIN_DSN = os.environ.get(
    "SEGMENT_MW_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)


class Warehouse:
    """A schema of its own in the test database, and ways to look at what landed there."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn = dsn
        self.schema = schema
        self.conn = psycopg.connect(dsn, autocommit=True, row_factory=dict_row)

    def destination(self, **options: Any) -> dict[str, Any]:
        """Options of a postgres destination writing here."""
        return {"type": "postgres", "dsn": self.dsn, "schema": self.schema, **options}

    def query(self, query: str, *params: Any) -> list[dict[str, Any]]:
        """Run SQL with ``{schema}`` standing for this schema's quoted name."""
        text = sql.SQL(query).format(schema=sql.Identifier(self.schema))
        cur = self.conn.execute(text, params or None)
        return cur.fetchall() if cur.description else []

    def rows(self, table: str, order_by: str = "id") -> list[dict[str, Any]]:
        return self.query(f"SELECT * FROM {{schema}}.{table} ORDER BY {order_by}")

    def tables(self) -> set[str]:
        found = self.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            self.schema,
        )
        return {r["table_name"] for r in found}

    def columns(self, table: str) -> dict[str, str]:
        """Column name -> type, as PostgreSQL's catalog has them."""
        found = self.query(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type "
            "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped",
            self.schema,
            table,
        )
        return {r["attname"]: r["type"] for r in found}

    def close(self) -> None:
        self.conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))
        )
        self.conn.close()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A database of this run's own; its DSN."""
    try:
        admin = psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:  # CI starts PostgreSQL: a failure, not a skip
        pytest.fail(
            f"PostgreSQL is not reachable at {ADMIN_DSN}: {exc}. Run `bash .ci/ensure-services`."
        )
    name = f"smw_test_{uuid.uuid4().hex[:12]}"
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(ADMIN_DSN, dbname=name)
    finally:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.close()


@pytest.fixture
def warehouse(pg_database: str) -> Iterator[Warehouse]:
    """A private schema (the Segment source) in the run's database, dropped afterwards."""
    wh = Warehouse(pg_database, f"src_{uuid.uuid4().hex[:10]}")
    yield wh
    wh.close()


def dsn_with_password(dsn: str, password: str) -> str:
    """The same server with a password given (trust authentication ignores it)."""
    return make_conninfo(dsn, password=password)
