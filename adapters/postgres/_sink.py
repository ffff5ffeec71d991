"""TableSink: writes returned dicts as rows of a PostgreSQL table (insert or upsert),
batched; made by PostgresConnector.table_sink, run on its SinkActor's thread."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from onestep import Sink
from onestep.kit import EncodeError, NotBrowsable, check_int, encode_json

from ._connection import close_quietly, is_connection_error, quote_ident, unquoted

if TYPE_CHECKING:
    from ._connector import PostgresConnector

# PostgreSQL takes at most 65535 arguments per statement; and past a few hundred rows a
# longer VALUES list saves nothing.
_MAX_ARGS, _MAX_ROWS = 65535, 500

Groups = dict[tuple[str, ...], list[tuple[Any, ...]]]


class TableSink(Sink):
    """Writes each returned dict as a row (a list of dicts as several rows), in `insert`
    mode or `upsert` mode (`INSERT ... ON CONFLICT (keys) DO UPDATE` of every column not
    in `keys`; `keys` must name a primary key or unique constraint). Nested values
    (dicts, lists) are written as JSON text, which a jsonb or text column takes.
    `publish_batch` writes everything the SinkActor gathered (up to `batch_size`
    results) in one transaction, one multi-row INSERT per set of columns. In upsert
    mode a batch that names one key twice keeps the later row (as if written one by
    one). Runs on the sink actor's thread.
    """

    def __init__(
        self,
        connector: PostgresConnector,
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
        if mode == "upsert" and not keys:
            raise ValueError(
                "keys must name the key columns when mode='upsert' (ON CONFLICT needs them)"
            )
        self.connector = connector
        self.table = table
        self._table = quote_ident(table, "table")
        self.mode = mode
        self.keys = keys
        self.batch_size = self.max_batch = check_int("batch_size", batch_size, minimum=1)
        self.auto_create = bool(auto_create)
        self.name = name or f"postgresql:{table}"
        self._conn: Any = None
        self._statements: dict[tuple[tuple[str, ...], int], str] = {}
        self._created = False

    def __repr__(self) -> str:
        return f"TableSink({self.table!r}, mode={self.mode!r}, connector={self.connector!r})"

    def open(self) -> None:
        """Connect; runs on the sink actor's thread."""
        self._conn = self.connector.connect()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        close_quietly(conn)

    def publish(self, body: Any, meta: dict[str, Any] | None = None) -> None:
        """Write one result (a dict or a list of dicts); EncodeError if it cannot be."""
        refused = self.publish_batch([(body, meta)])
        if refused:
            raise refused[0]

    def publish_batch(self, items: Sequence[tuple[Any, Any]]) -> dict[int, BaseException] | None:
        """Write the rows of every item that encodes in one transaction, all or nothing,
        and return the items that do not as {index: EncodeError} (they fail alone).
        A failure of the write itself (connection, SQL error) raises for all of them."""
        groups, refused = self._encode_batch(items)
        if not groups:
            return refused or None
        try:
            self._write(groups)
        except psycopg.Error as exc:
            if not is_connection_error(exc):
                raise
            # the connection was lost: the transaction did not commit (or the error
            # came from commit, when it may have: an upsert writes the same again, an
            # insert may write a row twice, which at-least-once allows); once more
            close_quietly(self._conn)
            self._conn = None
            self._write(groups)
        return refused or None

    def _write(self, groups: Groups) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            conn = self._conn = self.connector.connect()
        if self.auto_create and not self._created:
            self._create(conn, groups)
        if len(groups) == 1:
            # one statement (a COPY, or one INSERT of up to 500 rows) is atomic on its
            # own in autocommit: no BEGIN and COMMIT round trips, each of which also
            # waits for the GIL again when the task's thread is busy (the sink
            # benchmark's rows: 28-40k -> 63-73k rows/s, this machine under load)
            [(columns, rows)] = groups.items()
            if self.mode == "insert" or len(rows) <= self._rows_per_statement(columns):
                self._write_group(conn, columns, rows)
                return
        with conn.transaction():
            for columns, rows in groups.items():
                self._write_group(conn, columns, rows)

    def _write_group(
        self, conn: Any, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
    ) -> None:
        if self.mode == "insert":
            # COPY: 2-3x the rows/s of multi-row INSERTs of 500 (interleaved runs of
            # the sink benchmark's rows, this machine under load)
            with conn.cursor().copy(self._copy_statement(columns)) as copy:
                write_row = copy.write_row
                for row in rows:
                    write_row(row)
            return
        per_statement = self._rows_per_statement(columns)
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            args = [value for row in chunk for value in row]
            conn.execute(self._statement(columns, len(chunk)), args)

    @staticmethod
    def _rows_per_statement(columns: tuple[str, ...]) -> int:
        return max(1, min(_MAX_ROWS, _MAX_ARGS // len(columns)))

    def _copy_statement(self, columns: tuple[str, ...]) -> str:
        sql = self._statements.get((columns, 0))
        if sql is None:
            quoted = ", ".join(quote_ident(column, "column") for column in columns)
            # COPY takes no arguments: psycopg sends it as it is (a `%` stays single)
            sql = self._statements[(columns, 0)] = unquoted(
                f"COPY {self._table} ({quoted}) FROM STDIN"
            )
        return sql

    def _statement(self, columns: tuple[str, ...], count: int) -> str:
        sql = self._statements.get((columns, count))
        if sql is None:
            quoted = [quote_ident(column, "column") for column in columns]
            row = "(" + ", ".join(["%s"] * len(columns)) + ")"
            sql = f"INSERT INTO {self._table} ({', '.join(quoted)}) VALUES " + ", ".join(
                [row] * count
            )
            if self.mode == "upsert":
                keys = ", ".join(quote_ident(key, "keys") for key in self.keys)
                updates = [q for c, q in zip(columns, quoted, strict=True) if c not in self.keys]
                if updates:
                    sql += f" ON CONFLICT ({keys}) DO UPDATE SET " + ", ".join(
                        f"{q} = EXCLUDED.{q}" for q in updates
                    )
                else:  # only key columns: nothing to update, keep the row
                    sql += f" ON CONFLICT ({keys}) DO NOTHING"
            self._statements[(columns, count)] = sql
        return sql

    def _create(self, conn: Any, groups: Groups) -> None:
        """CREATE TABLE IF NOT EXISTS from the first row: bigint, double precision,
        boolean or text (nested values as JSON text) by the first value; the keys as
        the primary key."""
        columns, rows = next(iter(groups.items()))
        definitions = [
            f"{quote_ident(column, 'column')} {_column_type(value)}"
            for column, value in zip(columns, rows[0], strict=True)
        ]
        if self.keys:
            keys = ", ".join(quote_ident(key, "keys") for key in self.keys)
            definitions.append(f"PRIMARY KEY ({keys})")
        conn.execute(
            unquoted(f"CREATE TABLE IF NOT EXISTS {self._table} ({', '.join(definitions)})")
        )
        self._created = True

    # -- encoding (the sink actor's thread) --------------------------------------------------

    def _encode_batch(
        self, items: Sequence[tuple[Any, Any]]
    ) -> tuple[Groups, dict[int, BaseException]]:
        """The rows of every item, grouped by their columns (one INSERT per group), and
        the items that cannot be written, as {index: EncodeError}: a body that is not a
        dict or a list of dicts, a column name that is not a string, a nested value that
        is not valid JSON, an upsert row without a key column."""
        groups: Groups = {}
        refused: dict[int, BaseException] = {}
        for index, (body, _) in enumerate(items):
            # the common case first, and cheaply (this loop runs for every row): a dict
            # of plain values whose columns were checked for an earlier row. It cut
            # the encoding cost sevenfold (3.6 -> 0.5 us a row, the benchmark's rows).
            if type(body) is dict and body:
                values = tuple(body.values())
                for value in values:
                    kind = type(value)
                    if kind is str:
                        if "\x00" in value:
                            break
                    elif kind not in _PLAIN:
                        break
                else:
                    group = groups.get(tuple(body))
                    if group is not None:
                        group.append(values)
                        continue
            try:
                rows = [self._row(row) for row in _rows_of(body)]
            except EncodeError as exc:
                refused[index] = exc
                continue
            for columns, values in rows:
                groups.setdefault(columns, []).append(values)
        if self.mode == "upsert":
            for columns, rows in groups.items():
                at = [columns.index(key) for key in self.keys]
                latest = {tuple(row[i] for i in at): row for row in rows}
                if len(latest) < len(rows):
                    rows[:] = latest.values()
        return groups, refused

    def _row(self, row: dict[str, Any]) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        columns = tuple(row)
        values = tuple(row.values())
        for column in columns:
            if not isinstance(column, str):
                raise EncodeError(f"column names must be strings, got {column!r}")
        if self.mode == "upsert":
            absent = [key for key in self.keys if key not in row]
            if absent:
                raise EncodeError(f"an upsert row must hold every key column; missing {absent}")
        for value in values:
            if isinstance(value, dict | list | tuple) or (
                isinstance(value, str) and "\x00" in value
            ):
                return columns, tuple(_encoded(column, value) for column, value in row.items())
        return columns, values

    # -- operations tooling --------------------------------------------------------------

    def browse(self, limit: int | None = None, match: Any = None) -> list[Any]:
        """Always NotBrowsable: see `_refusal`."""
        raise NotBrowsable(self._refusal())

    def remove(self, ids: Any) -> int:
        """Always NotBrowsable: see `_refusal`."""
        raise NotBrowsable(self._refusal())

    def _refusal(self) -> str:
        # A dead letter written here is the body's columns only ("payload", "failure"),
        # without the meta that names its task, and rows have no id the sink knows.
        return (
            f"table sink {self.name!r} cannot list or replay dead letters: it writes only "
            "the body's columns (payload, failure), not the meta that names the task and "
            "keeps the original meta, and knows no row id; use "
            f"connector.table_queue({self.table!r}) as dead_letter instead (it keeps both)"
        )

    def describe(self) -> dict[str, Any]:
        return {
            "type": "PostgresTableSink",
            "name": self.name,
            "table": self.table,
            "mode": self.mode,
            "server": self.connector.url,
        }


# Values written as they are, with no look inside (str is checked for NUL apart).
_PLAIN = frozenset({int, float, bool, type(None)})


def _rows_of(body: Any) -> list[dict[str, Any]]:
    if isinstance(body, dict):
        rows = [body]
    elif isinstance(body, list) and all(isinstance(row, dict) for row in body):
        rows = body
    else:
        raise EncodeError(
            f"a PostgreSQL table sink takes a dict or a list of dicts, got {type(body).__name__}"
        )
    for row in rows:
        if not row:
            raise EncodeError("a PostgreSQL table sink cannot write an empty dict")
    return rows


def _encoded(column: str, value: Any) -> Any:
    """A value as written: containers as JSON text; EncodeError naming the column for
    text PostgreSQL cannot hold (the NUL character)."""
    if isinstance(value, dict | list | tuple):
        value = encode_json(value, f"the value of column {column!r}")
        if "\\u0000" in value:
            raise EncodeError(f"column {column!r}: jsonb cannot hold the NUL character")
    elif isinstance(value, str) and "\x00" in value:
        raise EncodeError(f"column {column!r}: PostgreSQL text cannot hold the NUL character")
    return value


def _column_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "bigint"
    if isinstance(value, float):
        return "double precision"
    return "text"  # strings, and nested values (JSON text)
