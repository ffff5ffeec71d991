"""BusinessTableSource: what a SQL connector's business-table queue does whatever the
dialect (claim rows, hold them, retry from memory, write ack/nack/claim values in
batches); the MySQL and PostgreSQL connectors subclass it with their SQL and driver.
Re-exported by onestep.kit; its Source methods run on the source actor's thread."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from .._values import check_int, check_number
from ..core import Delivery, Source
from ._business_sql import BusinessStatements
from ._tables import BusinessTableSpec, column_index, json_value, row_dict

# How many rows go into one `IN (...)` list.
_MAX_ROWS_PER_STATEMENT = 1000


class _Held:
    """A claimed row this worker has not settled: its delivery, and the values its claim
    columns had before the claim (written back if it is released at shutdown)."""

    __slots__ = ("delivery", "original")

    def __init__(self, delivery: Delivery, original: tuple[Any, ...]) -> None:
        self.delivery = delivery
        self.original = original


class BusinessTableSource(BusinessStatements, Source):
    """Rows of an existing table as messages, with no column of onestep's required.

    `fetch` picks up to `batch_size` rows matching `where` (and not already carrying the
    `claim` values) with `SELECT * ... FOR UPDATE SKIP LOCKED` and writes the `claim`
    values into them in the same transaction, so no two workers get the same row. The
    handler receives the whole row as a dict (BusinessTableSpec, `row_dict`). A success
    writes the `ack` values (buffered, one UPDATE per batch); when the retry policy gives
    up (dead letter stored or not) the row gets the `nack` values. A retry keeps the row
    claimed and runs it again from this worker's memory after the delay; `attempts` are
    counted in memory, or in `attempts_column` when given (then exact across restarts).

    Rows claimed by a worker that died stay claimed, unless `lease_column` names a
    timestamp column: the claim then writes the server's time there, the worker renews
    it every `lease_s / 3` while it holds the row, and another worker takes a row back
    whose lease column is older than `lease_s` (without fencing: see the docs).

    A dialect subclass gives the SQL pieces (`quote`, `same`, `now_sql`, `expired_sql`)
    and the driver calls (`connect`, `close_connection`, `transaction`, `check_table`).
    """

    #: `describe()`'s type, and the prefix of the default name.
    kind = "BusinessTable"
    prefix = "sql"

    def __init__(
        self,
        connector: Any,
        table: str,
        spec: BusinessTableSpec,
        *,
        batch_size: int = 100,
        poll_interval_s: float = 0.5,
        name: str | None = None,
    ) -> None:
        self.connector = connector
        self.table = table
        self.spec = spec
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        # per queue, where Source declares a class-wide default
        self.poll_interval_s = check_number(  # type: ignore[misc]
            "poll_interval_s", poll_interval_s, exclusive=True
        )
        self._log = logging.getLogger(f"onestep.{self.prefix}")
        self.name = name or f"{self.prefix}:{table}"
        #: The source actor renews the held rows' leases this often (lease column only).
        self.keepalive_interval_s = spec.lease_s / 3 if spec.lease_column else None
        self._lease_us = int(spec.lease_s * 1_000_000)
        self._build_statements(self.quote(table, "table"), spec)
        self._conn: Any = None
        self._source_thread: int | None = None
        self._held: dict[Any, _Held] = {}
        self._acks: list[Any] = []
        # nacks, releases and attempt counts not yet written, in order: (sql, keys, args);
        # kept when the connection is lost and written after the reconnect
        self._writes: list[tuple[str, list[Any], tuple[Any, ...]]] = []
        self._retries: list[tuple[float, Delivery]] = []  # (due, delivery), in memory
        self._expired_check_every_s = min(1.0, spec.lease_s / 2)
        self._last_expired_check = 0.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.table!r}, connector={self.connector!r})"

    # -- the dialect (a subclass gives these) -------------------------------------------

    def connect(self) -> Any:
        """A new autocommit connection for the source actor's thread."""
        raise NotImplementedError

    def close_connection(self, conn: Any) -> None:
        """Close `conn`, ignoring errors (it may be dead)."""
        raise NotImplementedError

    def transaction(self, conn: Any) -> contextlib.AbstractContextManager[Any]:
        """A transaction on the autocommit `conn`: committed after the block, rolled back
        if it raises."""
        raise NotImplementedError

    def check_table(self) -> None:
        """ValueError for a missing table or column, or a `where` the server refuses;
        on the opening thread."""
        raise NotImplementedError

    # -- set-up (the source actor's thread) -----------------------------------------------

    def open(self) -> None:
        """Check the server, that every named column exists and that `where` is valid SQL
        for the table (ValueError saying which), then connect; the source actor's thread."""
        self.check_table()
        self._source_thread = threading.get_ident()
        if self._acks or self._writes:
            self._flush_all(self._connection())

    def close(self) -> None:
        """Write the buffered acks, give back the rows waiting for a retry, disconnect;
        the source actor's thread. What cannot be written stays for the next open."""
        if threading.get_ident() != self._source_thread:
            return
        try:
            if self._conn is not None:
                waiting, self._retries = self._retries, []
                for _, delivery in waiting:
                    self._give_back(delivery)
                if self._acks or self._writes:
                    self._flush_all(self._conn)
        finally:
            conn, self._conn = self._conn, None
            if conn is not None:
                self.close_connection(conn)

    def _connection(self) -> Any:
        conn = self._conn
        if conn is None or getattr(conn, "closed", False):
            conn = self._conn = self.connect()
        return conn

    # -- fetching -------------------------------------------------------------------------

    def fetch(self, limit: int) -> list[Delivery]:
        """Due retries first, then up to min(limit, batch_size) claimed rows (and, with a
        lease column, rows whose lease expired), in one transaction."""
        self._source_thread = threading.get_ident()
        conn = self._connection()
        if self._acks or self._writes:
            self._flush_all(conn)
        deliveries = self._due_retries(limit)
        count = min(limit, self.batch_size) - len(deliveries)
        if count <= 0:
            return deliveries
        with conn.cursor() as cursor, self.transaction(conn):
            expired = self._select_expired(cursor, count)
            columns = [column[0] for column in cursor.description or ()] if expired else []
            count -= len(expired)
            fresh: Sequence[Any] = ()
            if count > 0:
                cursor.execute(self._sql_select, (*self._claim_args, count))
                fresh = cursor.fetchall()
                columns = [column[0] for column in cursor.description or ()]
            if fresh:
                keys = [self._key_of(columns, row) for row in fresh]
                cursor.execute(self._sql_claim + self._in(len(keys)), (*self._claim_args, *keys))
            if expired:
                keys = [self._key_of(columns, row) for row in expired]
                cursor.execute(self._sql_reclaim + self._in(len(keys)), keys)
        for rows, earlier in ((fresh, 0), (expired, 1)):
            for row in rows:
                deliveries.append(self._hold(columns, row, earlier))
        return deliveries

    def _select_expired(self, cursor: Any, count: int) -> Sequence[Any]:
        if self.spec.lease_column is None:
            return ()
        now = time.monotonic()
        if now - self._last_expired_check < self._expired_check_every_s:
            return ()
        self._last_expired_check = now
        cursor.execute(self._sql_select_expired, (*self._claim_args, self._lease_us, count))
        rows: Sequence[Any] = cursor.fetchall()
        return rows

    def _key_of(self, columns: list[str], row: Sequence[Any]) -> Any:
        return row[column_index(columns, self.spec.key)]

    def _hold(self, columns: list[str], row: Sequence[Any], earlier: int) -> Delivery:
        """The delivery of a claimed row (payload the row as it was read, meta its key)."""
        spec = self.spec
        key = self._key_of(columns, row)
        attempts = earlier
        if spec.attempts_column is not None:
            stored = row[column_index(columns, spec.attempts_column)]
            attempts = max(0, int(stored or 0)) + earlier
        original = tuple(row[column_index(columns, column)] for column in spec.claim)
        delivery = Delivery(
            row_dict(columns, row), meta={"key": json_value(key)}, attempts=attempts, handle=key
        )
        if key in self._held:
            self._log.warning("%s: row %r claimed again while this worker held it", self.name, key)
        self._held[key] = _Held(delivery, original)
        return delivery

    def _due_retries(self, limit: int) -> list[Delivery]:
        if not self._retries:
            return []
        now = time.monotonic()
        due = [entry for entry in self._retries if entry[0] <= now][:limit]
        if due:
            taken = {id(entry[1]) for entry in due}
            self._retries = [entry for entry in self._retries if id(entry[1]) not in taken]
        return [delivery for _, delivery in due]

    # -- settling ---------------------------------------------------------------------------

    def ack(self, delivery: Delivery) -> None:
        """Write the `ack` values at the next flush (one UPDATE per batch)."""
        if self._held.pop(delivery.handle, None) is not None:
            self._acks.append(delivery.handle)

    def retry(self, delivery: Delivery, delay_s: float | None = None) -> None:
        """Run the row again after `delay_s`, still claimed, `attempts` one higher (also
        in `attempts_column` when given, written at once)."""
        held = self._held.get(delivery.handle)
        if held is None:
            return
        again = Delivery(
            delivery.payload,
            meta=delivery.meta,
            attempts=delivery.attempts + 1,
            handle=delivery.handle,
        )
        held.delivery = again
        if self.spec.attempts_column is not None:
            self._write(self._sql_count_attempt, [delivery.handle], ())
        self._retries.append((time.monotonic() + (delay_s or 0.0), again))

    def fail(self, delivery: Delivery, error: BaseException | None = None) -> None:
        """The retry policy gave up: write the `nack` values at once."""
        if self._held.pop(delivery.handle, None) is not None:
            self._write(self._sql_nack, [delivery.handle], tuple(self.spec.nack.values()))

    def dead_lettered(self, delivery: Delivery, error: BaseException | None = None) -> None:
        """The dead letter (the row and the failure) was stored: the row gets `nack`."""
        self.fail(delivery, error)

    def release(self, delivery: Delivery) -> None:
        """Shutdown: write back the values the claim columns had before the claim, so the
        row matches `where` again (attempts kept only in `attempts_column`)."""
        self._give_back(delivery)
        self._write_now()

    def _give_back(self, delivery: Delivery) -> None:
        held = self._held.pop(delivery.handle, None)
        if held is not None:
            self._writes.append((self._sql_release, [delivery.handle], held.original))

    def flush(self) -> None:
        """Write the buffered acks; the source actor's thread, when its mailbox is empty."""
        if (self._acks or self._writes) and threading.get_ident() == self._source_thread:
            self._flush_all(self._connection())

    def _write(self, sql: str, keys: list[Any], leading: tuple[Any, ...]) -> None:
        """Buffer one rare write and write everything buffered at once."""
        self._writes.append((sql, keys, leading))
        self._write_now()

    def _write_now(self) -> None:
        if threading.get_ident() == self._source_thread:
            self._flush_all(self._connection())

    def _flush_all(self, conn: Any) -> None:
        """Write the buffered acks (one UPDATE per 1000 rows), then the other writes in
        order; what was written leaves the buffers at once, so after a lost connection
        only the rest is written again (at the next open or fetch)."""
        with conn.cursor() as cursor:
            while self._acks:
                chunk = self._acks[:_MAX_ROWS_PER_STATEMENT]
                self._run(cursor, self._sql_ack, chunk, tuple(self.spec.ack.values()))
                del self._acks[: len(chunk)]
            while self._writes:
                sql, keys, leading = self._writes[0]
                self._run(cursor, sql, keys, leading)
                del self._writes[0]

    def _run(self, cursor: Any, sql: str, keys: list[Any], leading: tuple[Any, ...]) -> None:
        """`sql` (ending in `... AND `) for the rows `keys` that still carry the claim."""
        cursor.execute(
            sql + f"{self._key} IN {self._in(len(keys))}",
            (*leading, *self._claim_args, *keys),
        )
        matched = cursor.rowcount
        if matched < len(keys):
            self._log.warning(
                "%s: %d of %d row(s) of table %r no longer carried the claim values when "
                "settled (changed by someone else, or taken back after lease_s)",
                self.name,
                len(keys) - matched,
                len(keys),
                self.table,
            )

    def keepalive(self) -> None:
        """Renew the lease column of every held row (one UPDATE per 1000 rows); runs on
        the source actor's thread every `lease_s / 3` (lease column only)."""
        if threading.get_ident() != self._source_thread or not self._held:
            return
        keys = list(self._held)
        with self._connection().cursor() as cursor:
            for start in range(0, len(keys), _MAX_ROWS_PER_STATEMENT):
                chunk = keys[start : start + _MAX_ROWS_PER_STATEMENT]
                cursor.execute(
                    self._sql_renew + f"{self._key} IN {self._in(len(chunk))}",
                    (*self._claim_args, *chunk),
                )

    # -- operations (any thread) ---------------------------------------------------------

    def depth(self) -> int:
        """Rows matching `where` and not claimed; one COUNT. Any thread (pooled)."""

        def count(conn: Any) -> int:
            with conn.cursor() as cursor:
                cursor.execute(self._sql_count, self._claim_args)
                return int(cursor.fetchone()[0])

        return int(self.connector.run_pooled(count))

    def held_keys(self) -> Iterable[Any]:
        """The keys of the rows this worker holds (claimed, not settled)."""
        return list(self._held)

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "name": self.name,
            "table": self.table,
            "key": self.spec.key,
            "where": self.spec.where,
            "batch_size": self.batch_size,
            "lease_column": self.spec.lease_column,
            "server": self.connector.url,
        }
