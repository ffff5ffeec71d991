"""TableSink: writes returned dicts as rows of a MySQL/MariaDB table (insert or upsert),
batched; made by MySQLConnector.table_sink, run on its SinkActor's thread."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pymysql.err

from onestep import Sink
from onestep._checks import check_int

from ._connection import (
    close_quietly,
    is_connection_error,
    placeholders,
    quote_ident,
    transaction,
)

if TYPE_CHECKING:
    from ._connector import MySQLConnector


class TableSink(Sink):
    """Writes each returned dict as a row (a list of dicts as several rows), in `insert`
    mode or `upsert` mode (`INSERT ... ON DUPLICATE KEY UPDATE` of every column not in
    `keys`). Nested values (dicts, lists) are stored as JSON text. `publish_batch` writes
    everything the SinkActor gathered (up to `batch_size` results) in one transaction
    with `executemany` (a multi-row INSERT). Runs on the sink actor's thread.
    """

    def __init__(
        self,
        connector: MySQLConnector,
        table: str,
        *,
        mode: str = "insert",
        keys: Sequence[str] = (),
        batch_size: int = 500,
        auto_create: bool = False,
        name: str | None = None,
    ) -> None:
        if mode not in ("insert", "upsert"):
            raise ValueError(f"mode must be 'insert' or 'upsert', got {mode!r}")
        if isinstance(keys, str):
            keys = (keys,)
        keys = tuple(keys)
        for key in keys:
            quote_ident(key, "keys")
        if auto_create and not keys and mode == "upsert":
            raise ValueError("keys must name the key columns when mode='upsert' and auto_create")
        self.connector = connector
        self.table = table
        self._table = quote_ident(table, "table")
        self.mode = mode
        self.keys = keys
        self.batch_size = self.max_batch = check_int("batch_size", batch_size, minimum=1)
        self.auto_create = bool(auto_create)
        self.name = name or f"mysql:{table}"
        self._conn: Any = None
        self._statements: dict[tuple[str, ...], str] = {}
        self._created = False

    def __repr__(self) -> str:
        return f"TableSink({self.table!r}, mode={self.mode!r}, connector={self.connector!r})"

    def open(self) -> None:
        """Connect; runs on the sink actor's thread. Without autocommit the first INSERT
        opens the transaction: one round trip less per batch than an explicit BEGIN."""
        self._conn = self.connector.connect(autocommit=False)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        close_quietly(conn)

    def publish(self, body: Any, meta: dict[str, Any] | None = None) -> None:
        self.publish_batch([(body, meta)])

    def publish_batch(self, items: Sequence[tuple[Any, Any]]) -> None:
        """Write every row of `items` in one transaction; all or nothing."""
        groups = _group_rows(items)
        if not groups:
            return
        try:
            self._write(groups)
        except pymysql.err.MySQLError as exc:
            if not is_connection_error(exc):
                raise
            # the connection was lost: the transaction did not commit (or the error
            # came from commit, when it may have); reconnect once and write it again
            close_quietly(self._conn)
            self._conn = None
            self._conn = self.connector.connect(autocommit=False)
            self._write(groups)

    def _write(self, groups: dict[tuple[str, ...], list[tuple[Any, ...]]]) -> None:
        conn = self._conn
        if conn is None:
            conn = self._conn = self.connector.connect(autocommit=False)
        if self.auto_create and not self._created:
            self._create(conn, groups)
        # without autocommit the first INSERT opens the transaction (see open())
        with conn.cursor() as cursor, transaction(conn, begin=False):
            for columns, rows in groups.items():
                cursor.executemany(self._statement(columns), rows)

    def _statement(self, columns: tuple[str, ...]) -> str:
        sql = self._statements.get(columns)
        if sql is None:
            quoted = [quote_ident(column, "column") for column in columns]
            values = placeholders(len(columns))
            sql = f"INSERT INTO {self._table} ({', '.join(quoted)}) VALUES ({values})"
            if self.mode == "upsert":
                updates = [
                    q for column, q in zip(columns, quoted, strict=True) if column not in self.keys
                ]
                if not updates:  # only key columns: nothing to update, keep the row
                    updates = quoted[:1]
                sql += " ON DUPLICATE KEY UPDATE " + ", ".join(
                    f"{q} = VALUES({q})" for q in updates
                )
            self._statements[columns] = sql
        return sql

    def _create(self, conn: Any, groups: dict[tuple[str, ...], list[tuple[Any, ...]]]) -> None:
        """CREATE TABLE IF NOT EXISTS from the first row: key columns VARCHAR(255) or
        BIGINT, others BIGINT, DOUBLE or LONGTEXT by their first value."""
        columns, rows = next(iter(groups.items()))
        definitions = []
        for column, value in zip(columns, rows[0], strict=True):
            definitions.append(
                f"{quote_ident(column, 'column')} {_column_type(value, column in self.keys)}"
            )
        if self.keys:
            keys = ", ".join(quote_ident(key, "keys") for key in self.keys)
            definitions.append(f"PRIMARY KEY ({keys})")
        sql = (
            f"CREATE TABLE IF NOT EXISTS {self._table} ({', '.join(definitions)}) "
            "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        )
        with conn.cursor() as cursor:
            cursor.execute(sql, ())
        self._created = True

    def describe(self) -> dict[str, Any]:
        return {
            "type": "MySQLTableSink",
            "name": self.name,
            "table": self.table,
            "mode": self.mode,
            "server": self.connector.url,
        }


_JSON_TYPES = (dict, list, tuple)


def _group_rows(items: Sequence[tuple[Any, Any]]) -> dict[tuple[str, ...], list[tuple[Any, ...]]]:
    """Rows of every body, grouped by their columns (one executemany per group).

    Columns are checked once per group and values JSON-encoded only when a row holds a
    container: this loop runs for every row, and doing less in it took the sink from
    170,000 to 189,000 rows/s when called directly (raw executemany: 231,000).
    """
    groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    for body, _ in items:
        for row in (body,) if type(body) is dict and body else _rows_of(body):
            columns = tuple(row)
            group = groups.get(columns)
            if group is None:
                _check_columns(columns)
                group = groups[columns] = []
            values = tuple(row.values())
            for value in values:
                if isinstance(value, _JSON_TYPES):
                    values = tuple(map(_column_value, values))
                    break
            group.append(values)
    return groups


def _check_columns(columns: tuple[Any, ...]) -> None:
    for column in columns:
        if not isinstance(column, str):
            raise TypeError(f"column names must be strings, got {column!r}")


def _rows_of(body: Any) -> list[dict[str, Any]]:
    if isinstance(body, dict):
        rows = [body]
    elif isinstance(body, list) and all(isinstance(row, dict) for row in body):
        rows = body
    else:
        raise TypeError(
            f"a MySQL table sink takes a dict or a list of dicts, got {type(body).__name__}"
        )
    for row in rows:
        if not row:
            raise ValueError("a MySQL table sink cannot write an empty dict")
    return rows


def _column_value(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, separators=(",", ":"))
    return value


def _column_type(value: Any, is_key: bool) -> str:
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int):
        return "BIGINT"
    if isinstance(value, float):
        return "DOUBLE"
    return "VARCHAR(255)" if is_key else "LONGTEXT"
