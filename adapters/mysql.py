"""MySQLConnector: a MySQL or MariaDB table as a job queue (leases, exact attempts), a
batched table sink and a cluster-wide state store, on pymysql.

Users build them from a connector; the runtime calls a queue on its SourceActor's thread
and a sink on its SinkActor's thread; the state store is called from worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import pymysql
import pymysql.err

from onestep import Delivery, Sink, Source, StateStore
from onestep._checks import check_int, check_number
from onestep._state import check_ttl

logger = logging.getLogger("onestep.mysql")

__all__ = ["MySQLConnector", "MySQLStateStore", "TableQueue", "TableSink"]

_MISSING = object()

PENDING, LEASED, DONE, FAILED = "pending", "leased", "done", "failed"

# pymysql error codes that mean the connection is gone (the server went away, the
# connection was lost or refused) rather than that the statement was wrong.
_CONNECTION_LOST = {2003, 2006, 2013, 2055}
_ACCESS_DENIED = {1044, 1045, 1049}

# How many ids go into one `IN (...)` list.
_MAX_IDS_PER_STATEMENT = 1000

# How often a state-store transaction is run again after InnoDB chose it as the victim
# of a deadlock (or a lock wait timed out).
_DEADLOCK_RETRIES = 5


def quote_ident(name: str, what: str = "table") -> str:
    """Quote a table or column name with backticks (a backtick inside is doubled).

    `%` is doubled too, because every statement goes through pymysql's `%` formatting
    (we always pass an argument tuple, even an empty one, so it is undone there)."""
    if not isinstance(name, str) or not name or "\x00" in name or len(name) > 64:
        raise ValueError(f"{what} must be a non-empty name of at most 64 characters, got {name!r}")
    return "`" + name.replace("`", "``").replace("%", "%%") + "`"


def _placeholders(count: int) -> str:
    return ", ".join(["%s"] * count)


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, pymysql.err.InterfaceError):
        return True
    if isinstance(exc, pymysql.err.OperationalError) and exc.args:
        return exc.args[0] in _CONNECTION_LOST
    return False


class MySQLConnector:
    """Connection settings for one MySQL/MariaDB database, and the factory of its queues,
    sinks and state stores.

    `url` is `mysql://user[:password]@host[:port]/database`; user and password may be
    URL-encoded (`p%40ss` for `p@ss`). The password is kept out of repr, logs and errors.
    `pool_size` is how many idle connections the producer side (`put`) and the state
    store keep; `connect_timeout_s` bounds a connection attempt (and, after a lost
    connection, how long a source keeps trying to reconnect in one restart).
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 4,
        connect_timeout_s: float = 10,
        name: str | None = None,
    ) -> None:
        self.host, self.port, self.user, self._password, self.database = _parse_url(url)
        self.pool_size = check_int("pool_size", pool_size, minimum=1)
        self.connect_timeout_s = check_number(
            "connect_timeout_s", connect_timeout_s, exclusive=True
        )
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be a non-empty string or None, got {name!r}")
        self.name = name or f"mysql:{self.host}:{self.port}/{self.database}"
        self._pool = _Pool(self)

    @property
    def url(self) -> str:
        """The URL with the password masked."""
        secret = ":***" if self._password else ""
        return f"mysql://{self.user}{secret}@{self.host}:{self.port}/{self.database}"

    def __repr__(self) -> str:
        return f"MySQLConnector({self.url!r})"

    def describe_target(self) -> str:
        return (
            f"MySQL server {self.host}:{self.port}, database {self.database!r}, user {self.user!r}"
        )

    def connect(self, *, autocommit: bool = True) -> Any:
        """A new pymysql connection on the calling thread; ConnectionError naming host,
        port, database and user (never the password) if it cannot be made."""
        try:
            conn = pymysql.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                password=self._password,
                database=self.database,
                charset="utf8mb4",
                autocommit=autocommit,
                connect_timeout=self.connect_timeout_s,
                read_timeout=max(30.0, self.connect_timeout_s),
                write_timeout=max(30.0, self.connect_timeout_s),
            )
        except pymysql.err.MySQLError as exc:
            reason = exc.args[1] if len(exc.args) > 1 else str(exc)
            reason = str(reason).replace(self._password, "***") if self._password else reason
            raise ConnectionError(f"cannot connect to {self.describe_target()}: {reason}") from None
        with conn.cursor() as cursor:
            # Claims lock only the rows they return (no gap locks), so workers do not
            # block each other's inserts.
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED", ())
        return conn

    def connect_retrying(self, deadline_s: float) -> Any:
        """Connect, retrying with backoff while the server is unreachable, for up to
        `deadline_s` seconds; wrong credentials fail at once."""
        deadline = time.monotonic() + deadline_s
        delay = 0.05
        while True:
            try:
                return self.connect()
            except ConnectionError as exc:
                code = getattr(exc.__context__, "args", (None,))[0]
                if code in _ACCESS_DENIED or time.monotonic() + delay > deadline:
                    raise
            threading.Event().wait(delay)  # on the source actor's thread, between attempts
            delay = min(delay * 2, 1.0)

    @contextlib.contextmanager
    def pooled(self) -> Iterator[Any]:
        """A connection from the small shared pool (any thread), for one operation."""
        with self._pool.connection() as conn:
            yield conn

    def run_pooled(self, operation: Callable[[Any], Any]) -> Any:
        """Run `operation(conn)` on a pooled connection; if a pooled connection turns out
        to be dead (the server restarted) it is retried once on a fresh one."""
        return self._pool.run(operation)

    def close(self) -> None:
        """Close the pooled connections."""
        self._pool.close()

    def table_queue(
        self,
        table: str,
        *,
        batch_size: int = 100,
        poll_interval_s: float = 0.5,
        lease_s: float = 60,
        auto_create: bool = True,
        delete_on_ack: bool = False,
        name: str | None = None,
        id_column: str = "id",
        payload_column: str = "payload",
        status_column: str = "status",
        attempts_column: str = "attempts",
        available_at_column: str = "available_at",
        leased_until_column: str = "leased_until",
        last_error_column: str | None = "last_error",
    ) -> TableQueue:
        """A Source over a table of jobs; see TableQueue."""
        return TableQueue(
            self,
            table,
            batch_size=batch_size,
            poll_interval_s=poll_interval_s,
            lease_s=lease_s,
            auto_create=auto_create,
            delete_on_ack=delete_on_ack,
            name=name,
            columns=_QueueColumns(
                id=id_column,
                payload=payload_column,
                status=status_column,
                attempts=attempts_column,
                available_at=available_at_column,
                leased_until=leased_until_column,
                last_error=last_error_column,
            ),
        )

    def table_sink(
        self,
        table: str,
        *,
        mode: str = "insert",
        keys: Sequence[str] = (),
        batch_size: int = 500,
        auto_create: bool = False,
        name: str | None = None,
    ) -> TableSink:
        """A Sink that inserts or upserts returned dicts; see TableSink."""
        return TableSink(
            self,
            table,
            mode=mode,
            keys=keys,
            batch_size=batch_size,
            auto_create=auto_create,
            name=name,
        )

    def state_store(self, table: str = "onestep_state") -> MySQLStateStore:
        """A StateStore in `table` (created if missing), shared by every process."""
        return MySQLStateStore(self, table)


