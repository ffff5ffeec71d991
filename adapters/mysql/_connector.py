"""MySQLConnector: the settings of one MySQL/MariaDB database and the factory of its
queues, sinks and state stores; built by users, its connections made on any thread."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, overload

import pymysql
import pymysql.err

from onestep import StateStore
from onestep.kit import (
    BusinessTableSpec,
    IncrementalSpec,
    check_int,
    check_number,
    is_business_mode,
)

from ._business import BusinessTable
from ._connection import parse_url
from ._incremental import IncrementalSource
from ._pool import Pool
from ._queue import TableQueue
from ._queue_schema import QueueColumns
from ._sink import TableSink
from ._state import MySQLStateStore


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
        self.host, self.port, self.user, self._password, self.database = parse_url(url)
        self.pool_size = check_int("pool_size", pool_size, minimum=1)
        self.connect_timeout_s = check_number(
            "connect_timeout_s", connect_timeout_s, exclusive=True
        )
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be a non-empty string or None, got {name!r}")
        self.name = name or f"mysql:{self.host}:{self.port}/{self.database}"
        self._pool = Pool(self)
        self._max_allowed_packet: int | None = None

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

    @contextlib.contextmanager
    def pooled(self) -> Iterator[Any]:
        """A connection from the small shared pool (any thread), for one operation."""
        with self._pool.connection() as conn:
            yield conn

    def run_pooled(self, operation: Callable[[Any], Any]) -> Any:
        """Run `operation(conn)` on a pooled connection; if a pooled connection turns out
        to be dead (the server restarted) it is retried once on a fresh one."""
        return self._pool.run(operation)

    def max_allowed_packet(self) -> int:
        """The server's `max_allowed_packet`: the largest statement it takes (a larger
        one makes it drop the connection). Read once, on a pooled connection; any
        thread. Producers refuse a row whose INSERT would be larger."""
        limit = self._max_allowed_packet
        if limit is None:

            def read(conn: Any) -> int:
                with conn.cursor() as cursor:
                    cursor.execute("SELECT @@max_allowed_packet", ())
                    return int(cursor.fetchone()[0])

            limit = self._max_allowed_packet = int(self.run_pooled(read))
        return limit

    def close(self) -> None:
        """Close the pooled connections."""
        self._pool.close()

    @overload
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
        attempts_column: str | None = None,
        available_at_column: str = "available_at",
        leased_until_column: str = "leased_until",
        last_error_column: str | None = "last_error",
        meta_column: str | None = "meta",
        lease_token_column: str | None = "lease_token",
        priority_column: str | None = "priority",
        dead_status: str = "dead",
        key: str = "id",
        where: None = None,
        claim: None = None,
        ack: None = None,
        nack: None = None,
        lease_column: str | None = None,
    ) -> TableQueue: ...

    @overload
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
        attempts_column: str | None = None,
        available_at_column: str = "available_at",
        leased_until_column: str = "leased_until",
        last_error_column: str | None = "last_error",
        meta_column: str | None = "meta",
        lease_token_column: str | None = "lease_token",
        priority_column: str | None = "priority",
        dead_status: str = "dead",
        key: str = "id",
        where: str,
        claim: Mapping[str, Any] | None = None,
        ack: Mapping[str, Any] | None = None,
        nack: Mapping[str, Any] | None = None,
        lease_column: str | None = None,
    ) -> BusinessTable: ...

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
        attempts_column: str | None = None,
        available_at_column: str = "available_at",
        leased_until_column: str = "leased_until",
        last_error_column: str | None = "last_error",
        meta_column: str | None = "meta",
        lease_token_column: str | None = "lease_token",
        priority_column: str | None = "priority",
        dead_status: str = "dead",
        key: str = "id",
        where: str | None = None,
        claim: Mapping[str, Any] | None = None,
        ack: Mapping[str, Any] | None = None,
        nack: Mapping[str, Any] | None = None,
        lease_column: str | None = None,
    ) -> TableQueue | BusinessTable:
        """A table of jobs as a Source, a Sink and a producer; see TableQueue.

        `meta_column=None` for an existing table without a meta column (messages then
        carry no meta); `lease_token_column=None` for one without a lease-token column
        (no fencing: a worker paused past its lease can then settle a row another
        worker holds). `priority_column` holds each row's priority (claims go higher
        first); an existing table without it runs as before, and refuses only a put
        with a priority; `priority_column=None` turns priorities off. `attempts_column`
        defaults to `attempts`. A row whose dead letter was stored ends with status
        `dead_status`.

        **Business-table mode**, when `where`, `claim`, `ack` or `nack` is given: the
        application's own `table`, rows picked by `where` (trusted SQL), marked with the
        `claim` values while they run and the `ack` or `nack` values after; see
        BusinessTable. There `key` names the key column, `lease_column` an optional
        DATETIME(6) column that lets another worker take back the rows of a dead one
        after `lease_s`, and `attempts_column` an optional integer column that counts
        executions (else they are counted in memory). The other column options are for
        the managed table only."""
        if is_business_mode(where=where, claim=claim, ack=ack, nack=nack):
            spec = BusinessTableSpec.build(
                key=key,
                where=where,
                claim=claim,
                ack=ack,
                nack=nack,
                lease_column=lease_column,
                lease_s=lease_s,
                attempts_column=attempts_column,
            )
            return BusinessTable(
                self, table, spec, batch_size=batch_size, poll_interval_s=poll_interval_s, name=name
            )
        return TableQueue(
            self,
            table,
            batch_size=batch_size,
            poll_interval_s=poll_interval_s,
            lease_s=lease_s,
            auto_create=auto_create,
            delete_on_ack=delete_on_ack,
            dead_status=dead_status,
            name=name,
            columns=QueueColumns(
                id=id_column,
                payload=payload_column,
                status=status_column,
                attempts=attempts_column or "attempts",
                available_at=available_at_column,
                leased_until=leased_until_column,
                last_error=last_error_column,
                meta=meta_column,
                lease_token=lease_token_column,
                priority=priority_column,
            ),
        )

    def incremental(
        self,
        table: str,
        *,
        key: str = "id",
        cursor: str | Sequence[str] = ("updated_at", "id"),
        where: str | None = None,
        batch_size: int = 1000,
        poll_interval_s: float = 1.0,
        state: StateStore | None = None,
        state_key: str | None = None,
        name: str | None = None,
    ) -> IncrementalSource:
        """A Source that reads `table` in `cursor` order (ties broken by `key`), then
        every new or updated row as it appears, storing its position in `state` (or the
        app's state store); see IncrementalSource. `where` is trusted SQL."""
        spec = IncrementalSpec.build(key=key, cursor=cursor, where=where)
        return IncrementalSource(
            self,
            table,
            spec,
            batch_size=batch_size,
            poll_interval_s=poll_interval_s,
            state=state,
            state_key=state_key,
            name=name,
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

    def cursor_store(self, table: str = "onestep_state") -> MySQLStateStore:
        """The state store under upstream's name, for an incremental source's `state`."""
        return self.state_store(table)
