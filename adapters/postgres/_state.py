"""PostgresStateStore: a StateStore in one PostgreSQL table, shared by every process;
made by PostgresConnector.state_store, called from worker threads. Expiry follows the
database server's clock."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from onestep import StateStore
from onestep.kit import check_ttl, encode_json

from ._connection import quote_ident, unquoted

if TYPE_CHECKING:
    from ._connector import PostgresConnector

_MISSING = object()

# A row is live while it has no expiry or its expiry is ahead of the server's clock:
# every expiry is decided by the database server, never by the clock of the caller.
_LIVE = "(expires_at IS NULL OR expires_at > clock_timestamp())"


class PostgresStateStore(StateStore):
    """A StateStore in one table (`key` text primary key, `value` JSON text,
    `expires_at` timestamptz or NULL), shared by every process and host that use the
    same database. `incr`, `update`, `pop` and `claim` are atomic across them (`claim`
    is one `INSERT ... ON CONFLICT DO UPDATE ... WHERE expired`; the others lock the
    row in one transaction). Called from worker threads: each call borrows a
    connection from the connector's pool. Claims expire by the database server's
    clock, so the hosts' clocks do not matter.
    """

    blocking = True

    #: How often claim() deletes expired claims, so the table does not grow by one row
    #: per schedule tick.
    PURGE_EVERY_S = 60.0

    def __init__(self, connector: PostgresConnector, table: str = "onestep_state") -> None:
        self.connector = connector
        self.table = table
        t = self._table = quote_ident(table, "table")
        self._last_purge = time.monotonic()
        self._sql_get = f"SELECT value FROM {t} WHERE key = %s AND {_LIVE}"
        self._sql_set = (
            f"INSERT INTO {t} (key, value, expires_at) VALUES (%s, %s, NULL) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires_at = NULL"
        )
        # the placeholder (expired at once) makes sure there is a row to lock; a
        # concurrent caller's insert waits for ours and then does nothing
        self._sql_placeholder = (
            f"INSERT INTO {t} (key, value, expires_at) VALUES (%s, 'null', '-infinity') "
            "ON CONFLICT (key) DO NOTHING"
        )
        self._sql_lock = f"SELECT value, {_LIVE} FROM {t} WHERE key = %s FOR UPDATE"
        self._sql_delete = f"DELETE FROM {t} WHERE key = %s"
        # one statement: a new key is inserted, an expired claim is taken over, a live
        # one is left alone (and no row comes back); a concurrent claimer waits on the
        # row lock and then sees the winner's live claim
        self._sql_claim = (
            f"INSERT INTO {t} AS s (key, value, expires_at) "
            "VALUES (%s, %s, clock_timestamp() + %s * interval '1 second') "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, "
            "expires_at = EXCLUDED.expires_at "
            "WHERE s.expires_at IS NOT NULL AND s.expires_at <= clock_timestamp() RETURNING 1"
        )
        self._sql_purge = (
            f"DELETE FROM {t} WHERE expires_at IS NOT NULL AND expires_at <= clock_timestamp()"
        )
        self._sql_keys = f"SELECT key FROM {t} WHERE key LIKE %s AND {_LIVE} ORDER BY key"
        self._sql_take_tokens = _take_tokens_sql(t)
        create = (
            f'CREATE TABLE IF NOT EXISTS {t} (key text COLLATE "C" PRIMARY KEY, '
            "value text NOT NULL, expires_at timestamptz NULL)"
        )
        self._run(lambda conn: _create(conn, unquoted(create), table))

    def __repr__(self) -> str:
        return f"PostgresStateStore({self.table!r}, connector={self.connector!r})"

    def close(self) -> None:
        """Close the connector's pooled connections."""
        self.connector.close()

    def _run(self, operation: Callable[[Any], Any], *, transaction: bool = False) -> Any:
        def on(conn: Any) -> Any:
            if not transaction:
                return operation(conn)
            with conn.transaction():
                return operation(conn)

        return self.connector.run_pooled(on)

    @staticmethod
    def _encode(key: str, value: Any) -> str:
        return encode_json(value, f"state value for {key!r}")

    @staticmethod
    def _check_key(key: Any) -> str:
        if not isinstance(key, str):
            raise TypeError(f"state key must be a str, got {type(key).__name__}")
        if "\x00" in key:
            raise ValueError("state key cannot hold the NUL character")
        return key

    def get(self, key: str, default: Any = None) -> Any:
        key = self._check_key(key)
        row = self._run(lambda conn: conn.execute(self._sql_get, (key,)).fetchone())
        return default if row is None else json.loads(row[0])

    def set(self, key: str, value: Any) -> None:
        key = self._check_key(key)
        encoded = self._encode(key, value)
        self._run(lambda conn: conn.execute(self._sql_set, (key, encoded)))

    def delete(self, key: str) -> None:
        key = self._check_key(key)
        self._run(lambda conn: conn.execute(self._sql_delete, (key,)))

    def _locked(self, key: str, change: Callable[[Any, Any], Any]) -> Any:
        """Lock the row of `key` (made if missing) and call `change(conn, value)` with
        its live value (or _MISSING), in one transaction."""
        key = self._check_key(key)

        def run(conn: Any) -> Any:
            conn.execute(self._sql_placeholder, (key,))
            raw, live = conn.execute(self._sql_lock, (key,)).fetchone()
            return change(conn, json.loads(raw) if live else _MISSING)

        return self._run(run, transaction=True)

    def incr(self, key: str, amount: int = 1) -> int:
        def change(conn: Any, value: Any) -> int:
            new = int((0 if value is _MISSING else value) + amount)
            conn.execute(self._sql_set, (key, json.dumps(new)))
            return new

        return int(self._locked(key, change))

    def update(self, key: str, fn: Callable[[Any], Any], default: Any = None) -> Any:
        def change(conn: Any, value: Any) -> Any:
            new = fn(default if value is _MISSING else value)
            conn.execute(self._sql_set, (key, self._encode(key, new)))
            return new

        return self._locked(key, change)

    def pop(self, key: str, default: Any = None) -> Any:
        def change(conn: Any, value: Any) -> Any:
            conn.execute(self._sql_delete, (key,))
            return default if value is _MISSING else value

        return self._locked(key, change)

    def claim(self, key: str, ttl_s: float, value: Any = True) -> bool:
        """Set `key` for `ttl_s` seconds if it is absent or its claim expired; one
        winner across processes (one INSERT ... ON CONFLICT DO UPDATE ... WHERE the
        claim expired, by the server's clock)."""
        ttl_s = check_ttl(ttl_s)
        key = self._check_key(key)
        encoded = self._encode(key, value)
        if time.monotonic() - self._last_purge >= self.PURGE_EVERY_S:
            self.purge_expired()
        row = self._run(
            lambda conn: conn.execute(self._sql_claim, (key, encoded, float(ttl_s))).fetchone()
        )
        return row is not None

    def take_tokens(
        self, key: str, count: int, rate_per_s: float, burst: float
    ) -> tuple[int, float]:
        """The token bucket in one statement by the database server's clock (see
        StateStore.take_tokens); the row holds `[tokens, at, taken]`."""
        key = self._check_key(key)
        args = {"key": key, "want": int(count), "rate": float(rate_per_s), "burst": float(burst)}
        row = self._run(lambda conn: conn.execute(self._sql_take_tokens, args).fetchone())
        tokens, _, taken = json.loads(row[0])
        taken = int(taken)
        return taken, 0.0 if taken else (1.0 - float(tokens)) / rate_per_s

    def purge_expired(self) -> int:
        """Delete expired claims; returns how many."""
        self._last_purge = time.monotonic()
        return int(self._run(lambda conn: conn.execute(self._sql_purge).rowcount))

    def keys(self, prefix: str = "") -> list[str]:
        """The live keys that start with `prefix`, sorted."""
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._run(lambda conn: conn.execute(self._sql_keys, (pattern,)).fetchall())
        return [str(row[0]) for row in rows]


