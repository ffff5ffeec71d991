"""IncrementalSource: follows a PostgreSQL table in cursor order (`(updated_at, id)`),
storing how far it got in a StateStore; made by PostgresConnector.incremental. The kit's
IncrementalTableSource does the work; this gives it PostgreSQL's quoting and psycopg."""

from __future__ import annotations

from typing import Any

from onestep.kit import IncrementalTableSource

from ._connection import close_quietly, quote_ident


class IncrementalSource(IncrementalTableSource):
    """Every row of a PostgreSQL table once, in cursor order (a row-value comparison
    `(updated_at, id) > (%s, %s)`, which an index on those columns serves), then each
    new or updated row as it appears (see IncrementalTableSource)."""

    kind = "PostgresIncrementalSource"
    prefix = "postgresql"

    def quote(self, name: str, what: str) -> str:
        return quote_ident(name, what)

    def connect(self) -> Any:
        return self.connector.connect()

    def close_connection(self, conn: Any) -> None:
        close_quietly(conn)
