"""Producer: puts messages into a TableQueue's table from any thread, on the connector's
pooled connections, and creates (or upgrades) the table on first use; used by
TableQueue.put, put_many, publish and publish_batch (the queue's sink side)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import pymysql.err

from actors import EncodeError
from onestep.kit import check_delay

from ._connection import encode_strict_json, error_code, transaction
from ._queue_schema import NO_SUCH_TABLE, UNKNOWN_COLUMN, QueueSchema

if TYPE_CHECKING:
    from ._connector import MySQLConnector

# Rows per multi-row INSERT (pymysql's executemany packs them into one statement).
_ROWS_PER_INSERT = 1000


class Producer:
    """Encodes bodies and meta as JSON and inserts them as pending rows.

    Stateless apart from its statements, so any number of threads may use one: each
    call takes its own pooled connection (never one connection on two threads)."""

    def __init__(self, connector: MySQLConnector, schema: QueueSchema) -> None:
        self.connector = connector
        self.schema = schema
        c, t = schema.columns, schema.quoted_table
        self.has_meta = c.meta is not None
        columns = [c.payload, *([c.meta] if c.meta is not None else [])]
        columns += [c.status, c.attempts, c.available_at]
        names = ", ".join(columns)
        values = "%s, %s, " if self.has_meta else "%s, "
        self._sql_put = (
            f"INSERT INTO {t} ({names}) VALUES "
            f"({values}'pending', %s, NOW(6) + INTERVAL %s MICROSECOND)"
        )
        # only placeholders in VALUES: pymysql's executemany then sends one multi-row
        # INSERT per chunk instead of one statement per row
        self._sql_insert = f"INSERT INTO {t} ({names}) VALUES ({values}%s, %s, %s)"

    # -- encoding (the caller's thread, before anything is written) ----------------------

    def encode_meta(self, meta: Any) -> str | None:
        """The JSON text of a message's meta (a dict or None)."""
        if meta is None:
            return None
        if not isinstance(meta, dict):
            raise TypeError(f"meta must be a dict or None, got {type(meta).__name__}")
        if not self.has_meta:
            if not meta:
                return None
            raise ValueError(
                f"table {self.schema.table!r} has no meta column (meta_column=None), so a "
                "message cannot carry meta"
            )
        return encode_strict_json(meta, "meta")

    def row(self, payload: str, meta: str | None) -> tuple[Any, ...]:
        return (payload, meta) if self.has_meta else (payload,)

    # -- writing (any thread, on a pooled connection) ---------------------------------------

    def put(self, body: Any, meta: Any, delay_s: Any, attempts: int = 0) -> int:
        """Insert one message (with `attempts` executions so far); returns its row id
        once committed."""
        delay_us = _delay_us(delay_s)
        row = self.row(encode_strict_json(body, "body"), self.encode_meta(meta))
        args = (*row, attempts, delay_us)

        def insert(conn: Any) -> int:
            with conn.cursor() as cursor:
                cursor.execute(self._sql_put, args)
                return int(cursor.lastrowid)

        return int(self.run(insert))

    def put_many(self, bodies: Iterable[Any], meta: Any, delay_s: Any) -> int:
        """Insert every body (all with `meta`) in one transaction; returns how many."""
        delay_us = _delay_us(delay_s)
        if isinstance(bodies, str | bytes | dict) or not isinstance(bodies, Iterable):
            raise TypeError(
                f"bodies must be an iterable of message bodies (a list, say), got "
                f"{type(bodies).__name__}"
            )
        meta_text = self.encode_meta(meta)
        rows = [
            self.row(encode_strict_json(body, f"bodies[{index}]"), meta_text)
            for index, body in enumerate(bodies)
        ]
        return self.insert(rows, delay_us)

    def insert(self, rows: list[tuple[Any, ...]], delay_us: int = 0) -> int:
        """Insert encoded rows (see `row`) in one transaction, due `delay_us` from now
        by the server's clock; returns how many."""
        if not rows:
            return 0

        def insert(conn: Any) -> int:
            with conn.cursor() as cursor, transaction(conn):
                cursor.execute("SELECT NOW(6) + INTERVAL %s MICROSECOND", (delay_us,))
                (due,) = cursor.fetchone()
                for start in range(0, len(rows), _ROWS_PER_INSERT):
                    chunk = [
                        (*row, "pending", 0, due) for row in rows[start : start + _ROWS_PER_INSERT]
                    ]
                    cursor.executemany(self._sql_insert, chunk)
            return len(rows)

        return int(self.run(insert))

    def publish_batch(self, items: list[tuple[Any, Any]]) -> dict[int, BaseException] | None:
        """The sink side: insert every item that encodes, in one transaction; returns
        the ones that do not, as {index: EncodeError}. Meta is dropped when the table
        has no meta column."""
        refused: dict[int, BaseException] = {}
        rows = []
        for index, (body, meta) in enumerate(items):
            try:
                meta_text = self.encode_meta(meta) if self.has_meta else None
                rows.append(self.row(encode_strict_json(body, "body"), meta_text))
            except (TypeError, ValueError) as exc:
                refused[index] = exc if isinstance(exc, EncodeError) else EncodeError(str(exc))
        self.insert(rows)
        return refused or None

    def run(self, operation: Callable[[Any], Any]) -> Any:
        """Run `operation(conn)` on a pooled connection. If the table is missing, or
        lacks a column (made by an older onestep), make it ready and run it once more;
        an existing table the queue may not change gets a clear error instead."""

        def on(conn: Any) -> Any:
            try:
                return operation(conn)
            except pymysql.err.MySQLError as exc:
                if error_code(exc) not in (NO_SUCH_TABLE, UNKNOWN_COLUMN):
                    raise
            self.schema.ensure(conn)
            return operation(conn)

        return self.connector.run_pooled(on)


def _delay_us(delay_s: Any) -> int:
    return int(check_delay("delay_s", delay_s) * 1_000_000)