def _take_tokens_sql(table: str) -> str:
    """One INSERT ... ON CONFLICT DO UPDATE: a new bucket starts full; an existing one
    (`[tokens, at, ...]` JSON; anything else counts as new) is refilled for the time
    since `at` by the server's clock, and up to `want` whole tokens are taken. Row locks
    make concurrent callers queue; RETURNING gives `[tokens left, now, taken]`."""
    now = "extract(epoch FROM clock_timestamp())::float8"
    fresh = (
        f"json_build_array(%(burst)s::float8 - least(%(want)s, floor(%(burst)s::float8)), "
        f"{now}, least(%(want)s, floor(%(burst)s::float8)))::text"
    )
    old = "CASE WHEN s.value LIKE '[%%' THEN (s.value::json->>{i})::float8 END"
    refill = (
        "SELECT json_build_array(r - least(%(want)s, floor(r)), n, least(%(want)s, floor(r)))"
        "::text FROM (SELECT least(%(burst)s::float8, coalesce("
        + old.format(i=0)
        + ", %(burst)s::float8) + greatest(0.0, n - coalesce("
        + old.format(i=1)
        + f", n)) * %(rate)s::float8) AS r, n FROM (SELECT {now} AS n) AS c) AS x"
    )
    return (
        f"INSERT INTO {table} AS s (key, value, expires_at) VALUES (%(key)s, {fresh}, NULL) "
        f"ON CONFLICT (key) DO UPDATE SET value = ({refill}), expires_at = NULL "
        "RETURNING value"
    )


def _create(conn: Any, sql: str, table: str) -> None:
    """CREATE TABLE IF NOT EXISTS, tolerating another process creating it at the same
    moment (PostgreSQL then reports a duplicate in its catalog)."""
    try:
        conn.execute(sql)
    except Exception as exc:
        if getattr(exc, "sqlstate", None) not in ("23505", "42P07"):
            raise
