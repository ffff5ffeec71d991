"""BusinessTable: an application's own PostgreSQL table as a Source, its rows picked by a
`where` condition and marked with the `claim` / `ack` / `nack` values; made by
PostgresConnector.table_queue(where=..., claim=..., ack=..., nack=...). The kit's
BusinessTableSource does the work; this gives it PostgreSQL's SQL, psycopg and the
check made as it opens (on the opening thread, a pooled connection)."""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg

from onestep.kit import BusinessTableSource

from ._connection import close_quietly, quote_ident

# Type oids the optional columns may have: timestamp, timestamptz; smallint, integer,
# bigint, numeric.
_TIMESTAMPS = {1114: "timestamp", 1184: "timestamptz"}
_INTEGERS = {20: "bigint", 21: "smallint", 23: "integer", 1700: "numeric"}


class BusinessTable(BusinessTableSource):
    """Rows of an existing PostgreSQL table as messages (see BusinessTableSource).

    Column names are quoted, so they match exactly (`"Status"` is not `status`). The
    optional `lease_column` is a `timestamptz` (or `timestamp`) column: a claim writes
    `clock_timestamp()` there, and a row whose lease column is older than `lease_s` by
    the server's clock is taken back.
    """

    kind = "PostgresBusinessTable"
    prefix = "postgresql"
    now_sql = "clock_timestamp()"

    def quote(self, name: str, what: str) -> str:
        return quote_ident(name, what)

    def same(self, quoted_column: str) -> str:
        # NULL-safe: a claim value of None matches a NULL column
        return f"{quoted_column} IS NOT DISTINCT FROM %s"

    def expired_sql(self, quoted_column: str) -> str:
        return f"{quoted_column} < clock_timestamp() - %s * interval '1 microsecond'"

    def connect(self) -> Any:
        return self.connector.connect()

    def close_connection(self, conn: Any) -> None:
        close_quietly(conn)

    def transaction(self, conn: Any) -> contextlib.AbstractContextManager[Any]:
        return conn.transaction()  # type: ignore[no-any-return]

    def check_table(self) -> None:
        """ValueError for a missing table, a missing column (naming it and its option),
        a lease or attempts column of the wrong type, or a `where` the server refuses."""
        self.connector.run_pooled(self._check)

    def _check(self, conn: Any) -> None:
        spec, table = self.spec, self.table
        try:
            cursor = conn.execute(f"SELECT * FROM {self._t} LIMIT 0")
        except psycopg.errors.UndefinedTable:
            raise ValueError(
                f"table {table!r} does not exist: a business-table queue works on a table "
                "the application already has"
            ) from None
        types = {column.name: column.type_code for column in cursor.description or ()}
        named = [("key", spec.key)]
        named += [
            (param, column) for param in ("claim", "ack", "nack") for column in getattr(spec, param)
        ]
        for param in ("lease_column", "attempts_column"):
            if getattr(spec, param) is not None:
                named.append((param, getattr(spec, param)))
        missing = [f'"{column}" ({param})' for param, column in named if column not in types]
        if missing:
            raise ValueError(
                f"table {table!r} lacks column(s) {', '.join(missing)} (PostgreSQL column "
                "names are case-sensitive once quoted: an unquoted Status is status)"
            )
        for param, column, allowed in (
            ("lease_column", spec.lease_column, _TIMESTAMPS),
            ("attempts_column", spec.attempts_column, _INTEGERS),
        ):
            if column is not None and types[column] not in allowed:
                raise ValueError(
                    f"{param} {column!r} of table {table!r} must be of type "
                    f"{' or '.join(allowed.values())}"
                )
        where = spec.where.replace("%", "%%")
        try:
            conn.execute(f"SELECT * FROM {self._t} WHERE ({where}) LIMIT 0", ())
        except (psycopg.ProgrammingError, psycopg.DataError) as exc:
            reason = " ".join(str(exc).split())
            raise ValueError(
                f"where={spec.where!r} is not a valid condition on table {table!r}: {reason}"
            ) from None
