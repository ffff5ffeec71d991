"""SQLiteStateStore: the embedded durable state store, safe for several processes on one host.

Used by `ctx.state` and by schedules for their last fired tick and per-tick claims.
Values are stored as JSON; every call may come from any thread.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from .._values import check_delay
from ._store import StateStore, check_ttl

# sqlite3.connect() turns its timeout into a C int of milliseconds: past 2**31 ms (24.8
# days) it wraps and SQLite then waits not at all. A longer timeout_s is clamped here.
_MAX_BUSY_TIMEOUT_S = 2_000_000.0

# The statements of a first open. Switching to WAL needs the file to itself for a moment
# and SQLite's busy timeout does not cover that, so every one of them is retried while
# another process holds the lock (8 replicas opening one new file together: issue 9).
_OPEN_STATEMENTS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS onestep_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    expires_at REAL
)
"""


class SQLiteStateStore(StateStore):
    """A state store in one SQLite file. Processes on the same host that open the same
    path share it; `claim` and `incr` are atomic across them (BEGIN IMMEDIATE)."""

    blocking = True

    def __init__(self, path: str | os.PathLike[str], *, timeout_s: float = 10.0) -> None:
        timeout_s = check_delay("timeout_s", timeout_s)
        path = os.fspath(path)
        if not path:
            raise ValueError("path must name a file, got an empty string")
        if path == ":memory:":
            raise ValueError("path ':memory:' is not shared; use InMemoryStateStore instead")
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise ValueError(f"path {path!r}: directory {directory!r} does not exist")
        self.path = path
        self._lock = threading.Lock()
        self._last_purge = time.time()
        deadline = time.monotonic() + timeout_s
        conn = None
        try:
            conn = sqlite3.connect(
                path,
                timeout=min(timeout_s, _MAX_BUSY_TIMEOUT_S),
                isolation_level=None,
                check_same_thread=False,
            )
            for statement in (*_OPEN_STATEMENTS, _SCHEMA):
                _execute_while_busy(conn, statement, deadline)
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise ValueError(f"path {path!r} is not a usable SQLite database: {exc}") from None
        self._conn = conn

    def __repr__(self) -> str:
        return f"SQLiteStateStore({self.path!r})"

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @staticmethod
    def _encode(key: str, value: Any) -> str:
        try:
            return json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"state value for {key!r} is not JSON-serialisable: {exc}") from exc

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._conn.execute(
                "SELECT value FROM onestep_state WHERE key = ? "
                "AND (expires_at IS NULL OR expires_at > ?)",
                (key, time.time()),
            ).fetchone()
        return default if row is None else json.loads(row[0])

    def set(self, key: str, value: Any) -> None:
        encoded = self._encode(key, value)
        with self._lock:
            self._conn.execute(
                "INSERT INTO onestep_state (key, value, expires_at) VALUES (?, ?, NULL) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires_at = NULL",
                (key, encoded),
            )

    def delete(self, key: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM onestep_state WHERE key = ?", (key,))

    def incr(self, key: str, amount: int = 1) -> int:
        with self._lock, _immediate(self._conn):
            row = self._conn.execute(
                "SELECT value FROM onestep_state WHERE key = ?", (key,)
            ).fetchone()
            value = (0 if row is None else int(json.loads(row[0]))) + amount
            self._conn.execute(
                "INSERT INTO onestep_state (key, value, expires_at) VALUES (?, ?, NULL) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires_at = NULL",
                (key, json.dumps(value)),
            )
        return value

    def update(self, key: str, fn: Callable[[Any], Any], default: Any = None) -> Any:
        with self._lock, _immediate(self._conn):
            row = self._conn.execute(
                "SELECT value FROM onestep_state WHERE key = ? "
                "AND (expires_at IS NULL OR expires_at > ?)",
                (key, time.time()),
            ).fetchone()
            new = fn(default if row is None else json.loads(row[0]))
            self._conn.execute(
                "INSERT INTO onestep_state (key, value, expires_at) VALUES (?, ?, NULL) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires_at = NULL",
                (key, self._encode(key, new)),
            )
        return new

    def pop(self, key: str, default: Any = None) -> Any:
        with self._lock, _immediate(self._conn):
            row = self._conn.execute(
                "SELECT value FROM onestep_state WHERE key = ? "
                "AND (expires_at IS NULL OR expires_at > ?)",
                (key, time.time()),
            ).fetchone()
            self._conn.execute("DELETE FROM onestep_state WHERE key = ?", (key,))
        return default if row is None else json.loads(row[0])

    #: How often claim() deletes expired claims, so that the file does not grow by one
    #: row per schedule tick.
    PURGE_EVERY_S = 60.0

    def claim(self, key: str, ttl_s: float, value: Any = True) -> bool:
        ttl_s = check_ttl(ttl_s)
        encoded = self._encode(key, value)
        if time.time() - self._last_purge >= self.PURGE_EVERY_S:
            self.purge_expired()
        now = time.time()
        # One statement, atomic on its own: insert, or take over an expired claim.
        with self._lock:
            cursor = self._conn.execute(
                "INSERT INTO onestep_state (key, value, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
                "expires_at = excluded.expires_at "
                "WHERE onestep_state.expires_at IS NOT NULL AND onestep_state.expires_at <= ?",
                (key, encoded, now + ttl_s, now),
            )
            won = cursor.rowcount == 1
        return won

    def purge_expired(self) -> int:
        """Delete expired claims; returns how many."""
        with self._lock:
            self._last_purge = time.time()
            cursor = self._conn.execute(
                "DELETE FROM onestep_state WHERE expires_at IS NOT NULL AND expires_at <= ?",
                (time.time(),),
            )
        return cursor.rowcount


def _execute_while_busy(conn: sqlite3.Connection, statement: str, deadline: float) -> None:
    """Run one statement of the first open, retrying it while another connection holds
    the database (SQLITE_BUSY or SQLITE_LOCKED) until `deadline`; runs on the thread
    constructing the store, once, so the short sleeps between tries block nobody else."""
    pause_s = 0.002
    while True:
        try:
            conn.execute(statement)
            return
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary result code
            if code not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise
            if time.monotonic() >= deadline:
                raise
        time.sleep(pause_s)
        pause_s = min(2 * pause_s, 0.05)


class _immediate:
    """A write transaction taken at BEGIN, so concurrent writers queue instead of racing."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._conn.execute("ROLLBACK" if exc_type else "COMMIT")
