"""Leases: the rows one TableQueue worker has claimed and not yet settled, fenced by a
lease token; claims them, renews their leases, and writes their acks, retries,
releases and failures in groups. Owned by a TableQueue; every method runs on its
source actor's thread, on the (autocommit) connection that thread owns."""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any

import psycopg

from onestep import Delivery

from ._lease_sql import LeaseStatements
from ._queue_schema import QueueColumns

logger = logging.getLogger("onestep.postgres")

# How many rows one statement names (an array argument).
_MAX_ROWS_PER_STATEMENT = 1000

# One buffered settlement: (row id, lease token, delivery).
Entry = tuple[int, str, Delivery]

# One settlement statement sent: (its cursor, row ids, token, the entries, kind).
_Sent = tuple[Any, list[int], str, list[Entry], str]

# Pipeline mode needs libpq 14+ (the psycopg[binary] wheels bundle a newer one).
_PIPELINE = psycopg.Pipeline.is_supported()


class Leases:
    """The rows this worker holds, and what it owes the table about them.

    A claim writes a fresh random token into the claimed rows (one per claim batch);
    renewing, acking, retrying, releasing and failing match `(id, lease_token)`, so a
    worker whose lease expired and whose row another worker claimed can no longer
    touch it. Such a row is *lost*: its delivery gets `meta["lease_lost"] = True`, a
    warning names it, and its settlement is dropped (the other worker settles it).
    Every lease is reckoned by the database server's clock (`clock_timestamp()`),
    never by this host's.

    Without a token column (`lease_token_column=None`) rows are matched by id and
    status only: no fencing.
    """

    def __init__(
        self,
        *,
        name: str,
        table: str,
        quoted_table: str,
        columns: QueueColumns,
        lease_s: float,
        delete_on_ack: bool,
    ) -> None:
        self.name = name
        self.table = table
        self.fenced = columns.lease_token is not None
        #: Claim higher priorities first: set by the queue once its table is known to
        #: have the priority column.
        self.by_priority = False
        #: Whether flush_and_claim writes the settlements in the claim's round trip.
        self.pipelined = _PIPELINE
        self._has_meta = columns.meta is not None
        self._delete_on_ack = delete_on_ack
        self._lease_s = float(lease_s)
        # How often a busy queue also looks for expired leases (an idle one looks on
        # every fetch that finds fewer rows than it could take).
        self._expired_check_every_s = min(1.0, lease_s / 2)
        self._last_expired_check = 0.0
        # The keepalive renews every lease_s / 3; when it is late (this thread was
        # held up), a fetch renews first, so it never claims our own expired rows.
        self._renew_every_s = lease_s / 3
        self._renewed_at = 0.0
        #: row id -> (row id, lease token, delivery) of every row handed out and not
        #: settled; the same tuple then waits in a settlement buffer (no new one per ack).
        self.held: dict[int, Entry] = {}
        self._acks: list[Entry] = []
        self._retries: dict[float, list[Entry]] = {}  # delay in seconds -> entries
        self._releases: list[Entry] = []
        self._sql = LeaseStatements(quoted_table, columns, delete_on_ack=delete_on_ack)

    # -- claiming ---------------------------------------------------------------------------

    def claim(self, conn: Any, count: int) -> list[Delivery]:
        """Lease up to `count` due rows (and rows whose lease expired), each kind in
        one statement, under a fresh token; returns their deliveries, oldest first."""
        if self.held and time.monotonic() - self._renewed_at >= self._renew_every_s:
            self.renew(conn)
        elif not self.held:
            self._renewed_at = time.monotonic()  # the claim below is the oldest lease
        token = secrets.token_hex(16)
        lease_args: tuple[Any, ...] = (self._lease_s, token) if self.fenced else (self._lease_s,)
        now = time.monotonic()
        expired: Sequence[Any] = ()
        cursor = conn.cursor()
        if now - self._last_expired_check >= self._expired_check_every_s:
            self._last_expired_check = now
            expired = cursor.execute(self._sql.claim_expired, (*lease_args, count)).fetchall()
            count -= len(expired)
        rows: Sequence[Any] = ()
        if count > 0:
            claim = self._sql.claim_by_priority if self.by_priority else self._sql.claim_pending
            rows = cursor.execute(claim, (*lease_args, count)).fetchall()
            if not expired and len(rows) < count and now != self._last_expired_check:
                self._last_expired_check = now
                expired = cursor.execute(
                    self._sql.claim_expired, (*lease_args, count - len(rows))
                ).fetchall()
        if not rows and not expired:
            return []
        if len(rows) > 1:
            # RETURNING keeps no order: by id, near enough FIFO (within a priority, higher
            # first, when the last value returned is the priority)
            rows = sorted(rows, key=_priority_then_id) if self.by_priority else sorted(rows)
        deliveries = [self._delivery(row) for row in rows]
        deliveries.extend(self._delivery(row) for row in expired)
        held = self.held
        for delivery in deliveries:
            row_id = delivery.handle
            if row_id in held:
                # our own older claim of this row expired (this thread was held up
                # past the lease) and we claimed it again: the older one is lost
                self._lose([row_id], "this worker claimed the row again")
            held[row_id] = (row_id, token, delivery)
        return deliveries

    def _delivery(self, row: Any) -> Delivery:
        """The delivery of a claimed row: its payload, and as meta the producer's meta
        plus `id`, the row id."""
        row_id, raw, attempts = row[0], row[1], row[2]
        try:
            payload = json.loads(raw)
            meta = {"id": row_id}
            if self._has_meta and row[3] is not None:
                meta = json.loads(row[3])
                if type(meta) is not dict:
                    raise ValueError(f"meta must be a JSON object, got {type(meta).__name__}")
                meta["id"] = row_id
        except (TypeError, ValueError) as exc:
            error = ValueError(f"row {row_id} of {self.table!r}: not JSON: {exc}")
            return Delivery(raw, meta={"id": row_id}, attempts=attempts, handle=row_id, error=error)
        return Delivery(payload, meta=meta, attempts=attempts, handle=row_id)

    # -- settling: buffered, written by flush() -----------------------------------------------

    def _release_hold(self, delivery: Delivery) -> Entry | None:
        """Take `delivery` out of the held rows; None if it is not held any more."""
        entry = self.held.pop(delivery.handle, None)
        if entry is not None and entry[2] is delivery:
            return entry
        self._not_held(delivery, entry)
        return None

    def _not_held(self, delivery: Delivery, entry: Entry | None) -> None:
        """A settlement of a delivery whose lease was lost (a warning said so then)."""
        if entry is not None:
            self.held[entry[0]] = entry  # a newer claim of the same row: still held
        logger.debug("%s: not settling row %s: its lease was lost", self.name, delivery.handle)

    def ack(self, delivery: Delivery) -> None:
        # _release_hold inlined: this runs for every message
        entry = self.held.pop(delivery.handle, None)
        if entry is not None and entry[2] is delivery:
            self._acks.append(entry)
        else:
            self._not_held(delivery, entry)

    def retry(self, delivery: Delivery, delay_s: float) -> None:
        entry = self._release_hold(delivery)
        if entry is not None:
            self._retries.setdefault(float(delay_s), []).append(entry)

    def release(self, delivery: Delivery) -> None:
        entry = self._release_hold(delivery)
        if entry is not None:
            self._releases.append(entry)

    @property
    def buffered(self) -> bool:
        return bool(self._acks or self._retries or self._releases)

    def flush(self, conn: Any) -> None:
        """Write the buffered acks, retries and releases: one statement per kind (per
        delay for retries, per claim batch) and up to 1000 rows, each its own
        transaction. They leave the buffer once every statement ran, so after a lost
        connection they are written again (a row already settled by us keeps our
        token, so writing it twice reports nothing)."""
        self._settled(conn, self._send(conn))

    def flush_and_claim(self, conn: Any, count: int) -> list[Delivery]:
        """flush() and claim(count) in one round trip (psycopg's pipeline mode): the
        settlements and the claim statement go to the server together. With the
        benchmark's queue (batch 100, concurrency 100) every fetch follows a flush, and
        a round trip costs most on a loaded machine."""
        if not self.pipelined:
            self.flush(conn)
            return self.claim(conn, count)
        with conn.pipeline():
            sent = self._send(conn)
            deliveries = self.claim(conn, count)  # its fetchall() sends both
        self._settled(conn, sent)
        return deliveries

    def _send(self, conn: Any) -> list[_Sent]:
        """Execute the statements of the buffered settlements (in pipeline mode: queue
        them); each on its own cursor, whose rowcount _settled() reads."""
        batches: list[tuple[str, tuple[Any, ...], list[Entry], str]] = []
        if self._acks:
            batches.append((self._sql.ack, (), self._acks, "ack"))
        for delay_s, entries in self._retries.items():
            batches.append((self._sql.retry, (delay_s,), entries, "retry"))
        if self._releases:
            batches.append((self._sql.release, (), self._releases, "release"))
        return [sent for batch in batches for sent in self._execute(conn, *batch)]

    def _execute(
        self, conn: Any, sql: str, leading: tuple[Any, ...], entries: list[Entry], kind: str
    ) -> list[_Sent]:
        sent = []
        for start in range(0, len(entries), _MAX_ROWS_PER_STATEMENT):
            chunk = entries[start : start + _MAX_ROWS_PER_STATEMENT]
            for ids, token in self._groups(chunk):
                args = (*leading, ids, token) if self.fenced else (*leading, ids)
                cursor = conn.cursor()
                cursor.execute(sql, args)
                sent.append((cursor, ids, token, chunk, kind))
        return sent

    def _settled(self, conn: Any, sent: list[_Sent]) -> None:
        """Every sent statement ran: empty the buffers, and report the rows a statement
        did not match (lost leases)."""
        if not sent:
            return
        self._acks, self._retries, self._releases = [], {}, []
        for cursor, ids, token, chunk, kind in sent:
            matched = cursor.rowcount
            if matched < len(ids):
                self._report_unmatched(conn.cursor(), ids, token, chunk, kind, matched)

    def fail(
        self, conn: Any, delivery: Delivery, error_text: str | None, status: str = "failed"
    ) -> None:
        """Mark the row `status` (failed, or dead once its dead letter was stored) with
        `error_text` (rare: written at once, after the buffered settlements)."""
        entry = self._release_hold(delivery)
        if entry is None:
            return
        self.flush(conn)
        leading = (status,) if error_text is None else (status, error_text)
        sent = self._execute(conn, self._sql.fail, leading, [entry], "fail")
        self._settled(conn, sent)

    def _groups(self, entries: Sequence[Entry]) -> list[tuple[list[int], str]]:
        """The ids of `entries` per lease token (one claim batch each): one statement per
        group keeps every statement's text the same, which psycopg prepares once."""
        if not self.fenced:
            return [([entry[0] for entry in entries], "")]
        groups: dict[str, list[int]] = {}
        for row_id, token, _ in entries:
            ids = groups.get(token)
            if ids is None:
                groups[token] = [row_id]
            else:
                ids.append(row_id)
        return [(ids, token) for token, ids in groups.items()]

    def _report_unmatched(
        self,
        cursor: Any,
        ids: list[int],
        token: str,
        entries: Sequence[Entry],
        kind: str,
        matched: int,
    ) -> None:
        """A settlement matched fewer rows than it named: find the rows that are not
        ours any more and report their lost leases. Rare, so it may cost a query."""
        if not self.fenced:
            logger.warning(
                "%s: %s of %d row(s) of table %r matched %d: the others were no longer "
                "leased (lease_token_column=None: no fencing)",
                self.name,
                kind,
                len(ids),
                self.table,
                matched,
            )
            return
        if self._delete_on_ack and kind == "ack":
            # our deleted rows are gone: a row still there was not ours to delete
            lost_ids = {row[0] for row in cursor.execute(self._sql.exists, (ids,)).fetchall()}
        else:
            # a row we settled keeps our token: one without it is another worker's
            ours = {row[0] for row in cursor.execute(self._sql.ours, (ids, token)).fetchall()}
            lost_ids = set(ids) - ours
        self._warn_lost(
            [entry for entry in entries if entry[0] in lost_ids and entry[1] == token],
            f"its {kind} was not written",
        )

    # -- renewal ------------------------------------------------------------------------------

    def renew(self, conn: Any) -> None:
        """Extend the lease of every held row to now + lease_s by the server's clock,
        one UPDATE per claim batch (up to 1000 rows); a row that is not ours any more is
        reported lost."""
        if not self.held:
            return
        self._renewed_at = time.monotonic()
        entries = list(self.held.values())
        cursor = conn.cursor()
        for start in range(0, len(entries), _MAX_ROWS_PER_STATEMENT):
            for ids, token in self._groups(entries[start : start + _MAX_ROWS_PER_STATEMENT]):
                args = (self._lease_s, ids, token) if self.fenced else (self._lease_s, ids)
                ours = {row[0] for row in cursor.execute(self._sql.renew, args).fetchall()}
                if len(ours) < len(ids):
                    self._lose(
                        [row_id for row_id in ids if row_id not in ours],
                        "another worker claimed the row",
                    )

    # -- lost leases ---------------------------------------------------------------------------

    def _lose(self, row_ids: list[int], consequence: str) -> None:
        """Drop held rows that are not ours any more: mark and report them."""
        lost = []
        for row_id in row_ids:
            entry = self.held.pop(row_id, None)
            if entry is not None:
                lost.append(entry)
        self._warn_lost(lost, consequence)

    def _warn_lost(self, lost: Sequence[Entry], consequence: str) -> None:
        if not lost:
            return
        for _, _, delivery in lost:
            delivery.meta["lease_lost"] = True
        ids = ", ".join(str(entry[0]) for entry in lost)
        logger.warning(
            "%s: lost the lease of row(s) %s of table %r (this worker was paused or cut off "
            "longer than lease_s, and the lease expired): %s; the worker that holds the "
            "row settles it",
            self.name,
            ids,
            self.table,
            consequence,
        )


def _priority_then_id(row: Any) -> tuple[int, int]:
    return (-row[-1], row[0])