def _parse_url(url: Any) -> tuple[str, int, str, str, str]:
    if not isinstance(url, str) or not url:
        raise ValueError(f"url must be a string like mysql://user:pass@host:3306/db, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in ("mysql", "mysql+pymysql", "mariadb"):
        raise ValueError(
            f"url must start with mysql://, got scheme {parts.scheme!r} "
            "(expected mysql://user:pass@host:3306/db)"
        )
    try:
        port = parts.port or 3306
    except ValueError:
        raise ValueError(
            "url has an invalid port (expected mysql://user:pass@host:3306/db)"
        ) from None
    host = parts.hostname
    if not host:
        raise ValueError("url names no host (expected mysql://user:pass@host:3306/db)")
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise ValueError("url names no database (expected mysql://user:pass@host:3306/db)")
    user = unquote(parts.username or "")
    if not user:
        raise ValueError("url names no user (expected mysql://user:pass@host:3306/db)")
    password = unquote(parts.password or "")
    return host, port, user, password, database


class _Pool:
    """Idle connections shared by threads: one thread uses a connection at a time; at
    most `pool_size` idle ones are kept, more are made (and closed) under load."""

    def __init__(self, connector: MySQLConnector) -> None:
        self._connector = connector
        self._idle: list[Any] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        conn, _ = self._take()
        try:
            yield conn
        except BaseException:
            _close_quietly(conn)  # its state is unknown: do not reuse it
            raise
        self._give_back(conn)

    def run(self, operation: Callable[[Any], Any]) -> Any:
        conn, pooled = self._take()
        try:
            result = operation(conn)
        except BaseException as exc:
            _close_quietly(conn)
            if not (pooled and _is_connection_error(exc)):
                raise
            # an idle connection the server dropped (restart, wait_timeout): one fresh try
            conn = self._connector.connect()
            try:
                result = operation(conn)
            except BaseException:
                _close_quietly(conn)
                raise
        self._give_back(conn)
        return result

    def _take(self) -> tuple[Any, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._connector.connect(), False

    def _give_back(self, conn: Any) -> None:
        with self._lock:
            if len(self._idle) < self._connector.pool_size:
                self._idle.append(conn)
                return
        _close_quietly(conn)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _close_quietly(conn)


def _close_quietly(conn: Any) -> None:
    if conn is None:
        return
    with contextlib.suppress(Exception):
        conn.close()


def _encode_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} is not JSON-serialisable: {exc}") from exc


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


# -- the table queue ---------------------------------------------------------------------


class _QueueColumns:
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
        columns: _QueueColumns,
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
        self._opened_before = False
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
                if _is_connection_error(exc):
                    raise
                raise ValueError(
                    f"table {self.table!r} (auto_create=False) lacks a column or does not "
                    f"exist: {exc.args[1] if len(exc.args) > 1 else exc}; columns used: "
                    f"{self.columns.names}"
                ) from None

    def open(self) -> None:
        """Connect and create the table if needed; runs on the source actor's thread.

        The first open fails fast (app.start() raises StartupError); a reopen after a
        lost connection keeps trying for `connect_timeout_s`, then writes the settlements
        buffered while the connection was down."""
        if self._opened_before:
            conn = self.connector.connect_retrying(self.connector.connect_timeout_s)
        else:
            conn = self.connector.connect()
        try:
            _check_server_supports_skip_locked(conn, self.connector.describe_target())
            self.ensure_table(conn)
        except BaseException:
            _close_quietly(conn)
            raise
        self._conn = conn
        self._opened_before = True
        self.flush()

    def close(self) -> None:
        """Write buffered settlements and disconnect; runs on the source actor's thread.
        Settlements that cannot be written (the connection is gone) stay buffered for
        the next open; the rows' leases expire meanwhile, so nothing is lost."""
        try:
            self.flush()
        finally:
            conn, self._conn = self._conn, None
            _close_quietly(conn)

    # -- fetching -------------------------------------------------------------------------

    def fetch(self, limit: int) -> list[Delivery]:
        """Claim up to min(limit, batch_size) due rows in one transaction."""
        if self._acks or self._retries or self._releases:
            self.flush()
        count = min(limit, self.batch_size)
        if count <= 0:
            return []
        conn = self._connection()
        cursor = conn.cursor()
        try:
            conn.begin()
            rows, expired = self._claim(cursor, count)
            if rows or expired:
                lease_us = self._lease_us
                if rows:
                    ids = [row[0] for row in rows]
                    cursor.execute(
                        self._sql_lease + f"({_placeholders(len(ids))})", (lease_us, *ids)
                    )
                if expired:
                    ids = [row[0] for row in expired]
                    cursor.execute(
                        self._sql_lease_expired + f"({_placeholders(len(ids))})", (lease_us, *ids)
                    )
            conn.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise
        finally:
            cursor.close()
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
        payload = _encode_json(body, "body")
        delay_us = int(check_number("delay_s", delay_s) * 1_000_000)

        def insert(conn: Any) -> int:
            with conn.cursor() as cursor:
                cursor.execute(self._sql_put, (payload, delay_us))
                return int(cursor.lastrowid)

        return int(self.connector.run_pooled(insert))

    def put_many(self, bodies: Iterable[Any], *, delay_s: float = 0.0) -> int:
        """Enqueue many bodies in one transaction (multi-row INSERT); returns how many."""
        delay_us = int(check_number("delay_s", delay_s) * 1_000_000)
        rows = [(_encode_json(body, "body"), delay_us) for body in bodies]

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
        cursor.execute(sql + f"({_placeholders(len(chunk))})", (*leading, *chunk))


# -- the table sink ----------------------------------------------------------------------


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
        _close_quietly(conn)

    def publish(self, body: Any, meta: dict[str, Any] | None = None) -> None:
        self.publish_batch([(body, meta)])

    def publish_batch(self, items: Sequence[tuple[Any, Any]]) -> None:
        """Write every row of `items` in one transaction; all or nothing."""
        groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for body, _ in items:
            for row in _rows_of(body):
                columns = tuple(row)
                groups.setdefault(columns, []).append(tuple(map(_column_value, row.values())))
        if not groups:
            return
        try:
            self._write(groups)
        except pymysql.err.MySQLError as exc:
            if not _is_connection_error(exc):
                raise
            # the connection was lost: the transaction did not commit (or the error
            # came from commit, when it may have); reconnect once and write it again
            _close_quietly(self._conn)
            self._conn = None
            self._conn = self.connector.connect(autocommit=False)
            self._write(groups)

    def _write(self, groups: dict[tuple[str, ...], list[tuple[Any, ...]]]) -> None:
        conn = self._conn
        if conn is None:
            conn = self._conn = self.connector.connect(autocommit=False)
        if self.auto_create and not self._created:
            self._create(conn, groups)
        with conn.cursor() as cursor:
            try:
                for columns, rows in groups.items():
                    cursor.executemany(self._statement(columns), rows)
                conn.commit()
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.rollback()
                raise

    def _statement(self, columns: tuple[str, ...]) -> str:
        sql = self._statements.get(columns)
        if sql is None:
            quoted = [quote_ident(column, "column") for column in columns]
            values = _placeholders(len(columns))
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
        for column in row:
            if not isinstance(column, str):
                raise TypeError(f"column names must be strings, got {column!r}")
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


# -- the state store ---------------------------------------------------------------------


class MySQLStateStore(StateStore):
    """A StateStore in one table (`key` VARCHAR(255) PRIMARY KEY, `value` JSON text,
    `expires_at` epoch seconds or NULL), shared by every process and host that use the
    same database. `incr`, `update`, `pop` and `claim` are atomic across them (row locks
    in one transaction). Called from worker threads: each call takes a connection from
    the connector's pool. Claim expiry uses the callers' clocks (keep hosts in NTP sync).
    """

    blocking = True

    #: How often claim() deletes expired claims, so the table does not grow by one row
    #: per schedule tick.
    PURGE_EVERY_S = 60.0

    def __init__(self, connector: MySQLConnector, table: str = "onestep_state") -> None:
        self.connector = connector
        self.table = table
        t = self._table = quote_ident(table, "table")
        self._last_purge = time.time()
        self._sql_get = (
            f"SELECT `value` FROM {t} WHERE `key` = %s "
            "AND (`expires_at` IS NULL OR `expires_at` > %s)"
        )
        self._sql_set = (
            f"INSERT INTO {t} (`key`, `value`, `expires_at`) VALUES (%s, %s, NULL) "
            "ON DUPLICATE KEY UPDATE `value` = VALUES(`value`), `expires_at` = NULL"
        )
        # the placeholder (expired at once) makes sure there is a row to lock; on an
        # existing key the no-op update takes the exclusive lock at once (INSERT IGNORE
        # would take a shared one, and two shared holders upgrading deadlock)
        self._sql_placeholder = (
            f"INSERT INTO {t} (`key`, `value`, `expires_at`) VALUES (%s, 'null', 0) "
            "ON DUPLICATE KEY UPDATE `key` = `key`"
        )
        self._sql_lock = f"SELECT `value`, `expires_at` FROM {t} WHERE `key` = %s FOR UPDATE"
        self._sql_delete = f"DELETE FROM {t} WHERE `key` = %s"
        self._sql_delete_expired = (
            f"DELETE FROM {t} WHERE `key` = %s AND `expires_at` IS NOT NULL AND `expires_at` <= %s"
        )
        self._sql_claim = (
            f"INSERT IGNORE INTO {t} (`key`, `value`, `expires_at`) VALUES (%s, %s, %s)"
        )
        create = (
            f"CREATE TABLE IF NOT EXISTS {t} (`key` VARCHAR(255) NOT NULL PRIMARY KEY, "
            "`value` LONGTEXT NOT NULL, `expires_at` DOUBLE NULL) "
            "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
        )
        self._run(lambda cursor: cursor.execute(create, ()))

    def __repr__(self) -> str:
        return f"MySQLStateStore({self.table!r}, connector={self.connector!r})"

    def close(self) -> None:
        """Close the connector's pooled connections."""
        self.connector.close()

    def _run(self, operation: Callable[[Any], Any], *, transaction: bool = False) -> Any:
        def on(conn: Any) -> Any:
            with conn.cursor() as cursor:
                if not transaction:
                    return operation(cursor)
                for attempt in range(_DEADLOCK_RETRIES):
                    conn.begin()
                    try:
                        result = operation(cursor)
                    except pymysql.err.OperationalError as exc:
                        conn.rollback()
                        if exc.args[0] not in (1205, 1213) or attempt + 1 == _DEADLOCK_RETRIES:
                            raise
                        continue  # InnoDB chose this transaction as a deadlock victim
                    except BaseException:
                        conn.rollback()
                        raise
                    conn.commit()
                    return result
            raise AssertionError("unreachable")

        return self.connector.run_pooled(on)

    @staticmethod
    def _encode(key: str, value: Any) -> str:
        return _encode_json(value, f"state value for {key!r}")

    @staticmethod
    def _check_key(key: Any) -> str:
        if not isinstance(key, str):
            raise TypeError(f"state key must be a str, got {type(key).__name__}")
        if len(key) > 255:
            raise ValueError(f"state key must be at most 255 characters, got {len(key)}")
        return key

    def get(self, key: str, default: Any = None) -> Any:
        key = self._check_key(key)

        def read(cursor: Any) -> Any:
            cursor.execute(self._sql_get, (key, time.time()))
            return cursor.fetchone()

        row = self._run(read)
        return default if row is None else json.loads(row[0])

    def set(self, key: str, value: Any) -> None:
        key = self._check_key(key)
        encoded = self._encode(key, value)
        self._run(lambda cursor: cursor.execute(self._sql_set, (key, encoded)))

    def delete(self, key: str) -> None:
        key = self._check_key(key)
        self._run(lambda cursor: cursor.execute(self._sql_delete, (key,)))

    def _locked(self, key: str, change: Callable[[Any, Any], Any]) -> Any:
        """Lock the row of `key` (made if missing) and call `change(cursor, value)` with
        its live value (or _MISSING), in one transaction."""
        key = self._check_key(key)

        def run(cursor: Any) -> Any:
            cursor.execute(self._sql_placeholder, (key,))
            cursor.execute(self._sql_lock, (key,))
            raw, expires_at = cursor.fetchone()
            live = expires_at is None or expires_at > time.time()
            return change(cursor, json.loads(raw) if live else _MISSING)

        return self._run(run, transaction=True)

    def incr(self, key: str, amount: int = 1) -> int:
        def change(cursor: Any, value: Any) -> int:
            new = int((0 if value is _MISSING else value) + amount)
            cursor.execute(self._sql_set, (key, json.dumps(new)))
            return new

        return int(self._locked(key, change))

    def update(self, key: str, fn: Callable[[Any], Any], default: Any = None) -> Any:
        def change(cursor: Any, value: Any) -> Any:
            new = fn(default if value is _MISSING else value)
            cursor.execute(self._sql_set, (key, self._encode(key, new)))
            return new

        return self._locked(key, change)

    def pop(self, key: str, default: Any = None) -> Any:
        def change(cursor: Any, value: Any) -> Any:
            cursor.execute(self._sql_delete, (key,))
            return default if value is _MISSING else value

        return self._locked(key, change)

    def claim(self, key: str, ttl_s: float, value: Any = True) -> bool:
        """Set `key` for `ttl_s` seconds if it is absent or its claim expired; one
        winner across processes (the expired row is deleted and the new one inserted in
        one transaction; a concurrent claimer waits on the row lock, then sees it)."""
        ttl_s = check_ttl(ttl_s)
        key = self._check_key(key)
        encoded = self._encode(key, value)
        if time.time() - self._last_purge >= self.PURGE_EVERY_S:
            self.purge_expired()

        def run(cursor: Any) -> bool:
            now = time.time()
            cursor.execute(self._sql_delete_expired, (key, now))
            cursor.execute(self._sql_claim, (key, encoded, now + ttl_s))
            return bool(cursor.rowcount == 1)

        return bool(self._run(run, transaction=True))

    def purge_expired(self) -> int:
        """Delete expired claims; returns how many."""
        self._last_purge = time.time()
        sql = f"DELETE FROM {self._table} WHERE `expires_at` IS NOT NULL AND `expires_at` <= %s"

        def run(cursor: Any) -> int:
            return int(cursor.execute(sql, (time.time(),)))

        return int(self._run(run))
