"""TableQueue: a MySQL/MariaDB table of jobs as a Source (leases, exact attempts, group
commit); made by MySQLConnector.table_queue, run on its SourceActor's thread."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import pymysql.err

from onestep import Delivery, Source
from onestep._checks import check_int, check_number

from ._connection import (
    close_quietly,
    encode_json,
    is_connection_error,
    placeholders,
    quote_ident,
    transaction,
)

if TYPE_CHECKING:
    from ._connector import MySQLConnector

# How many ids go into one `IN (...)` list.
_MAX_IDS_PER_STATEMENT = 1000


class QueueColumns:
    """The column names a TableQueue uses, already validated and quoted."""

    __slots__ = (
        "attempts",
        "available_at",
        "id",
        "last_error",
        "leased_until",
        "names",
        "payload",
        "status",
    )

    def __init__(
        self,
        *,
        id: str,
        payload: str,
        status: str,
        attempts: str,
        available_at: str,
        leased_until: str,
        last_error: str | None,
    ) -> None:
        given = {
            "id_column": id,
            "payload_column": payload,
            "status_column": status,
            "attempts_column": attempts,
            "available_at_column": available_at,
            "leased_until_column": leased_until,
        }
        if last_error is not None:
            given["last_error_column"] = last_error
        quoted = {option: quote_ident(value, option) for option, value in given.items()}
        if len(set(given.values())) != len(given):
            raise ValueError(f"the column options must name distinct columns, got {given}")
        self.names = given
        self.id = quoted["id_column"]
        self.payload = quoted["payload_column"]
        self.status = quoted["status_column"]
        self.attempts = quoted["attempts_column"]
        self.available_at = quoted["available_at_column"]
        self.leased_until = quoted["leased_until_column"]
        self.last_error = quoted.get("last_error_column")


class TableQueue(Source):
    """A table of jobs as a Source; every row is one message, its payload JSON.

    `fetch` claims up to `batch_size` due rows in one transaction (`SELECT ... FOR
    UPDATE SKIP LOCKED`, then marked `leased` until now + `lease_s`), so workers in any
    number of processes never get the same row at once. A row whose lease expired (its
    worker died) is claimed again and that attempt counted. Acks, retries and releases
    are buffered and written by `flush()`, one UPDATE per kind per batch (group commit).

    Every Source method runs on the source actor's thread, which owns the connection.
    `put` and `publish` are for producers on any thread and use the connector's pool.
    """

    def __init__(
        self,
        connector: MySQLConnector,
        table: str,
        *,
        batch_size: int = 100,
        poll_interval_s: float = 0.5,
        lease_s: float = 60,
        auto_create: bool = True,
        delete_on_ack: bool = False,
        name: str | None = None,
        columns: QueueColumns,
    ) -> None:
        self.connector = connector
        self.table = table
        self._table = quote_ident(table, "table")
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        # per queue, where Source declares a class-wide default
        self.poll_interval_s = check_number(  # type: ignore[misc]
            "poll_interval_s", poll_interval_s, exclusive=True
        )
        self.lease_s = check_number("lease_s", lease_s, exclusive=True)
        self.auto_create = bool(auto_create)
        self.delete_on_ack = bool(delete_on_ack)
        self.name = name or f"mysql:{table}"
        self.columns = columns
        self._lease_us = int(self.lease_s * 1_000_000)
        # How often a busy queue also looks for expired leases (an idle one looks on
        # every fetch that finds fewer rows than it could take).
        self._expired_check_every_s = min(1.0, self.lease_s / 2)
        self._last_expired_check = 0.0
        self._conn: Any = None
        self._acks: list[int] = []
        self._retries: dict[int, list[int]] = {}  # delay in microseconds -> ids
        self._releases: list[int] = []
        self._build_statements()

    def __repr__(self) -> str:
        return f"TableQueue({self.table!r}, connector={self.connector!r})"

    def _build_statements(self) -> None:
        c, t = self.columns, self._table
        select = f"SELECT {c.id}, {c.payload}, {c.attempts} FROM {t} "
        self._sql_claim_pending = (
            select + f"WHERE {c.status} = 'pending' AND {c.available_at} <= NOW(6) "
            f"ORDER BY {c.available_at} LIMIT %s FOR UPDATE SKIP LOCKED"
        )
        self._sql_claim_expired = (
            select + f"WHERE {c.status} = 'leased' AND {c.leased_until} < NOW(6) "
            f"LIMIT %s FOR UPDATE SKIP LOCKED"
        )
        lease = f"{c.leased_until} = NOW(6) + INTERVAL %s MICROSECOND"
        self._sql_lease = f"UPDATE {t} SET {c.status} = 'leased', {lease} WHERE {c.id} IN "
        # an expired lease was an execution whose worker died: it counts as an attempt
        self._sql_lease_expired = (
            f"UPDATE {t} SET {c.attempts} = {c.attempts} + 1, {c.status} = 'leased', "
            f"{lease} WHERE {c.id} IN "
        )
        # an ack counts the execution too, so a finished row shows how often it ran
        if self.delete_on_ack:
            self._sql_ack = f"DELETE FROM {t} WHERE {c.status} = 'leased' AND {c.id} IN "
        else:
            self._sql_ack = (
                f"UPDATE {t} SET {c.status} = 'done', {c.attempts} = {c.attempts} + 1, "
                f"{c.leased_until} = NULL WHERE {c.status} = 'leased' AND {c.id} IN "
            )
        self._sql_retry = (
            f"UPDATE {t} SET {c.status} = 'pending', {c.attempts} = {c.attempts} + 1, "
            f"{c.available_at} = NOW(6) + INTERVAL %s MICROSECOND, {c.leased_until} = NULL "
            f"WHERE {c.status} = 'leased' AND {c.id} IN "
        )
        self._sql_release = (
            f"UPDATE {t} SET {c.status} = 'pending', {c.leased_until} = NULL "
            f"WHERE {c.status} = 'leased' AND {c.id} IN "
        )
        error_set = "" if c.last_error is None else f", {c.last_error} = %s"
        self._sql_fail = (
            f"UPDATE {t} SET {c.status} = 'failed', {c.attempts} = {c.attempts} + 1, "
            f"{c.leased_until} = NULL{error_set} WHERE {c.status} = 'leased' AND {c.id} = %s"
        )
        self._sql_put = (
            f"INSERT INTO {t} ({c.payload}, {c.status}, {c.attempts}, {c.available_at}) "
            f"VALUES (%s, 'pending', 0, NOW(6) + INTERVAL %s MICROSECOND)"
        )

    def create_table_sql(self) -> str:
        """The CREATE TABLE statement of the managed table (with these column names)."""
        c, t = self.columns, self._table
        last_error = "" if c.last_error is None else f"    {c.last_error} TEXT NULL,\n"
        sql = (
            f"CREATE TABLE IF NOT EXISTS {t} (\n"
            f"    {c.id} BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,\n"
            f"    {c.payload} LONGTEXT NOT NULL,\n"
            f"    {c.status} VARCHAR(16) NOT NULL DEFAULT 'pending',\n"
            f"    {c.attempts} INT UNSIGNED NOT NULL DEFAULT 0,\n"
            f"    {c.available_at} DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),\n"
            f"    {c.leased_until} DATETIME(6) NULL,\n"
            f"{last_error}"
            "    `created_at` DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),\n"
            "    `updated_at` DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)\n"
            "        ON UPDATE CURRENT_TIMESTAMP(6),\n"
            f"    KEY `onestep_claim` ({c.status}, {c.available_at}),\n"
            f"    KEY `onestep_lease` ({c.status}, {c.leased_until})\n"
            ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        )
        return sql.replace("%%", "%")

    # -- set-up (the source actor's thread) ---------------------------------------------

    def ensure_table(self, conn: Any) -> None:
        """Create the managed table if missing, or check that the named columns exist."""
        with conn.cursor() as cursor:
            if self.auto_create:
                cursor.execute(self.create_table_sql().replace("%", "%%"), ())
                return
            c = self.columns
            wanted = [c.id, c.payload, c.status, c.attempts, c.available_at, c.leased_until]
            if c.last_error is not None:
                wanted.append(c.last_error)
            try:
                cursor.execute(f"SELECT {', '.join(wanted)} FROM {self._table} LIMIT 0", ())
            except pymysql.err.MySQLError as exc:
                if is_connection_error(exc):
                    raise
                raise ValueError(
                    f"table {self.table!r} (auto_create=False) lacks a column or does not "
                    f"exist: {exc.args[1] if len(exc.args) > 1 else exc}; columns used: "
                    f"{self.columns.names}"
                ) from None

    def open(self) -> None:
        """Connect and create the table if needed; runs on the source actor's thread.

        One attempt: the first open fails fast (app.start() raises StartupError); after a
        lost connection the supervisor reopens with its backoff (no actor sleeps here),
        and the reopen writes the settlements buffered while the connection was down."""
        conn = self.connector.connect()
        try:
            _check_server_supports_skip_locked(conn, self.connector.describe_target())
            self.ensure_table(conn)
        except BaseException:
            close_quietly(conn)
            raise
        self._conn = conn
        self.flush()

    def close(self) -> None:
        """Write buffered settlements and disconnect; runs on the source actor's thread.
        Settlements that cannot be written (the connection is gone) stay buffered for
        the next open; the rows' leases expire meanwhile, so nothing is lost."""
        try:
            self.flush()
        finally:
            conn, self._conn = self._conn, None
            close_quietly(conn)

    # -- fetching -------------------------------------------------------------------------

    def fetch(self, limit: int) -> list[Delivery]:
        """Claim up to min(limit, batch_size) due rows in one transaction."""
        if self._acks or self._retries or self._releases:
            self.flush()
        count = min(limit, self.batch_size)
        if count <= 0:
            return []
        conn = self._connection()
        with conn.cursor() as cursor, transaction(conn):
            rows, expired = self._claim(cursor, count)
            if rows:
                ids = [row[0] for row in rows]
                cursor.execute(
                    self._sql_lease + f"({placeholders(len(ids))})", (self._lease_us, *ids)
                )
            if expired:
                ids = [row[0] for row in expired]
                cursor.execute(
                    self._sql_lease_expired + f"({placeholders(len(ids))})",
                    (self._lease_us, *ids),
                )
        deliveries = [self._delivery(row, 0) for row in rows]
        if expired:
            deliveries.extend(self._delivery(row, 1) for row in expired)
        return deliveries

    def _claim(self, cursor: Any, count: int) -> tuple[Sequence[Any], Sequence[Any]]:
        now = time.monotonic()
        expired: Sequence[Any] = ()
        if now - self._last_expired_check >= self._expired_check_every_s:
            self._last_expired_check = now
            cursor.execute(self._sql_claim_expired, (count,))
            expired = cursor.fetchall()
            count -= len(expired)
        rows: Sequence[Any] = ()
        if count > 0:
            cursor.execute(self._sql_claim_pending, (count,))
            rows = cursor.fetchall()
            if not expired and len(rows) < count and now != self._last_expired_check:
                self._last_expired_check = now
                cursor.execute(self._sql_claim_expired, (count - len(rows),))
                expired = cursor.fetchall()
        return rows, expired

    def _delivery(self, row: Any, extra_attempts: int) -> Delivery:
        row_id, raw, attempts = row
        try:
            payload = json.loads(raw)
        except (TypeError, ValueError) as exc:
            error = ValueError(f"row {row_id} of {self.table!r}: payload is not JSON: {exc}")
            return Delivery(
                raw,
                meta={"id": row_id},
                attempts=attempts + extra_attempts,
                handle=row_id,
                error=error,
            )
        return Delivery(
            payload, meta={"id": row_id}, attempts=attempts + extra_attempts, handle=row_id
        )

    def _connection(self) -> Any:
        if self._conn is None:
            raise ConnectionError(f"{self.name}: not connected (open() was not called)")
        return self._conn

    # -- settling (buffered; flush() writes them) ------------------------------------------

    def ack(self, delivery: Delivery) -> None:
        """Mark done (or delete) at the next flush."""
        self._acks.append(delivery.handle)

    def retry(self, delivery: Delivery, delay_s: float | None = None) -> None:
        """Count the attempt and make the row due after `delay_s`, at the next flush."""
        delay_us = int((delay_s or 0.0) * 1_000_000)
        self._retries.setdefault(delay_us, []).append(delivery.handle)

    def release(self, delivery: Delivery) -> None:
        """Back to pending at once, attempts unchanged (shutdown), at the next flush."""
        self._releases.append(delivery.handle)

    def fail(self, delivery: Delivery, error: BaseException | None = None) -> None:
        """Mark the row failed with the error (rare: written at once)."""
        self.flush()
        args: tuple[Any, ...] = (delivery.handle,)
        if self.columns.last_error is not None:
            text = "" if error is None else f"{type(error).__name__}: {error}"
            args = (text[:60000], delivery.handle)
        with self._connection().cursor() as cursor:
            cursor.execute(self._sql_fail, args)

    def flush(self) -> None:
        """Write the buffered acks, retries and releases: one UPDATE (or DELETE) each,
        in autocommit; runs on the source actor's thread when its mailbox is empty."""
        if self._conn is None or not (self._acks or self._retries or self._releases):
            return
        with self._conn.cursor() as cursor:
            if self._acks:
                _execute_in_chunks(cursor, self._sql_ack, (), self._acks)
                self._acks = []
            while self._retries:
                delay_us, ids = next(iter(self._retries.items()))
                _execute_in_chunks(cursor, self._sql_retry, (delay_us,), ids)
                del self._retries[delay_us]
            if self._releases:
                _execute_in_chunks(cursor, self._sql_release, (), self._releases)
                self._releases = []

    # -- producers (any thread) -----------------------------------------------------------

    def put(self, body: Any, *, delay_s: float = 0.0) -> int:
        """Enqueue one JSON-serialisable body (due after `delay_s`); returns the row id.
        Thread-safe: uses a pooled connection (the table must exist: open the queue, or
        call `create_table()` once)."""
        payload = encode_json(body, "body")
        delay_us = int(check_number("delay_s", delay_s) * 1_000_000)

        def insert(conn: Any) -> int:
            with conn.cursor() as cursor:
                cursor.execute(self._sql_put, (payload, delay_us))
                return int(cursor.lastrowid)

        return int(self.connector.run_pooled(insert))

    def put_many(self, bodies: Iterable[Any], *, delay_s: float = 0.0) -> int:
        """Enqueue many bodies in one transaction (multi-row INSERT); returns how many."""
        delay_us = int(check_number("delay_s", delay_s) * 1_000_000)
        rows = [(encode_json(body, "body"), delay_us) for body in bodies]

        def insert(conn: Any) -> int:
            with conn.cursor() as cursor:
                conn.begin()
                try:
                    for start in range(0, len(rows), 1000):
                        cursor.executemany(self._sql_put, rows[start : start + 1000])
                    conn.commit()
                except BaseException:
                    conn.rollback()
                    raise
            return len(rows)

        return int(self.connector.run_pooled(insert))

    async def publish(self, body: Any, meta: dict[str, Any] | None = None) -> int:
        """Enqueue from async code (the insert runs in a thread)."""
        return await asyncio.to_thread(self.put, body)

    def create_table(self) -> None:
        """Create the managed table now (any thread), e.g. before producers `put`."""
        with self.connector.pooled() as conn:
            self.ensure_table(conn)

    def describe(self) -> dict[str, Any]:
        return {
            "type": "MySQLTableQueue",
            "name": self.name,
            "table": self.table,
            "batch_size": self.batch_size,
            "lease_s": self.lease_s,
            "server": self.connector.url,
        }


def _execute_in_chunks(cursor: Any, sql: str, leading: tuple[Any, ...], ids: list[int]) -> None:
    for start in range(0, len(ids), _MAX_IDS_PER_STATEMENT):
        chunk = ids[start : start + _MAX_IDS_PER_STATEMENT]
        cursor.execute(sql + f"({placeholders(len(chunk))})", (*leading, *chunk))


def _check_server_supports_skip_locked(conn: Any, target: str) -> None:
    version = str(conn.get_server_info())
    if version.startswith("5.5.5-"):  # how MariaDB 10+ announces itself to old clients
        version = version[len("5.5.5-") :]
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    if match is None:
        return
    numbers = tuple(int(part) for part in match.groups())
    needed = (10, 6, 0) if "mariadb" in version.lower() else (8, 0, 1)
    if numbers < needed:
        raise ConnectionError(
            f"{target} runs {version}; the table queue needs SELECT ... FOR UPDATE SKIP "
            f"LOCKED (MariaDB 10.6+ or MySQL 8.0.1+)"
        )
