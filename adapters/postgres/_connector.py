"""PostgresConnector: the settings of one PostgreSQL database and the factory of its
queues, sinks and state stores; built by users, its connections made on any thread."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg

from onestep.kit import check_int, check_number

from ._connection import parse_url
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
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 4,
        connect_timeout_s: float = 10,
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
        attempts_column: str = "attempts",
        available_at_column: str = "available_at",
        leased_until_column: str = "leased_until",
        last_error_column: str | None = "last_error",
        meta_column: str | None = "meta",
        lease_token_column: str | None = "lease_token",
        priority_column: str | None = "priority",
    ) -> TableQueue:
        """A table of jobs as a Source, a Sink and a producer; see TableQueue.

        `notify=False` turns the LISTEN/NOTIFY wake-ups off (no trigger is installed, an
        idle source polls every `poll_interval_s`). `meta_column=None` for an existing
        table without a meta column; `lease_token_column=None` for one without a
        lease-token column (no fencing). `priority_column` holds each row's priority
        (claims go higher first); an existing table without it runs as before and
        refuses only a put with a priority; `priority_column=None` turns them off."""
        return TableQueue(
            self,
            table,
            batch_size=batch_size,
            poll_interval_s=poll_interval_s,
            lease_s=lease_s,
            auto_create=auto_create,
            delete_on_ack=delete_on_ack,
            notify=notify,
            name=name,
            columns=QueueColumns(
                id=id_column,
                payload=payload_column,
                status=status_column,
                attempts=attempts_column,
                available_at=available_at_column,
                leased_until=leased_until_column,
                last_error=last_error_column,
                meta=meta_column,
                lease_token=lease_token_column,
                priority=priority_column,
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

    def state_store(self, table: str = "onestep_state") -> PostgresStateStore:
        """A StateStore in `table` (created if missing), shared by every process."""
        return PostgresStateStore(self, table)
