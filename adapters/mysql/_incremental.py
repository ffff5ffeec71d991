"""IncrementalSource: follows a MySQL/MariaDB table in cursor order (`(updated_at, id)`),
storing how far it got in a StateStore; made by MySQLConnector.incremental. The kit's
IncrementalTableSource does the work; this gives it MySQL's quoting and pymysql."""

from __future__ import annotations

from typing import Any

from onestep.kit import IncrementalTableSource

from ._connection import close_quietly, quote_ident


class IncrementalSource(IncrementalTableSource):
    """Every row of a MySQL/MariaDB table once, in cursor order, then each new or updated
    row as it appears (see IncrementalTableSource)."""

    kind = "MySQLIncrementalSource"
    prefix = "mysql"

    def quote(self, name: str, what: str) -> str:
        return quote_ident(name, what)

    def connect(self) -> Any:
        return self.connector.connect()

    def close_connection(self, conn: Any) -> None:
        close_quietly(conn)
