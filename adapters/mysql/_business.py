"""BusinessTable: an application's own MySQL/MariaDB table as a Source, its rows picked by a
`where` condition and marked with the `claim` / `ack` / `nack` values; made by
MySQLConnector.table_queue(where=..., claim=..., ack=..., nack=...). The kit's
BusinessTableSource does the work; this gives it MySQL's SQL and pymysql."""

from __future__ import annotations

import contextlib
from typing import Any

from onestep.kit import BusinessTableSource

from ._business_schema import check_business_table
from ._connection import close_quietly, quote_ident, transaction


class BusinessTable(BusinessTableSource):
    """Rows of an existing MySQL/MariaDB table as messages (see BusinessTableSource).

    The optional `lease_column` is a DATETIME(6)/TIMESTAMP(6) column: a claim writes
    `NOW(6)` there, and a row whose lease column is older than `lease_s` is taken back.
    """

    kind = "MySQLBusinessTable"
    prefix = "mysql"
    now_sql = "NOW(6)"

    def quote(self, name: str, what: str) -> str:
        return quote_ident(name, what)

    def same(self, quoted_column: str) -> str:
        # `<=>` is NULL-safe: a claim value of None matches a NULL column
        return f"{quoted_column} <=> %s"

    def expired_sql(self, quoted_column: str) -> str:
        return f"{quoted_column} < NOW(6) - INTERVAL %s MICROSECOND"

    def connect(self) -> Any:
        return self.connector.connect()

    def close_connection(self, conn: Any) -> None:
        close_quietly(conn)

    def transaction(self, conn: Any) -> contextlib.AbstractContextManager[Any]:
        return transaction(conn)

    def check_table(self) -> None:
        target = self.connector.describe_target()
        self.connector.run_pooled(
            lambda conn: check_business_table(conn, self.table, self._t, self.spec, target)
        )
