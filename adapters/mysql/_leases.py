"""Leases: the rows one TableQueue worker has claimed and not yet settled, fenced by a
lease token; claims them, renews their leases, and writes their acks, retries,
releases and failures in groups. Owned by a TableQueue; every method runs on its
source actor's thread, on the connection that thread owns."""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any

import pymysql.err

from onestep import Delivery

from ._connection import error_code, placeholders, transaction
from ._queue_schema import QueueColumns

logger = logging.getLogger("onestep.mysql")

# How many rows go into one `IN (...)` list.
_MAX_ROWS_PER_STATEMENT = 1000

# InnoDB chose the statement as a deadlock victim, or a lock wait timed out.
_LOCK_CONFLICTS = (1205, 1213)

# One buffered settlement: (row id, lease token, delivery).
Entry = tuple[int, str, Delivery]


class Leases:
    """The rows this worker holds, and what it owes the table about them.

    A claim writes a fresh random token into the claimed rows (one per claim batch);
    renewing, acking, retrying, releasing and failing match `(id, lease_token)`, so a
    worker whose lease expired and whose row another worker claimed can no longer
    touch it. Such a row is *lost*: its delivery gets `meta["lease_lost"] = True`, a
    warning names it, and its settlement is dropped (the other worker settles it).

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
        self._has_meta = columns.meta is not None
        self._delete_on_ack = delete_on_ack
        self._lease_us = int(lease_s * 1_000_000)
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
        self._retries: dict[int, list[Entry]] = {}  # delay in microseconds -> entries
        self._releases: list[Entry] = []
        self._build_statements(quoted_table, columns)

    def _build_statements(self, t: str, c: QueueColumns) -> None:
        meta = f", {c.meta}" if c.meta is not None else ""
        select = f"SELECT {c.id}, {c.payload}, {c.attempts}{meta} FROM {t} "
        due = select + f"WHERE {c.status} = 'pending' AND {c.available_at} <= NOW(6) "
        self._sql_claim_pending = due + f"ORDER BY {c.available_at} LIMIT %s FOR UPDATE SKIP LOCKED"
        #: With a priority column (the queue sets `by_priority` once its table is known):
        #: higher first, then as before; the `onestep_priority` index serves it.
        self.by_priority = False
        by_priority = (
            f"ORDER BY {c.priority} DESC, {c.available_at} LIMIT %s FOR UPDATE SKIP LOCKED"
        )
        self._sql_claim_by_priority = due + by_priority
        self._sql_claim_expired = (
            select + f"WHERE {c.status} = 'leased' AND {c.leased_until} < NOW(6) "
            f"LIMIT %s FOR UPDATE SKIP LOCKED"
        )
        lease = f"{c.leased_until} = NOW(6) + INTERVAL %s MICROSECOND"
        if c.lease_token is not None:
            lease += f", {c.lease_token} = %s"
        self._sql_lease = f"UPDATE {t} SET {c.status} = 'leased', {lease} WHERE {c.id} IN "
        # an expired lease was an execution whose worker died: it counts as an attempt
        self._sql_lease_expired = (
            f"UPDATE {t} SET {c.attempts} = {c.attempts} + 1, {c.status} = 'leased', "
            f"{lease} WHERE {c.id} IN "
        )
        # every statement below ends in the rows it may touch: the rows this worker
        # leased, matched by id and, when fenced, lease token (see _match)
        self._id, self._token = c.id, c.lease_token
        ours = f"WHERE {c.status} = 'leased' AND "
        self._sql_renew = (
            f"UPDATE {t} SET {c.leased_until} = NOW(6) + INTERVAL %s MICROSECOND {ours}"
        )
        # an ack counts the execution too, so a finished row shows how often it ran
        if self._delete_on_ack:
            self._sql_ack = f"DELETE FROM {t} {ours}"
        else:
            self._sql_ack = (
                f"UPDATE {t} SET {c.status} = 'done', {c.attempts} = {c.attempts} + 1, "
                f"{c.leased_until} = NULL {ours}"
            )
        self._sql_retry = (
            f"UPDATE {t} SET {c.status} = 'pending', {c.attempts} = {c.attempts} + 1, "
            f"{c.available_at} = NOW(6) + INTERVAL %s MICROSECOND, {c.leased_until} = NULL "
            f"{ours}"
        )
        self._sql_release = f"UPDATE {t} SET {c.status} = 'pending', {c.leased_until} = NULL {ours}"
        error_set = "" if c.last_error is None else f", {c.last_error} = %s"
        self._sql_fail = (
            f"UPDATE {t} SET {c.status} = %s, {c.attempts} = {c.attempts} + 1, "
            f"{c.leased_until} = NULL{error_set} {ours}"
        )
        # After a statement matched fewer rows than it named: which rows are still
        # leased to us (a renewal), which carry our token (a settlement: the token
        # stays on a row we settled, so this tells it from one another worker holds),
        # which still exist (a delete).
        self._sql_still_leased = f"SELECT {c.id} FROM {t} {ours}"
        self._sql_ours = f"SELECT {c.id} FROM {t} WHERE "
        self._sql_exists = f"SELECT {c.id} FROM {t} WHERE {c.id} IN "

    # -- claiming ---------------------------------------------------------------------------

    def claim(self, conn: Any, count: int) -> list[Delivery]:
        """Lease up to `count` due rows (and rows whose lease expired) in one
        transaction, under a fresh token; returns their deliveries."""
        if self.held and time.monotonic() - self._renewed_at >= self._renew_every_s:
            self.renew(conn)
        elif not self.held:
            self._renewed_at = time.monotonic()  # the claim below is the oldest lease
        with conn.cursor() as cursor, transaction(conn):
            rows, expired = self._select(cursor, count)
            if not rows and not expired:
                return []
            token = secrets.token_hex(16)
            lease_args: tuple[Any, ...] = (
                (self._lease_us, token) if self.fenced else (self._lease_us,)
            )
            if rows:
                ids = [row[0] for row in rows]
                cursor.execute(self._sql_lease + f"({placeholders(len(ids))})", (*lease_args, *ids))
            if expired:
                ids = [row[0] for row in expired]
                cursor.execute(
                    self._sql_lease_expired + f"({placeholders(len(ids))})", (*lease_args, *ids)
                )
        deliveries = [self._delivery(row, 0) for row in rows]
        if expired:
            deliveries.extend(self._delivery(row, 1) for row in expired)
        held = self.held
        for delivery in deliveries:
            row_id = delivery.handle
            if row_id in held:
                # our own older claim of this row expired (this thread was held up
                # past the lease) and we claimed it again: the older one is lost
                self._lose([row_id], "this worker claimed the row again")
            held[row_id] = (row_id, token, delivery)
        return deliveries

    def _select(self, cursor: Any, count: int) -> tuple[Sequence[Any], Sequence[Any]]:
        now = time.monotonic()
        expired: Sequence[Any] = ()
        if now - self._last_expired_check >= self._expired_check_every_s:
            self._last_expired_check = now
            cursor.execute(self._sql_claim_expired, (count,))
            expired = cursor.fetchall()
            count -= len(expired)
        rows: Sequence[Any] = ()
        if count > 0:
            if self.by_priority:
                cursor.execute(self._sql_claim_by_priority, (count,))
            else:
                cursor.execute(self._sql_claim_pending, (count,))
            rows = cursor.fetchall()
            if not expired and len(rows) < count and now != self._last_expired_check:
                self._last_expired_check = now
                cursor.execute(self._sql_claim_expired, (count - len(rows),))
                expired = cursor.fetchall()
        return rows, expired

    def _delivery(self, row: Any, extra_attempts: int) -> Delivery:
        """The delivery of a claimed row: its payload, and as meta the producer's meta
        plus `id`, the row id."""
        row_id, raw, attempts = row[0], row[1], row[2] + extra_attempts
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

    def retry(self, delivery: Delivery, delay_us: int) -> None:
        entry = self._release_hold(delivery)
        if entry is not None:
            self._retries.setdefault(delay_us, []).append(entry)

    def release(self, delivery: Delivery) -> None:
        entry = self._release_hold(delivery)
        if entry is not None:
            self._releases.append(entry)

    @property
    def buffered(self) -> bool:
        return bool(self._acks or self._retries or self._releases)

    def flush(self, conn: Any) -> None:
        """Write the buffered acks, retries and releases: one statement per kind (per
        delay for retries) and up to 1000 rows, in autocommit. What was written leaves
        the buffer at once, so after a lost connection only the rest is written again."""
        with conn.cursor() as cursor:
            if self._acks:
                self._write(cursor, self._sql_ack, (), self._acks, "ack")
            while self._retries:
                delay_us, entries = next(iter(self._retries.items()))
                self._write(cursor, self._sql_retry, (delay_us,), entries, "retry")
                del self._retries[delay_us]
            if self._releases:
                self._write(cursor, self._sql_release, (), self._releases, "release")

    def _write(
        self, cursor: Any, sql: str, leading: tuple[Any, ...], entries: list[Entry], kind: str
    ) -> None:
        while entries:
            chunk = entries[:_MAX_ROWS_PER_STATEMENT]
            rows, args = self._match(chunk)
            matched = cursor.execute(sql + rows, (*leading, *args))
            del entries[: len(chunk)]
            if matched < len(chunk):
                self._report_unmatched(cursor, chunk, kind, matched)

    def fail(
        self, conn: Any, delivery: Delivery, error_text: str | None, status: str = "failed"
    ) -> None:
        """Mark the row `status` (failed, or dead once its dead letter was stored) with
        `error_text` (rare: written at once, after the buffered settlements)."""
        entry = self._release_hold(delivery)
        if entry is None:
            return
        self.flush(conn)
        rows, args = self._match([entry])
        leading = (status,) if error_text is None else (status, error_text)
        with conn.cursor() as cursor:
            if cursor.execute(self._sql_fail + rows, (*leading, *args)) < 1:
                self._report_unmatched(cursor, [entry], "fail", 0)

    def _match(self, entries: Sequence[Entry]) -> tuple[str, list[Any]]:
        """The condition that names the rows of `entries`, and its arguments: `id IN
        (...)`, and when fenced one `(lease_token = %s AND id IN (...))` per token,
        joined by OR. Per token rather than a row-constructor `(id, lease_token) IN`:
        the token is escaped and sent once per claim batch instead of once per row
        (pymysql escapes each argument in Python: 1.8 us for a token, measured with
        this machine under load, on a settle path of about 33 us of CPU a row)."""
        if not self.fenced:
            return f"{self._id} IN ({placeholders(len(entries))})", [e[0] for e in entries]
        groups: dict[str, list[int]] = {}
        for row_id, token, _ in entries:
            ids = groups.get(token)
            if ids is None:
                groups[token] = [row_id]
            else:
                ids.append(row_id)
        parts = []
        args: list[Any] = []
        for token, ids in groups.items():
            parts.append(f"({self._token} = %s AND {self._id} IN ({placeholders(len(ids))}))")
            args.append(token)
            args.extend(ids)
        return "(" + " OR ".join(parts) + ")", args

    def _report_unmatched(
        self, cursor: Any, entries: Sequence[Entry], kind: str, matched: int
    ) -> None:
        """A settlement matched fewer rows than it named: find the rows that are not
        ours any more and report their lost leases. Rare, so it may cost a query."""
        if not self.fenced:
            logger.warning(
                "%s: %s of %d row(s) of table %r matched %d: the others were no longer "
                "leased (lease_token_column=None: no fencing)",
                self.name,
                kind,
                len(entries),
                self.table,
                matched,
            )
            return
        if self._delete_on_ack and kind == "ack":
            # our deleted rows are gone: a row still there was not ours to delete
            ids = [entry[0] for entry in entries]
            cursor.execute(self._sql_exists + f"({placeholders(len(ids))})", ids)
            lost_ids = {row[0] for row in cursor.fetchall()}
        else:
            # a row we settled keeps our token: one without it is another worker's
            rows, args = self._match(entries)
            cursor.execute(self._sql_ours + rows, args)
            lost_ids = {entry[0] for entry in entries} - {row[0] for row in cursor.fetchall()}
        self._warn_lost(
            [entry for entry in entries if entry[0] in lost_ids], f"its {kind} was not written"
        )

    # -- renewal ------------------------------------------------------------------------------

    def renew(self, conn: Any) -> None:
        """Extend the lease of every held row to now + lease_s (the server's clock), one
        UPDATE per 1000 rows; a row that is not ours any more is reported lost. A
        deadlock or lock wait gives up until the next renewal."""
        if not self.held:
            return
        self._renewed_at = time.monotonic()
        entries = list(self.held.values())
        with conn.cursor() as cursor:
            for start in range(0, len(entries), _MAX_ROWS_PER_STATEMENT):
                chunk = entries[start : start + _MAX_ROWS_PER_STATEMENT]
                rows, args = self._match(chunk)
                try:
                    matched = cursor.execute(self._sql_renew + rows, (self._lease_us, *args))
                except pymysql.err.OperationalError as exc:
                    if error_code(exc) not in _LOCK_CONFLICTS:
                        raise
                    logger.warning("%s: lease renewal deferred: %s", self.name, exc)
                    return
                if matched < len(chunk):
                    cursor.execute(self._sql_still_leased + rows, args)
                    ours = {row[0] for row in cursor.fetchall()}
                    self._lose(
                        [entry[0] for entry in chunk if entry[0] not in ours],
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
