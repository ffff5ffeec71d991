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

import pymysql.err

from onestep.kit import DeadLetterClaim, DeadLetterEntry, NotBrowsable

from ._connection import close_quietly, error_code, placeholders
from ._queue_schema import NO_SUCH_TABLE

if TYPE_CHECKING:
    from ._connector import MySQLConnector
    from ._queue_schema import QueueColumns

#: Rows read per query while browsing, and ids per DELETE.
_PAGE = 500

#: Where a statement takes the primary-key hint (a table name cannot hold a NUL).
_HINT = "\0hint\0"

#: MariaDB/MySQL error number: an index hint names a key the table does not have.
_NO_SUCH_KEY = 1176


class PendingRows:
    """The statements that browse, delete and count one table's pending rows."""

    def __init__(
        self, connector: MySQLConnector, table: str, quoted_table: str, columns: QueueColumns
    ) -> None:
        self.connector = connector
        self.table = table
        c, t = columns, quoted_table
        self.has_meta = c.meta is not None
        meta = c.meta if c.meta is not None else "NULL"
        pending = f"{c.status} = 'pending'"
        self._sql_page = (
            f"SELECT {c.id}, {c.payload}, {meta} FROM {t} "
            f"WHERE {pending} AND {c.id} > %s ORDER BY {c.id} LIMIT %s"
        )
        self._sql_count = f"SELECT COUNT(*) FROM {t} WHERE {pending}"
        # Claims lock and delete rows by the primary key (_HINT): a locking read or a
        # DELETE that the optimiser runs as a scan (of the status index, or of the table)
        # locks or waits for every row it passes (MariaDB 10.11, READ COMMITTED), so a
        # second claim found nothing free and two claims deleting at once deadlocked. A
        # table whose id column is no primary key gets them without the hint (_execute).
        self._hint = " FORCE INDEX (PRIMARY)"
        self._sql_lock = f"SELECT {c.id} FROM {t}" + _HINT + f" WHERE {pending} AND {c.id} IN "
        self._sql_delete = f"DELETE {t} FROM {t}" + _HINT + f" WHERE {pending} AND {c.id} IN "

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
            conn.begin()
            with conn.cursor() as cursor:
                entries = self._lock_first(cursor, limit, match)
        except pymysql.err.ProgrammingError as exc:
            close_quietly(conn)
            if error_code(exc) == NO_SUCH_TABLE:
                return RowClaim(self, None, [])
            raise
        except BaseException:
            close_quietly(conn)  # rolls back: nothing stays locked
            raise
        return RowClaim(self, conn, entries)

    def _lock_first(
        self, cursor: Any, limit: int, match: Callable[[DeadLetterEntry], bool] | None
    ) -> list[DeadLetterEntry]:
        found: list[DeadLetterEntry] = []
        after = -1
        while len(found) < limit:
            cursor.execute(self._sql_page, (after, _PAGE))
            rows = list(cursor.fetchall())
            wanted = [e for e in map(_entry, rows) if match is None or match(e)]
            while wanted and len(found) < limit:
                batch, wanted = wanted[: limit - len(found)], wanted[limit - len(found) :]
                locked = self._lock(cursor, [entry.id for entry in batch])
                found.extend(entry for entry in batch if entry.id in locked)
            if len(rows) < _PAGE:
                break
            after = rows[-1][0]
        return found

    def _lock(self, cursor: Any, ids: list[Any]) -> set[Any]:
        """Lock the rows with these ids that are pending and not locked by anyone else;
        returns their ids."""
        tail = f"({placeholders(len(ids))}) FOR UPDATE SKIP LOCKED"
        self._execute(cursor, self._sql_lock, tail, ids)
        return {row[0] for row in cursor.fetchall()}

    def _execute(self, cursor: Any, statement: str, tail: str, args: list[Any]) -> int:
        """Run `statement` + `tail`, with the primary-key hint while the table takes it."""
        try:
            return int(cursor.execute(statement.replace(_HINT, self._hint) + tail, args))
        except pymysql.err.MySQLError as exc:
            if error_code(exc) != _NO_SUCH_KEY or not self._hint:
                raise
        self._hint = ""
        return int(cursor.execute(statement.replace(_HINT, "") + tail, args))

    def remove(self, ids: Iterable[Hashable]) -> int:
        """Delete the pending rows with these ids; returns how many were deleted (a row
        claimed meanwhile by a consumer of the table is left to it)."""
        # a row id is an int; any other id (from another kind of sink) names no row here
        wanted = sorted({row_id for row_id in ids if type(row_id) is int})
        return int(self._run(lambda cursor: self.delete(cursor, wanted)))

    def delete(self, cursor: Any, ids: list[int]) -> int:
        """Delete the pending rows with these ids on `cursor`; returns how many."""
        removed = 0
        for start in range(0, len(ids), _PAGE):
            chunk = ids[start : start + _PAGE]
            tail = f"({placeholders(len(chunk))})"
            removed += self._execute(cursor, self._sql_delete, tail, chunk)
        return removed

    def count(self) -> int:
        """The pending rows, due now or later (0 when the table does not exist yet)."""
        rows = self._query(self._sql_count, ())
        return int(rows[0][0]) if rows else 0

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        def select(cursor: Any) -> list[Any]:
            cursor.execute(sql, args)
            return list(cursor.fetchall())

        rows: list[Any] = self._run(select, missing=[])
        return rows

    def _run(self, statement: Callable[[Any], Any], missing: Any = 0) -> Any:
        """`statement(cursor)` on a pooled connection (autocommit); `missing` when the
        table does not exist (it holds no rows)."""

        def on(conn: Any) -> Any:
            try:
                with conn.cursor() as cursor:
                    return statement(cursor)
            except pymysql.err.ProgrammingError as exc:
                if error_code(exc) == NO_SUCH_TABLE:
                    return missing
                raise

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
            with conn.cursor() as cursor:
                removed = self._rows.delete(cursor, wanted)
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
    meta: Any = {}
    if raw_meta is not None:
        try:
            meta = json.loads(raw_meta)
        except (TypeError, ValueError):
            meta = {"meta": raw_meta}
    if not isinstance(meta, dict):
        meta = {"meta": meta}
    return DeadLetterEntry(int(row_id), payload, meta)
