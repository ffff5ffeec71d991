"""Upstream's `PostgresConnector` (onestep-sql) on onestep's PostgreSQL connector; built on
the importing thread."""

from __future__ import annotations

from typing import Any

from adapters.postgres import PostgresConnector as _PostgresConnector

from ._sql import SqlCompat


class PostgresConnector(SqlCompat, _PostgresConnector):  # type: ignore[misc]
    """`onestep_sql.postgres.PostgresConnector(dsn, **engine_options)` for migrants:
    upstream's keyword-only methods; `postgresql+psycopg://` and `postgresql+asyncpg://`
    DSNs."""

    KIND = "PostgreSQL"

    def __init__(self, dsn: str, **engine_options: Any) -> None:
        self._compat_init(dsn, engine_options)
