"""IncrementalTableSource: what a SQL connector's incremental source does whatever the
dialect (read in cursor order after the last position, track and store progress); the
MySQL and PostgreSQL connectors subclass it with their quoting and driver. Re-exported
by onestep.kit; its Source methods run on the source actor's thread, `attach` on the
thread that starts the app."""

from __future__ import annotations

import logging
import time
from typing import Any

from .._values import check_int, check_number
from ..core import Delivery, Source, SourceContext
from ..state import StateStore
from ._tables import CursorProgress, IncrementalSpec, column_index, json_value, row_dict


class IncrementalTableSource(Source):
    """Every row of a table once, in the order of its cursor columns, then each new or
    updated row as it appears (Logstash's `tracking_column`, with a tie-breaker).

    `fetch` reads `SELECT * ... WHERE (<cursor>) > (<last position>) ORDER BY <cursor>
    LIMIT n`, where the cursor is `cursor` plus `key` (so rows sharing a timestamp are
    ordered by key and none is skipped). Nothing is written to the table. The stored
    position (in `state`, else the app's state store, under `state_key`) advances only
    to the last row whose every predecessor succeeded or was dead-lettered
    (CursorProgress): a restart reads again from there, so it skips nothing and repeats
    at most the rows that had not finished. A retry runs the row again from memory; a
    row that fails with no dead-letter sink holds the stored position back until the
    next restart re-reads it.

    A dialect subclass gives `quote`, `connect` and `close_connection`.
    """

    #: `describe()`'s type, and the prefix of the default name.
    kind = "IncrementalSource"
    prefix = "sql"

    def __init__(
        self,
        connector: Any,
        table: str,
        spec: IncrementalSpec,
        *,
        batch_size: int = 1000,
        poll_interval_s: float = 1.0,
        state: StateStore | None = None,
        state_key: str | None = None,
        name: str | None = None,
    ) -> None:
        self.connector = connector
        self.table = table
        self.spec = spec
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        # per source, where Source declares a class-wide default
        self.poll_interval_s = check_number(  # type: ignore[misc]
            "poll_interval_s", poll_interval_s, exclusive=True
        )
        if state is not None and not isinstance(state, StateStore):
            raise ValueError(f"state must be a StateStore or None, got {state!r}")
        if state_key is not None and (not isinstance(state_key, str) or not state_key):
            raise ValueError(f"state_key must be a non-empty string or None, got {state_key!r}")
        self.state = state
        self.state_key = state_key
        self._log = logging.getLogger(f"onestep.{self.prefix}")
        self.name = name or f"{self.prefix}:{table}:incremental"
        t = self.quote(table, "table")
        order = ", ".join(self.quote(column, "cursor column") for column in spec.order)
        where = "" if spec.where is None else f"({spec.where.replace('%', '%%')})"
        after = f"({order}) > ({', '.join(['%s'] * len(spec.order))})"
        self._sql_first = (
            f"SELECT * FROM {t}{' WHERE ' + where if where else ''} ORDER BY {order} LIMIT %s"
        )
        self._sql_after = (
            f"SELECT * FROM {t} WHERE {after}{' AND ' + where if where else ''} "
            f"ORDER BY {order} LIMIT %s"
        )
        self._conn: Any = None
        self._progress: CursorProgress | None = None
        self._retries: list[tuple[float, Delivery]] = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.table!r}, connector={self.connector!r})"

    # -- the dialect (a subclass gives these) -------------------------------------------

    def quote(self, name: str, what: str) -> str:
        """`name` quoted as an identifier (`%` doubled for the driver's formatting)."""
        raise NotImplementedError

    def connect(self) -> Any:
        """A new autocommit connection for the source actor's thread."""
        raise NotImplementedError

    def close_connection(self, conn: Any) -> None:
        """Close `conn`, ignoring errors (it may be dead)."""
        raise NotImplementedError

    # -- the app's thread -------------------------------------------------------------------

    def attach(self, context: SourceContext) -> None:
        """Called as the app starts: without `state`, the app's state store; without
        `state_key`, `<app>:<task>:cursor:<table>` (ctx.state's scope)."""
        if self.state is None:
            self.state = context.app.state
        if self.state_key is None:
            self.state_key = f"{context.app.name}:{context.task}:cursor:{self.table}"

    # -- the source actor's thread ----------------------------------------------------------

    def open(self) -> None:
        """Read the stored position (once; a reopen after a lost connection keeps the
        rows in flight) and connect."""
        if self.state is None or self.state_key is None:
            raise ValueError(
                "an incremental source needs a state store: pass state=... and state_key=..., "
                "or use it as a task's source (it then uses the app's state store)"
            )
        if self._progress is None:
            self._progress = CursorProgress.restore(self.state.get(self.state_key))
        self._connection()

    def close(self) -> None:
        """Store the position if it moved, and disconnect."""
        try:
            self.flush()
        finally:
            conn, self._conn = self._conn, None
            if conn is not None:
                self.close_connection(conn)

    def flush(self) -> None:
        """Store the committed position if it moved: once per batch, when the source
        actor's mailbox is empty (a crash before it repeats those rows, never skips)."""
        progress = self._progress
        if progress is not None and progress.changed:
            assert self.state is not None and self.state_key is not None
            self.state.set(self.state_key, progress.snapshot())

    def _connection(self) -> Any:
        conn = self._conn
        if conn is None or getattr(conn, "closed", False):
            conn = self._conn = self.connect()
        return conn

    def fetch(self, limit: int) -> list[Delivery]:
        """Due retries, then up to min(limit, batch_size) rows after the last one read."""
        progress = self._progress
        assert progress is not None, "fetch before open"
        deliveries = self._due_retries(limit)
        count = min(limit, self.batch_size) - len(deliveries)
        if count <= 0:
            return deliveries
        last = progress.last
        with self._connection().cursor() as cursor:
            if last is None:
                cursor.execute(self._sql_first, (count,))
            else:
                cursor.execute(self._sql_after, (*last, count))
            rows = cursor.fetchall()
            columns = [column[0] for column in cursor.description or ()]
        skipped = False
        indexes = [column_index(columns, column) for column in self.spec.order]
        key_index = column_index(columns, self.spec.key)
        for row in rows:
            position = tuple(row[i] for i in indexes)
            if not progress.dispatch(position):
                skipped = True  # it finished before the restart
                continue
            deliveries.append(
                Delivery(
                    row_dict(columns, row),
                    meta={"key": json_value(row[key_index])},
                    handle=position,
                )
            )
        if skipped:
            self.flush()  # no settlement follows a skipped row to store the position
        return deliveries

    def _due_retries(self, limit: int) -> list[Delivery]:
        if not self._retries:
            return []
        now = time.monotonic()
        due = [entry for entry in self._retries if entry[0] <= now][:limit]
        if due:
            taken = {id(entry[1]) for entry in due}
            self._retries = [entry for entry in self._retries if id(entry[1]) not in taken]
        return [delivery for _, delivery in due]

    def ack(self, delivery: Delivery) -> None:
        """The row succeeded: the position may move (stored at the next flush)."""
        self._finished(delivery.handle)

    def dead_lettered(self, delivery: Delivery, error: BaseException | None = None) -> None:
        """The row's dead letter was stored: it counts as finished."""
        self._finished(delivery.handle)

    def retry(self, delivery: Delivery, delay_s: float | None = None) -> None:
        """Run the row again after `delay_s` (from memory), `attempts` one higher."""
        again = Delivery(
            delivery.payload,
            meta=delivery.meta,
            attempts=delivery.attempts + 1,
            handle=delivery.handle,
        )
        self._retries.append((time.monotonic() + (delay_s or 0.0), again))

    def fail(self, delivery: Delivery, error: BaseException | None = None) -> None:
        """Given up with no dead-letter sink: the stored position stays before this row,
        so the next start reads it again (a dead-letter sink lets the cursor pass it)."""
        self._log.warning(
            "%s: row %s failed with no dead-letter sink; the stored cursor stays before it "
            "until a restart re-reads it (give the task a dead_letter sink to move past it)",
            self.name,
            delivery.meta.get("key"),
        )

    def release(self, delivery: Delivery) -> None:
        """Shutdown: the row stays unfinished; the next start reads it again."""

    def _finished(self, position: tuple[Any, ...]) -> None:
        progress = self._progress
        if progress is not None:
            progress.finish(position)

    def position(self) -> tuple[Any, ...] | None:
        """The stored position (the cursor values of the last row stored), any thread."""
        if self.state is None or self.state_key is None:
            return None
        return CursorProgress.restore(self.state.get(self.state_key)).committed

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "name": self.name,
            "table": self.table,
            "cursor": list(self.spec.order),
            "batch_size": self.batch_size,
            "server": self.connector.url,
        }
