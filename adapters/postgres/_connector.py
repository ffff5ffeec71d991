"""PostgresConnector: the settings of one PostgreSQL database and the factory of its
queues, sinks and state stores; built by users, its connections made on any thread."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, overload

import psycopg

from onestep import StateStore
from onestep.kit import (
    BusinessTableSpec,
    IncrementalSpec,
    check_int,
    check_number,
    is_business_mode,
)

from ._business import BusinessTable
from ._codec import MAX_VALUE_BYTES
from ._connection import parse_url
from ._incremental import IncrementalSource
from ._pool import Pool
from ._queue import TableQueue
from ._queue_schema import QueueColumns
from ._sink import TableSink
from ._state import PostgresStateStore


class PostgresConnector:
    """Connection settings for one PostgreSQL database, and the factory of its queues,
    sinks and state stores.

    `url` is `postgresql://user[:password]@host[:port]/database` (`postgresql+psycopg://`,
    SQLAlchemy's spelling, is accepted too); user and password may be URL-encoded
    (`p%40ss` for `p@ss`), and query parameters go to libpq as they are
    (`?sslmode=require`). The password is kept out of repr, logs and errors.
    `pool_size` is the most connections the pool (producers, the sink side, the state
    store, dead-letter tooling) opens; `connect_timeout_s` bounds a connection attempt.
    `max_message_bytes` is the largest payload (or meta) a producer writes: a larger one
    is refused with MessageTooLarge before anything is sent (default and most: 1 GB,
    PostgreSQL's limit for one text value).
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 4,
        connect_timeout_s: float = 10,
        max_message_bytes: int = MAX_VALUE_BYTES,
        name: str | None = None,
    ) -> None:
        self._target = parse_url(url)
        t = self._target
        self.host, self.port, self.user, self.database = t.host, t.port, t.user, t.database
        self._password = t.password
        self.pool_size = check_int("pool_size", pool_size, minimum=1)
        self.connect_timeout_s = check_number(
            "connect_timeout_s", connect_timeout_s, exclusive=True
        )
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be a non-empty string or None, got {name!r}")
        self.max_message_bytes = check_int("max_message_bytes", max_message_bytes, minimum=1)
        if self.max_message_bytes > MAX_VALUE_BYTES:
            raise ValueError(
                f"max_message_bytes must be at most {MAX_VALUE_BYTES:,} (PostgreSQL's 1 GB "
                f"limit for one text value), got {max_message_bytes:,}"
            )
        self.name = name or f"postgresql:{self.host}:{self.port}/{self.database}"
        self._pool = Pool(self)

    @property
    def url(self) -> str:
        """The URL with the password masked."""
        secret = ":***" if self._password else ""
        return f"postgresql://{self.user}{secret}@{self.host}:{self.port}/{self.database}"

    def __repr__(self) -> str:
        return f"PostgresConnector({self.url!r})"

    def describe_target(self) -> str:
        return (
            f"PostgreSQL server {self.host}:{self.port}, database {self.database!r}, "
            f"user {self.user!r}"
        )

    def connect_kwargs(self) -> dict[str, Any]:
        """psycopg.connect's keyword arguments (the password among them: never log them)."""
        return self._target.connect_kwargs(self.connect_timeout_s)

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        """A new psycopg connection for the calling thread's own use (the source side and
        the listener of a table queue, a table sink); ConnectionError naming host,
        port, database and user (never the password) if it cannot be made."""
        try:
            return psycopg.connect(**self.connect_kwargs(), autocommit=autocommit)
        except psycopg.Error as exc:
            reason = self._target.mask(" ".join(str(exc).split()))
            raise ConnectionError(f"cannot connect to {self.describe_target()}: {reason}") from None

    @contextlib.contextmanager
    def pooled(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled autocommit connection for the block (any thread), given back after
        it; for your own queries beside onestep's."""
        with self._pool.connection() as conn:
            yield conn

    def run_pooled(self, operation: Callable[[Any], Any]) -> Any:
        """Run `operation(conn)` on a pooled autocommit connection (any thread); a pooled
        connection found dead (the server restarted) is replaced once."""
        return self._pool.run(operation)

    def close(self) -> None:
        """Close the pooled connections; the next use opens the pool again."""
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
        notify: bool = True,
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
        dead_status: str = "dead",
        priority_column: str | None = "priority",
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
        notify: bool = True,
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
        dead_status: str = "dead",
        priority_column: str | None = "priority",
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
        notify: bool = True,
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
        dead_status: str = "dead",
        priority_column: str | None = "priority",
        key: str = "id",
        where: str | None = None,
        claim: Mapping[str, Any] | None = None,
        ack: Mapping[str, Any] | None = None,
        nack: Mapping[str, Any] | None = None,
        lease_column: str | None = None,
    ) -> TableQueue | BusinessTable:
        """A table of jobs as a Source, a Sink and a producer; see TableQueue.

        `notify=False` turns the LISTEN/NOTIFY wake-ups off (no trigger is installed, an
        idle source polls every `poll_interval_s`). `meta_column=None` for an existing
        table without a meta column; `lease_token_column=None` for one without a
        lease-token column (no fencing). `attempts_column` defaults to `attempts`. A row
        whose dead letter was stored ends with status `dead_status`. `priority_column`
        holds each row's priority (claims go higher first); an existing table without it
        runs as before and refuses only a put with a priority; `priority_column=None`
        turns them off.

        **Business-table mode**, when `where`, `claim`, `ack` or `nack` is given: the
        application's own `table`, rows picked by `where` (trusted SQL), marked with the
        `claim` values while they run and the `ack` or `nack` values after; see
        BusinessTable. There `key` names the key column, `lease_column` an optional
        timestamptz column that lets another worker take back the rows of a dead one
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
                max_length=63,
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
            notify=notify,
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
        spec = IncrementalSpec.build(key=key, cursor=cursor, where=where, max_length=63)
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

    def state_store(self, table: str = "onestep_state") -> PostgresStateStore:
        """A StateStore in `table` (created if missing), shared by every process."""
        return PostgresStateStore(self, table)

    def cursor_store(self, table: str = "onestep_state") -> PostgresStateStore:
        """The state store under upstream's name, for an incremental source's `state`."""
        return self.state_store(table)
