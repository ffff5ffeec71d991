"""Upstream's `MySQLConnector` (onestep-mysql, onestep-sql) on onestep's MySQL connector;
built on the importing thread."""

from __future__ import annotations

from typing import Any

from adapters.mysql import MySQLConnector as _MySQLConnector

from ._sql import SqlCompat


class MySQLConnector(SqlCompat, _MySQLConnector):  # type: ignore[misc]
    """`onestep_mysql.MySQLConnector(dsn, **engine_options)` for migrants: upstream's
    keyword-only `table_queue`, `incremental`, `table_sink`, `state_store`,
    `cursor_store`; `mysql+pymysql://`, `mysql+aiomysql://` and `mysql+asyncmy://` DSNs."""

    KIND = "MySQL"

    def __init__(self, dsn: str, **engine_options: Any) -> None:
        self._compat_init(dsn, engine_options)
