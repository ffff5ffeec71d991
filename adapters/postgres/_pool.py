"""The psycopg_pool pool behind PostgresConnector.run_pooled: producers (`put`), the sink
side of a table queue, dead-letter browsing and the state store borrow its connections,
on any thread. Opened on first use, closed by PostgresConnector.close."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import psycopg_pool

from ._connection import is_connection_error

if TYPE_CHECKING:
    from ._connector import PostgresConnector

logger = logging.getLogger("onestep.postgres")


class Pool:
    """A psycopg_pool.ConnectionPool (autocommit connections, at most `pool_size`), made
    on first use so that a connector costs nothing until it is used, and made again
    after `close()` (the next use reconnects)."""

    def __init__(self, connector: PostgresConnector) -> None:
        self._connector = connector
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._lock = threading.Lock()

    def _get(self) -> psycopg_pool.ConnectionPool[Any]:
        pool = self._pool
        if pool is not None:
            return pool
        with self._lock:
            if self._pool is None:
                connector = self._connector
                pool = psycopg_pool.ConnectionPool(
                    kwargs={**connector.connect_kwargs(), "autocommit": True},
                    min_size=1,
                    max_size=connector.pool_size,
                    timeout=connector.connect_timeout_s,
                    name=connector.name,
                    open=False,
                )
                pool.open(wait=False)
                self._pool = pool
            return self._pool

    def run(self, operation: Callable[[Any], Any]) -> Any:
        """`operation(conn)` on a pooled connection. A pooled connection found dead (the
        server restarted, an idle timeout) is dropped, the idle ones are checked, and the
        operation runs once more on a fresh one. ConnectionError, naming the server but
        never the password, when no connection can be had."""
        try:
            return self._run_once(operation)
        except BaseException as exc:
            if not is_connection_error(exc) or isinstance(exc, ConnectionError):
                raise
            logger.debug(
                "%s: a pooled connection was lost (%s); trying again", self._connector.name, exc
            )
            pool = self._pool
            if pool is not None:
                pool.check()  # drops the other dead idle connections
            return self._run_once(operation)

    def _run_once(self, operation: Callable[[Any], Any]) -> Any:
        # the pool rolls back an open transaction and discards a broken connection
        with self.connection() as conn:
            return operation(conn)

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        """A pooled connection for the block; given back (rolled back if the block left
        a transaction open, dropped if broken) afterwards."""
        pool = self._get()
        try:
            conn = pool.getconn()
        except psycopg_pool.PoolTimeout:
            self._connector.connect().close()  # one direct attempt tells why
            raise ConnectionError(
                f"cannot connect to {self._connector.describe_target()}: no pooled "
                f"connection within {self._connector.connect_timeout_s} s"
            ) from None
        try:
            yield conn
        finally:
            pool.putconn(conn)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=1.0)
