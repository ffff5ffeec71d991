"""The SQL of a TableQueue's leases: the statements that claim rows, renew their leases
and settle them, built once per queue from its (quoted) column names; used by Leases on
the source actor's thread.

Kept apart from Leases (which decides when to run them) so that another kind of table
queue can bring its own statements to the same claim-renew-settle machinery.
"""

from __future__ import annotations

from ._queue_schema import QueueColumns


class LeaseStatements:
    """Every statement Leases runs, for one table and its column names."""

    def __init__(self, t: str, c: QueueColumns, *, delete_on_ack: bool) -> None:
        meta = f", {c.meta}::text" if c.meta is not None else ""
        returning = f" RETURNING {c.id}, {c.payload}, {c.attempts}{meta}"
        until = "clock_timestamp() + %s * interval '1 second'"
        lease = f"{c.status} = 'leased', {c.leased_until} = {until}"
        if c.lease_token is not None:
            lease += f", {c.lease_token} = %s"
        # one statement claims: the rows locked by the inner SELECT (skipping the ones
        # other workers are claiming) are the ones the UPDATE leases and returns
        due = (
            f"UPDATE {t} SET {lease} WHERE {c.id} IN (SELECT {c.id} FROM {t} "
            f"WHERE {c.status} = 'pending' AND {c.available_at} <= now() ORDER BY "
        )
        order = f"{c.available_at}, {c.id} LIMIT %s FOR UPDATE SKIP LOCKED)"
        self.claim_pending = due + order + returning
        # a table with a priority column: higher first (its partial index serves this
        # order), and the priority returned last, for Leases to sort the batch by
        self.claim_by_priority = f"{due}{c.priority} DESC, {order}{returning}, {c.priority}"
        # an expired lease was an execution whose worker died: it counts as an attempt
        self.claim_expired = (
            f"UPDATE {t} SET {c.attempts} = {c.attempts} + 1, {lease} WHERE {c.id} IN "
            f"(SELECT {c.id} FROM {t} WHERE {c.status} = 'leased' AND {c.leased_until} < now() "
            f"LIMIT %s FOR UPDATE SKIP LOCKED)" + returning
        )
        # every statement below ends in the rows it may touch: the rows this worker
        # leased, matched by id and, when fenced, lease token (see Leases._execute)
        ours = f" WHERE {c.status} = 'leased' AND {c.id} = ANY(%s::bigint[])"
        if c.lease_token is not None:
            ours += f" AND {c.lease_token} = %s"
        self.renew = (
            f"UPDATE {t} SET {c.leased_until} = clock_timestamp() + %s * interval '1 second'"
            f"{ours} RETURNING {c.id}"
        )
        # an ack counts the execution too, so a finished row shows how often it ran
        if delete_on_ack:
            self.ack = f"DELETE FROM {t}{ours}"
        else:
            self.ack = (
                f"UPDATE {t} SET {c.status} = 'done', {c.attempts} = {c.attempts} + 1, "
                f"{c.leased_until} = NULL{ours}"
            )
        self.retry = (
            f"UPDATE {t} SET {c.status} = 'pending', {c.attempts} = {c.attempts} + 1, "
            f"{c.available_at} = clock_timestamp() + %s * interval '1 second', "
            f"{c.leased_until} = NULL{ours}"
        )
        self.release = f"UPDATE {t} SET {c.status} = 'pending', {c.leased_until} = NULL{ours}"
        error_set = "" if c.last_error is None else f", {c.last_error} = %s"
        self.fail = (
            f"UPDATE {t} SET {c.status} = %s, {c.attempts} = {c.attempts} + 1, "
            f"{c.leased_until} = NULL{error_set}{ours}"
        )
        # After a settlement matched fewer rows than it named: which rows carry our
        # token (a row we settled keeps it, which tells it from one another worker
        # holds), which still exist (a delete).
        token = f" AND {c.lease_token} = %s" if c.lease_token is not None else ""
        self.ours = f"SELECT {c.id} FROM {t} WHERE {c.id} = ANY(%s::bigint[]){token}"
        self.exists = f"SELECT {c.id} FROM {t} WHERE {c.id} = ANY(%s::bigint[])"
