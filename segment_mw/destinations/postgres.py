"""A warehouse destination: Segment's warehouse schema in the team's own PostgreSQL.

Each batch is laid out as rows (:mod:`segment_mw.warehouse.schema`) and written in one
transaction; ``id`` (the messageId) is every table's primary key and rows are inserted
with ``ON CONFLICT (id) DO NOTHING``, so a retried or re-claimed batch adds nothing twice.
New tables and columns are made first, one table per short transaction under an advisory
lock on the schema, so that workers adding the same column at once wait for each other
instead of failing, and no writer holds two tables' DDL locks. The stored bytes are parsed
with the standard library's ``json`` and ``parse_float=Decimal``: orjson would hand back
floats, and money must land exact in ``numeric`` columns. A message that has no place in
the schema is refused alone (dead-lettered) and the rest of its batch is written; a
failed transaction is a transient failure, retried with back-off. The connection pool is
per process, made on first use and made again in a forked child.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

try:
    import psycopg
    from psycopg import errors, sql
    from psycopg.conninfo import conninfo_to_dict
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the postgres destination needs psycopg 3 and psycopg-pool: "
        "pip install 'segment-mw[postgres]'"
    ) from exc

from .. import forks, metrics
from ..errors import ConfigurationError
from ..warehouse.schema import Layout, Row, Unloadable, layout, standard_columns
from ..warehouse.types import Fit, fitter, infer, native
from .base import Destination, Outcome

log = logging.getLogger("segment_mw.destinations.postgres")

DEFAULT_SCHEMA = "segment"
POOL_MAX = 4
DDL_ATTEMPTS = 5
MAX_PARAMS = 32_000  # per statement; PostgreSQL's protocol allows 65,535
_DECODER = json.JSONDecoder(parse_float=Decimal)
# Raised when a process that does not take our advisory lock (another tool, an older
# release) creates the same table, type or column at the same moment: try again.
_DDL_RACES = (
    errors.UniqueViolation,
    errors.DuplicateTable,
    errors.DuplicateObject,
    errors.DuplicateSchema,
    errors.DuplicateColumn,
    errors.DeadlockDetected,
)


# The catalog changed under the cached column types (a column dropped or retyped): read it
# again and retry once before calling a value bad.
class _CatalogChanged(Exception):
    """A column made a moment ago is gone again."""


_STALE = (errors.UndefinedTable, errors.UndefinedColumn, errors.DataError, _CatalogChanged)
_JSON_TYPES = {
    str: "string",
    bool: "boolean",
    int: "number",
    Decimal: "number",
    float: "number",
    dt.datetime: "date-time",
}

_CATALOG = """
SELECT c.relname, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = %s AND c.relkind IN ('r', 'p')
"""


def describe_dsn(dsn: str) -> str:
    """``host:port/dbname`` of a connection string, for messages (never its password)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "an unreadable connection string"
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    return f"{host}:{params.get('port') or 5432}/{params.get('dbname') or params.get('user') or ''}"


