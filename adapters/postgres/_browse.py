"""Reading a TableQueue's waiting rows without claiming them, claiming some, deleting
chosen ones, and counting them; TableQueue.browse, take, remove and depth call these on
the calling thread (the dead-letter tooling, `onestep dlq`,
`onestep.testing.run_until_idle`), on the connector's pooled connections (a claim on a
connection of its own).

The rows that count are the `pending` ones: waiting to be claimed, due now or later (a
delayed retry). A dead letter written to a table queue is such a row until a task that
consumes the table claims it; a row that is leased, done or failed is not one any more.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any

import psycopg.errors

from onestep.kit import DeadLetterClaim, DeadLetterEntry, NotBrowsable

from ._connection import close_quietly

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
        self._sql_lock = (
            f"SELECT {c.id} FROM {t} WHERE {pending} AND {c.id} = ANY(%s::bigint[]) "
            "FOR UPDATE SKIP LOCKED"
        )
        self._sql_count = f"SELECT count(*) FROM {t} WHERE {pending}"
        self._sql_next_due = (
            f"SELECT EXTRACT(EPOCH FROM min({c.available_at}) - now())::float8 FROM {t} "
            f"WHERE {pending}"
        )

    def _check_match(self, match: Callable[[DeadLetterEntry], bool] | None) -> None:
        if match is not None and not self.has_meta:
            raise NotBrowsable(
                f"table {self.table!r} has no meta column (meta_column=None): its rows do "
                "not say which task they are dead letters of; use a table queue with a "
                "meta column as dead_letter"
            )

    def browse(
        self, limit: int | None, match: Callable[[DeadLetterEntry], bool] | None
    ) -> list[DeadLetterEntry]:
        """The first `limit` pending rows (all with None) that `match` accepts, by id."""
        self._check_match(match)
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

    def take(self, limit: int, match: Callable[[DeadLetterEntry], bool] | None) -> RowClaim:
        """Claim the first `limit` pending rows that `match` accepts, by id: each row is
        locked (`FOR UPDATE SKIP LOCKED`) in a transaction on a connection of the
        claim's own, so another claim and a consumer's fetch skip it until the claim
        ends; a row another holds is skipped here. Rows are read without a lock first
        and only the matching ones are locked, so dead letters of other tasks in the
        same table stay free."""
        self._check_match(match)
        conn = self.connector.connect(autocommit=False)
        try:
            entries = self._lock_first(conn, limit, match)
        except psycopg.errors.UndefinedTable:
            close_quietly(conn)
            return RowClaim(self, None, [])
        except BaseException:
            close_quietly(conn)  # rolls back: nothing stays locked
            raise
        return RowClaim(self, conn, entries)

    def _lock_first(
        self, conn: Any, limit: int, match: Callable[[DeadLetterEntry], bool] | None
    ) -> list[DeadLetterEntry]:
        found: list[DeadLetterEntry] = []
        after = -1
        while len(found) < limit:
            rows = conn.execute(self._sql_page, (after, _PAGE)).fetchall()
            wanted = [e for e in map(_entry, rows) if match is None or match(e)]
            while wanted and len(found) < limit:
                batch, wanted = wanted[: limit - len(found)], wanted[limit - len(found) :]
                ids = [entry.id for entry in batch]
                locked = {row[0] for row in conn.execute(self._sql_lock, (ids,)).fetchall()}
                found.extend(entry for entry in batch if entry.id in locked)
            if len(rows) < _PAGE:
                break
            after = rows[-1][0]
        return found

    def delete(self, conn: Any, ids: list[int]) -> int:
        """Delete the pending rows with these ids on `conn`; returns how many."""
        removed = 0
        for start in range(0, len(ids), _PAGE):
            removed += int(self._deleter(ids[start : start + _PAGE])(conn))
        return removed

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


class RowClaim(DeadLetterClaim):
    """Rows locked by `PendingRows.take` in the open transaction of `conn`: settling
    deletes the named ones and commits, which unlocks the others; releasing rolls back.
    The connection closes either way (and a claim whose process dies is rolled back by
    the server when its connection drops)."""

    def __init__(self, rows: PendingRows, conn: Any, entries: list[DeadLetterEntry]) -> None:
        super().__init__(entries)
        self._rows = rows
        self._conn = conn

    def _settle(self, ids: list[Hashable]) -> int:
        conn, self._conn = self._conn, None
        if conn is None:
            return 0
        claimed = {entry.id for entry in self.entries}
        wanted = sorted({row_id for row_id in ids if type(row_id) is int and row_id in claimed})
        try:
            removed = self._rows.delete(conn, wanted)
            conn.commit()
        finally:
            close_quietly(conn)  # after a failed commit the server rolls back
        return removed

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.rollback()  # unlock now, not when the server notices the close
            close_quietly(conn)


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
