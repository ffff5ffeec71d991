"""The check a BusinessTable makes as it opens: the server has SKIP LOCKED, the table and
every column the options name exist, and `where` is a valid condition on the table;
runs on the opening thread, on a pooled connection."""

from __future__ import annotations

from typing import Any

import pymysql.err

from onestep.kit import BusinessTableSpec

from ._connection import error_code, error_text
from ._queue_schema import NO_SUCH_TABLE, UNKNOWN_COLUMN, check_server_supports_skip_locked


def check_business_table(
    conn: Any, table: str, quoted_table: str, spec: BusinessTableSpec, target: str
) -> None:
    """ConnectionError for a server without SKIP LOCKED; ValueError for a missing table,
    a missing column (naming it and its option) or a `where` the server refuses."""
    check_server_supports_skip_locked(conn, target)
    named = {"key": [spec.key]}
    for param in ("claim", "ack", "nack"):
        named[param] = list(getattr(spec, param))
    for param in ("lease_column", "attempts_column"):
        if getattr(spec, param) is not None:
            named[param] = [getattr(spec, param)]
    with conn.cursor() as cursor:
        try:
            cursor.execute(f"SHOW COLUMNS FROM {quoted_table}", ())
        except pymysql.err.MySQLError as exc:
            if error_code(exc) == NO_SUCH_TABLE:
                raise ValueError(
                    f"table {table!r} does not exist: a business-table queue works on a "
                    "table the application already has"
                ) from None
            raise
        existing = {str(row[0]).lower() for row in cursor.fetchall()}
        missing = [
            f"`{column}` ({param})"
            for param, columns in named.items()
            for column in columns
            if column.lower() not in existing
        ]
        if missing:
            raise ValueError(f"table {table!r} lacks column(s) {', '.join(missing)}")
        where = spec.where.replace("%", "%%")
        try:
            cursor.execute(f"SELECT * FROM {quoted_table} WHERE ({where}) LIMIT 0", ())
        except pymysql.err.MySQLError as exc:
            refused = isinstance(exc, pymysql.err.ProgrammingError) or (
                error_code(exc) == UNKNOWN_COLUMN
            )
            if not refused:
                raise
            raise ValueError(
                f"where={spec.where!r} is not a valid condition on table {table!r}: "
                f"{error_text(exc)}"
            ) from None
