"""The small pool of idle pymysql connections behind MySQLConnector.pooled/run_pooled;
used by producers (TableQueue.put) and the state store, on any thread."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._connection import close_quietly, is_connection_error

if TYPE_CHECKING:
    from ._connector import MySQLConnector


class Pool:
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
            close_quietly(conn)  # its state is unknown: do not reuse it
            raise
        self._give_back(conn)

    def run(self, operation: Callable[[Any], Any]) -> Any:
        conn, pooled = self._take()
        try:
            result = operation(conn)
        except BaseException as exc:
            close_quietly(conn)
            if not (pooled and is_connection_error(exc)):
                raise
            # an idle connection the server dropped (restart, wait_timeout): one fresh try
            conn = self._connector.connect()
            try:
                result = operation(conn)
            except BaseException:
                close_quietly(conn)
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
        close_quietly(conn)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            close_quietly(conn)
