"""Reading a TableQueue's waiting rows without claiming them, deleting chosen ones, and
counting them; TableQueue.browse, remove and depth call these on the calling thread
(the dead-letter tooling, `onestep dlq`, `onestep.testing.run_until_idle`), on the
connector's pooled connections.

The rows that count are the `pending` ones: waiting to be claimed, due now or later (a
delayed retry). A dead letter written to a table queue is such a row until a task that
consumes the table claims it; a row that is leased, done or failed is not one any more.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any

import psycopg.errors

from onestep.kit import DeadLetterEntry, NotBrowsable

if TYPE_CHECKING:
    from ._connector import PostgresConnector
    from ._queue_schema import QueueColumns

#: Rows read per query while browsing, and ids per DELETE.
_PAGE = 500


class PendingRows:
    """The statements that browse, delete and count one table's pending rows."""

    def __init__(
        self, connector: PostgresConnector, table: str, quoted_table: str, columns: QueueColumns
    ) -> None:
        self.connector = connector
        self.table = table
        c, t = columns, quoted_table
        self.has_meta = c.meta is not None
        meta = f"{c.meta}::text" if c.meta is not None else "NULL"
        pending = f"{c.status} = 'pending'"
        self._sql_page = (
            f"SELECT {c.id}, {c.payload}, {meta} FROM {t} "
            f"WHERE {pending} AND {c.id} > %s ORDER BY {c.id} LIMIT %s"
        )
        self._sql_delete = f"DELETE FROM {t} WHERE {pending} AND {c.id} = ANY(%s::bigint[])"
        self._sql_count = f"SELECT count(*) FROM {t} WHERE {pending}"
        self._sql_next_due = (
            f"SELECT EXTRACT(EPOCH FROM min({c.available_at}) - now())::float8 FROM {t} "
            f"WHERE {pending}"
        )

    def browse(
        self, limit: int | None, match: Callable[[DeadLetterEntry], bool] | None
    ) -> list[DeadLetterEntry]:
        """The first `limit` pending rows (all with None) that `match` accepts, by id."""
        if match is not None and not self.has_meta:
            raise NotBrowsable(
                f"table {self.table!r} has no meta column (meta_column=None): its rows do "
                "not say which task they are dead letters of; use a table queue with a "
                "meta column as dead_letter"
            )
        found: list[DeadLetterEntry] = []
        after = -1
        while limit is None or len(found) < limit:
            rows = self._query(self._sql_page, (after, _PAGE))
            for row in rows:
                entry = _entry(row)
                if match is None or match(entry):
                    found.append(entry)
                    if limit is not None and len(found) >= limit:
                        break
            if len(rows) < _PAGE:
                break
            after = rows[-1][0]
        return found

    def remove(self, ids: Iterable[Hashable]) -> int:
        """Delete the pending rows with these ids; returns how many were deleted (a row
        claimed meanwhile by a consumer of the table is left to it)."""
        # a row id is an int; any other id (from another kind of sink) names no row here
        wanted = sorted({row_id for row_id in ids if type(row_id) is int})
        removed = 0
        for start in range(0, len(wanted), _PAGE):
            chunk = wanted[start : start + _PAGE]
            removed += int(self._run(self._deleter(chunk)))
        return removed

    def _deleter(self, ids: list[int]) -> Callable[[Any], int]:
        return lambda conn: int(conn.execute(self._sql_delete, (ids,)).rowcount)

    def count(self) -> int:
        """The pending rows, due now or later (0 when the table does not exist yet)."""
        rows = self._query(self._sql_count, ())
        return int(rows[0][0]) if rows else 0

    def next_due_in(self, conn: Any) -> float | None:
        """Seconds until the earliest pending row is due (None when there is none), on
        the source's own connection; one look at the first entry of the claim index."""
        row = conn.execute(self._sql_next_due).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        rows: list[Any] = self._run(lambda conn: conn.execute(sql, args).fetchall(), missing=[])
        return rows

    def _run(self, statement: Callable[[Any], Any], missing: Any = 0) -> Any:
        """`statement(conn)` on a pooled connection (autocommit); `missing` when the
        table does not exist (it holds no rows)."""

        def on(conn: Any) -> Any:
            try:
                return statement(conn)
            except psycopg.errors.UndefinedTable:
                return missing

        return self.connector.run_pooled(on)


def _entry(row: Any) -> DeadLetterEntry:
    """A pending row as an entry: its id, its payload and meta decoded from JSON (as
    text when they are not JSON: such a row matches no task)."""
    row_id, raw_payload, raw_meta = row
    try:
        payload = json.loads(raw_payload)
    except (TypeError, ValueError):
        payload = raw_payload
    meta: Any = {} if raw_meta is None else json.loads(raw_meta)
    if not isinstance(meta, dict):
        meta = {"meta": meta}
    return DeadLetterEntry(int(row_id), payload, meta)
