"""MySQLStateStore: a StateStore in one MySQL/MariaDB table, shared by every process;
made by MySQLConnector.state_store, called from worker threads. Expiry follows the
database server's clock."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pymysql.err

from onestep import StateStore
from onestep.kit import check_ttl

from ._connection import encode_json, quote_ident

if TYPE_CHECKING:
    from ._connector import MySQLConnector

_MISSING = object()

# The database server's clock in epoch seconds (microseconds): every expiry is decided
# by it, never by the clock of the host that calls.
_DB_NOW = "UNIX_TIMESTAMP(NOW(6))"

# How often a transaction is run again after InnoDB chose it as the victim of a deadlock
# (or a lock wait timed out).
_DEADLOCK_RETRIES = 5


class MySQLStateStore(StateStore):
    """A StateStore in one table (`key` VARCHAR(255) PRIMARY KEY, `value` JSON text,
    `expires_at` epoch seconds or NULL), shared by every process and host that use the
    same database. `incr`, `update`, `pop` and `claim` are atomic across them (row locks
    in one transaction). Called from worker threads: each call takes a connection from
    the connector's pool. Claims expire by the database server's clock
    (`UNIX_TIMESTAMP(NOW(6))`), so the hosts' clocks do not matter.
    """

    blocking = True

    #: How often claim() deletes expired claims, so the table does not grow by one row
    #: per schedule tick.
    PURGE_EVERY_S = 60.0

    def __init__(self, connector: MySQLConnector, table: str = "onestep_state") -> None:
        self.connector = connector
        self.table = table
        t = self._table = quote_ident(table, "table")
        self._last_purge = time.monotonic()
        self._sql_get = (
            f"SELECT `value` FROM {t} WHERE `key` = %s "
            f"AND (`expires_at` IS NULL OR `expires_at` > {_DB_NOW})"
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
        self._sql_lock = (
            f"SELECT `value`, `expires_at` IS NULL OR `expires_at` > {_DB_NOW} "
            f"FROM {t} WHERE `key` = %s FOR UPDATE"
        )
        self._sql_delete = f"DELETE FROM {t} WHERE `key` = %s"
        self._sql_delete_expired = (
            f"DELETE FROM {t} WHERE `key` = %s AND `expires_at` IS NOT NULL "
            f"AND `expires_at` <= {_DB_NOW}"
        )
        self._sql_claim = (
            f"INSERT IGNORE INTO {t} (`key`, `value`, `expires_at`) VALUES (%s, %s, {_DB_NOW} + %s)"
        )
        self._sql_purge = (
            f"DELETE FROM {t} WHERE `expires_at` IS NOT NULL AND `expires_at` <= {_DB_NOW}"
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
        return encode_json(value, f"state value for {key!r}")

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
            cursor.execute(self._sql_get, (key,))
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
            raw, live = cursor.fetchone()
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
        if time.monotonic() - self._last_purge >= self.PURGE_EVERY_S:
            self.purge_expired()

        def run(cursor: Any) -> bool:
            cursor.execute(self._sql_delete_expired, (key,))
            cursor.execute(self._sql_claim, (key, encoded, ttl_s))
            return bool(cursor.rowcount == 1)

        return bool(self._run(run, transaction=True))

    def purge_expired(self) -> int:
        """Delete expired claims; returns how many."""
        self._last_purge = time.monotonic()
        return int(self._run(lambda cursor: cursor.execute(self._sql_purge, ())))