class _Session:
    """One process's connections to the warehouse, and what it knows of its tables."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self.columns: dict[str, dict[str, str]] | None = None  # table -> column -> type


class PostgresDestination(Destination):
    """Writes Segment's warehouse tables into a PostgreSQL schema (see the module doc)."""

    type = "postgres"

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self._dsn = str(options["dsn"])
        try:
            self._password = str(conninfo_to_dict(self._dsn).get("password") or "")
        except psycopg.Error:
            # Its text may quote the connection string, password and all: not repeated.
            raise ConfigurationError(
                f"DESTINATIONS[{name!r}].dsn: not a libpq connection string or URI"
            ) from None
        self.target = describe_dsn(self._dsn)
        self.schema = str(options.get("schema") or DEFAULT_SCHEMA)
        self.timeout = float(options.get("timeout", 10.0))
        self._ms = str(int(self.timeout * 1000))
        digest = hashlib.sha256(f"segment_mw:{self.schema}".encode()).digest()
        self._lock_key = int.from_bytes(digest[:8], "big", signed=True)
        # A forked child makes its own pool, lock and catalog; the parent's pool is left
        # alone (closing it would end the parent's sessions).
        self._session: forks.ProcessLocal[_Session] = forks.ProcessLocal(_Session)

    # -- connections ---------------------------------------------------------------------
    @property
    def pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        session = self._session.get()
        if session.pool is None:
            with session.lock:
                if session.pool is None:
                    pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
                        self._dsn,
                        min_size=0,
                        max_size=POOL_MAX,
                        open=False,
                        name=f"segment_mw:{self.name}",
                        timeout=self.timeout,
                        kwargs={
                            "autocommit": True,
                            "connect_timeout": max(int(min(self.timeout, 5.0)), 1),
                            "application_name": "segment_mw",
                        },
                        configure=self._configure,
                        check=ConnectionPool.check_connection,
                    )
                    pool.open(wait=False)
                    session.pool = pool
        return session.pool

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        # A batch stuck behind someone's lock or a slow server gives up in time and is
        # retried, rather than holding a worker.
        conn.execute("SELECT set_config('statement_timeout', %s, false)", [self._ms])

    def close(self) -> None:
        session = self._session.reset()
        if session is not None and session.pool is not None:
            session.pool.close()

    # -- delivery ------------------------------------------------------------------------
    def send(self, bodies: Sequence[bytes], *, attempt: int = 0) -> Outcome:
        now = dt.datetime.now(dt.timezone.utc)
        layouts: list[Layout] = []
        refused: dict[int, str] = {}
        for index, body in enumerate(bodies):
            try:
                laid = layout(_DECODER.decode(body.decode()), now)
            except Unloadable as exc:
                refused[index] = f"no place in the warehouse schema: {exc}"
                continue
            except ValueError:  # not UTF-8, not JSON
                refused[index] = "not a JSON message"
                continue
            for note in laid.dropped:
                self._note(Fit.DROPPED, note)
            layouts.append(laid)
        if layouts:
            outcome = self._write_all(layouts)
            if not outcome.ok:
                return outcome
        return Outcome.partial(refused) if refused else Outcome.success()

    def _write_all(self, layouts: list[Layout]) -> Outcome:
        retried = False
        while True:
            try:
                with self.pool.connection(timeout=min(self.timeout, 5.0)) as conn:
                    columns = self._ensure_columns(conn, layouts)
                    self._write(conn, layouts, columns)
                return Outcome.success()
            except PoolTimeout:
                return Outcome.transient(
                    f"no connection to the warehouse at {self.target} within "
                    f"{min(self.timeout, 5.0):g}s"
                )
            except _STALE as exc:
                session = self._session.get()
                with session.lock:
                    session.columns = None
                if not retried:
                    retried = True
                    continue
                if isinstance(exc, _CatalogChanged):
                    return Outcome.transient(f"the warehouse table {exc} keeps changing")
                return self._failure(exc)
            except psycopg.Error as exc:
                return self._failure(exc)

    def _failure(self, exc: psycopg.Error) -> Outcome:
        state = exc.sqlstate or ""
        if isinstance(exc, (errors.DataError, errors.IntegrityError)):
            # A value PostgreSQL refuses (a column the team retyped or constrained): isolate
            # the message by splitting. The error's text may quote the value: not kept.
            return Outcome.rejected(
                f"{type(exc).__name__} ({state}) writing to the warehouse", split=True
            )
        if exc.diag.message_primary:
            detail = f"{type(exc).__name__} ({state}): {exc.diag.message_primary}"
        else:  # a connection failure, from libpq
            detail = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
        if self._password:
            detail = detail.replace(self._password, "***")
        return Outcome.transient(f"{detail[:300]} (warehouse at {self.target})")

    # -- tables and columns --------------------------------------------------------------
    def _catalog(
        self, conn: psycopg.Connection[Any], table: str | None = None
    ) -> dict[str, dict[str, str]]:
        query = _CATALOG + (" AND c.relname = %s" if table else "")
        found: dict[str, dict[str, str]] = {}
        for relname, column, sql_type in conn.execute(
            query, [self.schema, table] if table else [self.schema]
        ):
            found.setdefault(relname, {})[column] = sql_type
        return found

    def _ensure_columns(
        self, conn: psycopg.Connection[Any], layouts: Sequence[Layout]
    ) -> dict[str, dict[str, str]]:
        """The column types of the tables written to, after adding what is missing."""
        session = self._session.get()
        with session.lock:
            columns = session.columns
        if columns is None:
            columns = self._catalog(conn)
            with session.lock:
                session.columns = columns
        missing: dict[str, dict[str, str]] = {}
        for laid in layouts:
            rows = laid.rows if laid.latest is None else [*laid.rows, laid.latest]
            for row in rows:
                known = columns.get(row.table, {})
                for column, value in row.values.items():
                    if column not in known:
                        # Segment: a new column takes the type of its latest value in the batch.
                        missing.setdefault(row.table, {})[column] = infer(value)
        for table in sorted(missing):
            standard = standard_columns(table)
            new = {c: standard.get(c, kind) for c, kind in missing[table].items()}
            found = self._add_columns(conn, table, new)
            if not found.keys() >= new.keys():
                raise _CatalogChanged(table)
            with session.lock:
                columns = {**columns, table: found}
                session.columns = columns
        return columns

    def _add_columns(
        self, conn: psycopg.Connection[Any], table: str, new: dict[str, str]
    ) -> dict[str, str]:
        """Create ``table`` or add its ``new`` columns; returns its columns as they are."""
        name = sql.Identifier(self.schema, table)
        for attempt in range(DDL_ATTEMPTS):
            try:
                with conn.transaction():
                    # An ALTER waiting for its lock makes every insert into the table queue
                    # behind it: it waits no longer than a batch may take.
                    conn.execute("SELECT set_config('lock_timeout', %s, true)", [self._ms])
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", [self._lock_key])
                    existing = self._catalog(conn, table).get(table)
                    if existing is None:
                        self._create_table(conn, table, new)
                    else:
                        # Also Segment's own columns, should the table predate them.
                        wanted = {**standard_columns(table), **new}
                        add = [(c, t) for c, t in wanted.items() if c not in existing]
                        if add:
                            conn.execute(
                                sql.SQL("ALTER TABLE {} ").format(name)
                                + sql.SQL(", ").join(
                                    sql.SQL("ADD COLUMN IF NOT EXISTS {} {}").format(
                                        sql.Identifier(c), sql.SQL(t)
                                    )
                                    for c, t in add
                                )
                            )
                break
            except _DDL_RACES:
                if attempt == DDL_ATTEMPTS - 1:
                    raise
        return self._catalog(conn, table).get(table, {})

    def _create_table(self, conn: psycopg.Connection[Any], table: str, new: dict[str, str]) -> None:
        present = conn.execute(
            "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s", [self.schema]
        ).fetchone()
        if present is None:  # checked first: IF NOT EXISTS still needs the CREATE privilege
            conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
            )
        wanted = {**standard_columns(table), **new}
        definitions = [
            sql.SQL("{} {}{}").format(
                sql.Identifier(c), sql.SQL(t), sql.SQL(" PRIMARY KEY" if c == "id" else "")
            )
            for c, t in wanted.items()
        ]
        conn.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
                sql.Identifier(self.schema, table), sql.SQL(", ").join(definitions)
            )
        )

    # -- rows ----------------------------------------------------------------------------
    def _note(self, fit: Fit, what: str) -> None:
        kind = "warehouse_dropped" if fit is Fit.DROPPED else "warehouse_converted"
        metrics.count(kind)
        metrics.warn_once_per_interval(
            kind,
            "destination %s: %s",
            self.name,
            what,
            logger=log,
        )

    def _params(
        self, rows: Sequence[Row], table: str, types: Mapping[str, str]
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """The columns written to ``table`` and each row's values, fitted to their types."""
        names: dict[str, None] = {}
        for row in rows:
            names.update(dict.fromkeys(row.values))
        columns = list(names)
        plan = [(c, native(types[c]), fitter(types[c])) for c in columns]
        params = []
        for row in rows:
            values = row.values
            out = []
            for column, as_is, fit_to in plan:
                value = values.get(column)
                if value is not None and type(value) not in as_is:
                    value, how = fit_to(value)
                    if how is not Fit.AS_IS:
                        kind = _JSON_TYPES.get(type(values[column]), "array")
                        self._note(
                            how,
                            f"{table}.{column} is {types[column]}: a {kind} value was {how.value}",
                        )
                out.append(value)
            params.append(tuple(out))
        return columns, params

    def _insert(
        self,
        cur: psycopg.Cursor[Any],
        table: str,
        names: Sequence[str],
        params: Sequence[tuple[Any, ...]],
        returning: bool,
    ) -> set[str]:
        """Multi-row inserts (one statement per chunk, under PostgreSQL's 65,535 parameters);
        the ids inserted when ``returning`` (those already there are not)."""
        head = sql.SQL("INSERT INTO {} ({}) VALUES ").format(
            sql.Identifier(self.schema, table), sql.SQL(", ").join(map(sql.Identifier, names))
        )
        tail = " ON CONFLICT (id) DO NOTHING" + (" RETURNING id" if returning else "")
        one = "(" + ", ".join(["%b"] * len(names)) + ")"
        per_chunk = max(MAX_PARAMS // len(names), 1)
        inserted: set[str] = set()
        for start in range(0, len(params), per_chunk):
            chunk = params[start : start + per_chunk]
            values = sql.SQL(", ".join([one] * len(chunk)))
            cur.execute(head + values + sql.SQL(tail), [v for row in chunk for v in row])
            if returning:
                inserted.update(r[0] for r in cur.fetchall())
        return inserted

    def _write(
        self,
        conn: psycopg.Connection[Any],
        layouts: Sequence[Layout],
        columns: Mapping[str, Mapping[str, str]],
    ) -> None:
        by_table: dict[str, list[Row]] = {}
        for laid in layouts:
            for row in laid.rows:
                by_table.setdefault(row.table, []).append(row)
        inserted: set[str] = set()
        # Tables in name order and rows in id order: two workers writing overlapping batches
        # wait for each other instead of deadlocking.
        with conn.transaction(), conn.cursor() as cur:
            for table in sorted(by_table):
                rows = sorted(by_table[table], key=lambda r: str(r.values["id"]))
                names, params = self._params(rows, table, columns[table])
                found = self._insert(cur, table, names, params, table in ("identifies", "groups"))
                inserted |= found
            # The latest traits only from calls new to the warehouse, oldest first.
            latest: dict[str, list[Row]] = {}
            for laid in layouts:
                if laid.latest is not None and laid.rows[0].values["id"] in inserted:
                    latest.setdefault(laid.latest.table, []).append(laid.latest)
            for table in sorted(latest):
                rows = sorted(latest[table], key=lambda r: (r.values["id"], r.values["timestamp"]))
                names, params = self._params(rows, table, columns[table])
                cur.executemany(self._merge_query(table, names), params)

    def _merge_query(self, table: str, names: Sequence[str]) -> sql.Composed:
        """An upsert keeping the latest state: a newer call's values win, an older call's
        only fill in what is unknown (so a late re-delivery cannot roll traits back)."""
        newer = sql.SQL("(t.timestamp IS NULL OR EXCLUDED.timestamp >= t.timestamp)")
        sets = []
        for name in names:
            col = sql.Identifier(name)
            if name == "id":
                continue
            if name == "timestamp":
                value: sql.Composable = sql.SQL("GREATEST(t.timestamp, EXCLUDED.timestamp)")
            elif name in ("received_at", "uuid_ts"):
                value = sql.SQL("CASE WHEN {} THEN EXCLUDED.{} ELSE t.{} END").format(
                    newer, col, col
                )
            else:
                value = sql.SQL(
                    "CASE WHEN {0} THEN COALESCE(EXCLUDED.{1}, t.{1})"
                    " ELSE COALESCE(t.{1}, EXCLUDED.{1}) END"
                ).format(newer, col)
            sets.append(sql.SQL("{} = {}").format(col, value))
        return sql.SQL(
            "INSERT INTO {} AS t ({}) VALUES ({}) ON CONFLICT (id) DO UPDATE SET {}"
        ).format(
            sql.Identifier(self.schema, table),
            sql.SQL(", ").join(map(sql.Identifier, names)),
            sql.SQL(", ").join(sql.Placeholder() * len(names)),
            sql.SQL(", ").join(sets),
        )
