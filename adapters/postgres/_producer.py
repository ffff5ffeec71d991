"""Producer: puts messages into a TableQueue's table from any thread, on the connector's
pooled connections, and creates the table on first use; used by TableQueue.put,
put_many, publish and publish_batch (the queue's sink side). Every INSERT fires the
table's NOTIFY trigger, which wakes idle sources."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import psycopg.errors

from onestep.kit import EncodeError, check_bodies, check_delay, check_priority

from ._codec import encode_message
from ._queue_schema import QueueSchema

if TYPE_CHECKING:
    from ._connector import PostgresConnector

# Rows per INSERT ... SELECT FROM unnest(...): one statement and one array argument each.
_ROWS_PER_INSERT = 5000


class Producer:
    """Encodes bodies and meta as JSON and inserts them as pending rows.

    Stateless apart from its statements, so any number of threads may use one: each
    call borrows its own pooled connection (never one connection on two threads)."""

    def __init__(self, connector: PostgresConnector, schema: QueueSchema) -> None:
        self.connector = connector
        self.schema = schema
        c, t = schema.columns, schema.quoted_table
        self.has_meta = c.meta is not None
        due = "clock_timestamp() + %s * interval '1 second'"
        if self.has_meta:
            names = f"{c.payload}, {c.meta}, {c.attempts}, {c.available_at}"
            self._sql_put = (
                f"INSERT INTO {t} ({names}) VALUES (%s, %s::jsonb, %s, {due}) RETURNING {c.id}"
            )
            self._sql_insert = (
                f"INSERT INTO {t} ({names}) SELECT p, m, 0, {due} "
                "FROM unnest(%s::text[], %s::jsonb[]) AS r(p, m)"
            )
            self._sql_insert_shared = (
                f"INSERT INTO {t} ({names}) SELECT p, %s::jsonb, 0, {due} "
                "FROM unnest(%s::text[]) AS r(p)"
            )
        else:
            names = f"{c.payload}, {c.attempts}, {c.available_at}"
            self._sql_put = f"INSERT INTO {t} ({names}) VALUES (%s, %s, {due}) RETURNING {c.id}"
            self._sql_insert_shared = (
                f"INSERT INTO {t} ({names}) SELECT p, 0, {due} FROM unnest(%s::text[]) AS r(p)"
            )
            self._sql_insert = self._sql_insert_shared
        # A put with a priority names the priority column; one without leaves it to its
        # default (0), so a table without the column takes it (see QueueSchema.PRIORITY).
        if c.priority is not None:
            meta_name, meta_value = (f", {c.meta}", ", %s::jsonb") if self.has_meta else ("", "")
            names = f"{c.payload}{meta_name}, {c.attempts}, {c.available_at}, {c.priority}"
            self._sql_put_priority = (
                f"INSERT INTO {t} ({names}) VALUES (%s{meta_value}, %s, {due}, %s) RETURNING {c.id}"
            )
            self._sql_insert_priority = (
                f"INSERT INTO {t} ({names}) SELECT p{meta_value}, 0, {due}, %s "
                "FROM unnest(%s::text[]) AS r(p)"
            )

    def _encode(self, body: Any, meta: Any, what: str = "body") -> tuple[str, str | None]:
        return encode_message(
            body,
            meta,
            body_name=what,
            has_meta=self.has_meta,
            limit=self.connector.max_message_bytes,
        )

    # -- writing (any thread, on a pooled connection) ---------------------------------------

    def put(
        self, body: Any, meta: Any, delay_s: Any, attempts: int = 0, priority: Any = None
    ) -> int:
        """Insert one message (with `attempts` executions so far, and `priority`);
        returns its row id once committed."""
        delay = check_delay("delay_s", delay_s)
        self.check_priority(priority)
        payload, meta_text = self._encode(body, meta)
        args: tuple[Any, ...] = (
            (payload, meta_text, attempts, delay) if self.has_meta else (payload, attempts, delay)
        )
        sql = self._sql_put
        if priority is not None:
            sql, args = self._sql_put_priority, (*args, priority)

        def insert(conn: Any) -> int:
            row = conn.execute(sql, args).fetchone()
            return int(row[0])

        return int(self.run(insert, needs_priority=priority is not None))

    def check_priority(self, priority: Any) -> None:
        """ValueError naming `priority` unless it is None or an int this table can hold."""
        if priority is None:
            return
        check_priority(priority)
        if not -(2**31) <= priority < 2**31:
            raise ValueError(f"priority must fit the priority column's integer, got {priority!r}")
        if self.schema.has_priority is False:
            raise self.schema.priority_refused()

    def put_many(self, bodies: Iterable[Any], meta: Any, delay_s: Any, priority: Any = None) -> int:
        """Insert every body (all with `meta` and `priority`) in one transaction;
        returns how many."""
        delay = check_delay("delay_s", delay_s)
        self.check_priority(priority)
        check_bodies(bodies)
        _, meta_text = self._encode(None, meta)
        payloads = [
            self._encode(body, None, f"bodies[{index}]")[0] for index, body in enumerate(bodies)
        ]
        if not payloads:
            return 0
        leading: tuple[Any, ...] = (meta_text, delay) if self.has_meta else (delay,)
        sql = self._sql_insert_shared
        if priority is not None:
            sql, leading = self._sql_insert_priority, (*leading, priority)

        def insert(conn: Any) -> int:
            if len(payloads) <= _ROWS_PER_INSERT:  # one statement: atomic on its own
                conn.execute(sql, (*leading, payloads))
                return len(payloads)
            with conn.transaction():
                for start in range(0, len(payloads), _ROWS_PER_INSERT):
                    chunk = payloads[start : start + _ROWS_PER_INSERT]
                    conn.execute(sql, (*leading, chunk))
            return len(payloads)

        return int(self.run(insert, needs_priority=priority is not None))

    def publish_batch(self, items: list[tuple[Any, Any]]) -> dict[int, BaseException] | None:
        """The sink side: insert every item that encodes, in one statement; returns the
        ones that do not, as {index: EncodeError}. Meta is dropped when the table has
        no meta column."""
        refused: dict[int, BaseException] = {}
        payloads: list[str] = []
        metas: list[str | None] = []
        for index, (body, meta) in enumerate(items):
            try:
                payload, meta_text = self._encode(body, meta if self.has_meta else None)
            except (TypeError, ValueError) as exc:
                refused[index] = exc if isinstance(exc, EncodeError) else EncodeError(str(exc))
                continue
            payloads.append(payload)
            metas.append(meta_text)
        if payloads:
            args = (0.0, payloads, metas) if self.has_meta else (0.0, payloads)

            def insert(conn: Any) -> None:
                conn.execute(self._sql_insert, args)

            self.run(insert)
        return refused or None

    def run(self, operation: Callable[[Any], Any], needs_priority: bool = False) -> Any:
        """Run `operation(conn)` on a pooled connection. If the table is missing, or
        lacks a column (made by an older onestep), make it ready and run it once more;
        an existing table the queue may not change gets a clear error instead (also
        one without the priority column for an operation that `needs_priority`)."""

        def on(conn: Any) -> Any:
            try:
                return operation(conn)
            except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
                pass
            self.schema.ensure(conn)
            if needs_priority and not self.schema.has_priority:
                raise self.schema.priority_refused()
            return operation(conn)

        return self.connector.run_pooled(on)
