"""Producer: puts messages into a TableQueue's table from any thread, on the connector's
pooled connections, and creates (or upgrades) the table on first use; used by
TableQueue.put, put_many, publish and publish_batch (the queue's sink side).

Every message is checked before anything is written, with the errors every queue gives
(onestep.kit): TypeError for a meta that is not a mapping, EncodeError for what is not
JSON, MessageTooLarge for a row whose INSERT would exceed the server's
`max_allowed_packet` (the server would drop the connection: "server has gone away").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import pymysql.err

from onestep.kit import (
    EncodeError,
    check_bodies,
    check_delay,
    check_meta,
    check_priority,
    check_size,
    encode_json,
    utf8_size,
)

from ._connection import error_code, transaction
from ._queue_schema import NO_SUCH_TABLE, UNKNOWN_COLUMN, QueueSchema

if TYPE_CHECKING:
    from ._connector import MySQLConnector

# Rows per multi-row INSERT (pymysql's executemany packs them into one statement).
_ROWS_PER_INSERT = 1000

# What an INSERT of one row sends besides its text values: the statement, the other
# values, the packet's header.
_STATEMENT_BYTES = 1024


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
        # A put with a priority names the priority column; one without leaves it to its
        # default (0), so a table without the column takes it (see QueueSchema.PRIORITY).
        if c.priority is not None:
            names += f", {c.priority}"
            self._sql_put_priority = (
                f"INSERT INTO {t} ({names}) VALUES "
                f"({values}'pending', %s, NOW(6) + INTERVAL %s MICROSECOND, %s)"
            )
            self._sql_insert_priority = f"INSERT INTO {t} ({names}) VALUES ({values}%s, %s, %s, %s)"

    # -- encoding (the caller's thread, before anything is written) ----------------------

    def encode_meta(self, meta: Any) -> str | None:
        """The JSON text of a message's meta (a mapping or None)."""
        # with tracing on, the caller's trace context is added (not without a meta column)
        meta = check_meta(meta, trace=self.has_meta)
        if meta is None:
            return None
        if not self.has_meta:
            if not meta:
                return None
            raise ValueError(
                f"table {self.schema.table!r} has no meta column (meta_column=None), so a "
                "message cannot carry meta"
            )
        return encode_json(meta, "meta")

    def row(self, payload: str, meta: str | None, what: str = "body") -> tuple[Any, ...]:
        """The values of one row, once its INSERT is known to fit in the server's
        `max_allowed_packet` (MessageTooLarge naming `what` otherwise)."""
        size = _STATEMENT_BYTES + _quoted_size(payload)
        if meta is not None:
            size += _quoted_size(meta)
        check_size(
            f"{what} (as an INSERT)",
            size,
            self.connector.max_allowed_packet(),
            "the server's max_allowed_packet",
            f"table {self.schema.table!r}",
        )
        return (payload, meta) if self.has_meta else (payload,)

    # -- writing (any thread, on a pooled connection) ---------------------------------------

    def put(
        self, body: Any, meta: Any, delay_s: Any, attempts: int = 0, priority: Any = None
    ) -> int:
        """Insert one message (with `attempts` executions so far, and `priority`);
        returns its row id once committed."""
        delay_us = _delay_us(delay_s)
        self.check_priority(priority)
        meta_text = self.encode_meta(meta)
        row = self.row(encode_json(body, "body"), meta_text)
        args = (*row, attempts, delay_us)
        sql = self._sql_put
        if priority is not None:
            sql, args = self._sql_put_priority, (*args, priority)

        def insert(conn: Any) -> int:
            with conn.cursor() as cursor:
                cursor.execute(sql, args)
                return int(cursor.lastrowid)

        return int(self.run(insert, needs_priority=priority is not None))

    def put_many(self, bodies: Iterable[Any], meta: Any, delay_s: Any, priority: Any = None) -> int:
        """Insert every body (all with `meta` and `priority`) in one transaction;
        returns how many."""
        delay_us = _delay_us(delay_s)
        self.check_priority(priority)
        check_bodies(bodies)
        meta_text = self.encode_meta(meta)
        rows = [
            self.row(encode_json(body, f"bodies[{index}]"), meta_text, f"bodies[{index}]")
            for index, body in enumerate(bodies)
        ]
        return self.insert(rows, delay_us, priority)

    def check_priority(self, priority: Any) -> None:
        """ValueError naming `priority` unless it is None or an int this table can hold."""
        if priority is None:
            return
        check_priority(priority)
        if not -(2**31) <= priority < 2**31:
            raise ValueError(f"priority must fit the priority column's INT, got {priority!r}")
        if self.schema.has_priority is False:
            raise self.schema.priority_refused()

    def insert(self, rows: list[tuple[Any, ...]], delay_us: int = 0, priority: Any = None) -> int:
        """Insert encoded rows (see `row`) in one transaction, due `delay_us` from now
        by the server's clock, with `priority` (None: the column's default); returns
        how many."""
        if not rows:
            return 0
        packet = self.connector.max_allowed_packet()
        sql = self._sql_insert if priority is None else self._sql_insert_priority
        extra = () if priority is None else (priority,)

        def insert(conn: Any) -> int:
            with conn.cursor() as cursor, transaction(conn):
                # pymysql packs a chunk into statements of at most this many bytes
                cursor.max_stmt_length = min(cursor.max_stmt_length, packet - _STATEMENT_BYTES)
                cursor.execute("SELECT NOW(6) + INTERVAL %s MICROSECOND", (delay_us,))
                (due,) = cursor.fetchone()
                for start in range(0, len(rows), _ROWS_PER_INSERT):
                    chunk = [
                        (*row, "pending", 0, due, *extra)
                        for row in rows[start : start + _ROWS_PER_INSERT]
                    ]
                    cursor.executemany(sql, chunk)
            return len(rows)

        return int(self.run(insert, needs_priority=priority is not None))

    def publish_batch(self, items: list[tuple[Any, Any]]) -> dict[int, BaseException] | None:
        """The sink side: insert every item that encodes, in one transaction; returns
        the ones that do not, as {index: EncodeError} (MessageTooLarge for one over
        `max_allowed_packet`). Meta is dropped when the table has no meta column."""
        refused: dict[int, BaseException] = {}
        rows = []
        for index, (body, meta) in enumerate(items):
            try:
                meta_text = self.encode_meta(meta) if self.has_meta else None
                rows.append(self.row(encode_json(body, "body"), meta_text))
            except (TypeError, ValueError) as exc:
                refused[index] = exc if isinstance(exc, EncodeError) else EncodeError(str(exc))
        self.insert(rows)
        return refused or None

    def run(self, operation: Callable[[Any], Any], needs_priority: bool = False) -> Any:
        """Run `operation(conn)` on a pooled connection. If the table is missing, or
        lacks a column (made by an older onestep), make it ready and run it once more;
        an existing table the queue may not change gets a clear error instead (also
        one without the priority column for an operation that `needs_priority`)."""

        def on(conn: Any) -> Any:
            try:
                return operation(conn)
            except pymysql.err.MySQLError as exc:
                if error_code(exc) not in (NO_SUCH_TABLE, UNKNOWN_COLUMN):
                    raise
            self.schema.ensure(conn)
            if needs_priority and not self.schema.has_priority:
                raise self.schema.priority_refused()
            return operation(conn)

        return self.connector.run_pooled(on)


def _delay_us(delay_s: Any) -> int:
    return int(check_delay("delay_s", delay_s) * 1_000_000)


def _quoted_size(text: str) -> int:
    """The bytes `text` takes in a statement: UTF-8, quoted, with pymysql's escapes (JSON
    text holds no raw control characters, so only these three are escaped)."""
    return utf8_size(text) + 2 + text.count("'") + text.count('"') + text.count("\\")
