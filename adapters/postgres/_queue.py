"""TableQueue: a PostgreSQL table of jobs as a Source, a Sink and a producer; made by
PostgresConnector.table_queue. Its Source methods run on its SourceActor's thread; `put`,
`put_many` and `publish` on any thread; `publish_batch` on its SinkActor's thread."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any

from onestep import Delivery, Source
from onestep.kit import DeadLetterClaim, DeadLetterEntry, check_delay, check_int, check_number

from ._browse import PendingRows
from ._connection import close_quietly, is_connection_error, quote_ident
from ._leases import Leases
from ._listener import Listener
from ._producer import Producer
from ._queue_schema import QueueColumns, QueueSchema

if TYPE_CHECKING:
    from ._connector import PostgresConnector

logger = logging.getLogger("onestep.postgres")


class TableQueue(Source):
    """A table of jobs; every row is one message, its payload JSON text, its meta a
    jsonb object (the consumer sees it plus `id`, the row id, in `delivery.meta`).

    `fetch` claims up to `batch_size` due rows in one statement (`UPDATE ... WHERE id IN
    (SELECT ... FOR UPDATE SKIP LOCKED)`, marked `leased` until now + `lease_s` under a
    fresh lease token), so workers in any number of processes never get the same row at
    once. While a row runs its lease is renewed every `lease_s / 3` (`keepalive`) by
    the server's clock, so `lease_s` is how long a dead worker's rows wait before
    another worker takes them. Acks, retries and releases are buffered and written by
    `flush()`, one UPDATE per kind per batch, and only touch rows whose token is still
    ours.

    An idle source sleeps until a row is inserted: a trigger on the table sends a NOTIFY
    for every INSERT statement (onestep's or any other program's), and a listening
    connection of its own wakes the source within milliseconds. Polling every
    `poll_interval_s` stays as the fallback (rows released by a worker that stopped,
    leases that expired, a listening connection that was lost).

    The source side (open, fetch, ack, retry, release, fail, flush, keepalive, close)
    runs on the source actor's thread, which owns its one connection. Producers (`put`,
    `put_many`, `publish`) and the sink side (`publish_batch`) use the connector's pool
    and create the table on first use.
    """

    #: The SinkActor hands the sink side up to this many results at once.
    max_batch = 500
    #: tracing's `messaging.system`
    messaging_system = "postgresql"

    def message_id(self, delivery: Delivery) -> Any:
        """The message's row id (tracing's `messaging.message.id`)."""
        return delivery.handle

    def __init__(
        self,
        connector: PostgresConnector,
        table: str,
        *,
        batch_size: int = 100,
        poll_interval_s: float = 0.5,
        lease_s: float = 60,
        auto_create: bool = True,
        delete_on_ack: bool = False,
        notify: bool = True,
        dead_status: str = "dead",
        name: str | None = None,
        columns: QueueColumns,
    ) -> None:
        self.connector = connector
        self.table = table
        quoted_table = quote_ident(table, "table")
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        # per queue, where Source declares a class-wide default
        self.poll_interval_s = check_number(  # type: ignore[misc]
            "poll_interval_s", poll_interval_s, exclusive=True
        )
        self.lease_s = check_delay("lease_s", lease_s, exclusive=True)
        #: The source actor renews the held rows' leases this often (see keepalive).
        self.keepalive_interval_s = self.lease_s / 3
        self.auto_create = bool(auto_create)
        self.delete_on_ack = bool(delete_on_ack)
        self.notify = bool(notify)
        if not isinstance(dead_status, str) or not dead_status or len(dead_status) > 16:
            raise ValueError(
                f"dead_status must be a status of 1 to 16 characters, got {dead_status!r}"
            )
        if dead_status in ("pending", "leased"):
            raise ValueError(f"dead_status must not be {dead_status!r}: that row would run again")
        self.dead_status = dead_status
        self.name = name or f"postgresql:{table}"
        self.columns = columns
        self._schema = QueueSchema(
            table, quoted_table, columns, auto_create=self.auto_create, notify=self.notify
        )
        #: The LISTEN/NOTIFY channel the table's trigger notifies.
        self.channel = self._schema.channel
        self._producer = Producer(connector, self._schema)
        self._pending = PendingRows(connector, table, quoted_table, columns)
        self._leases = Leases(
            name=self.name,
            table=table,
            quoted_table=quoted_table,
            columns=columns,
            lease_s=self.lease_s,
            delete_on_ack=self.delete_on_ack,
        )
        self._listener = Listener(
            connector,
            self.channel,
            name=self.name,
            poll_interval_s=self.poll_interval_s,
            listen=self.notify,
        )
        # The source side's connection, and the thread that fetches (the source
        # actor's). A queue that is also a task's emit sink is opened and closed by its
        # SinkActor too: that thread owns no connection here (publish_batch is pooled).
        self._conn: Any = None
        self._source_thread: int | None = None
        self._listen_thread: int | None = None  # the thread that subscribed

    def __repr__(self) -> str:
        return f"TableQueue({self.table!r}, connector={self.connector!r})"

    def create_table_sql(self) -> str:
        """The statements that make the managed table (with these column names): the
        table, its indexes and, with notify, the NOTIFY trigger."""
        return self._schema.create_table_sql()

    def create_table(self) -> None:
        """Make the table ready now (any thread): create it (auto_create), add the
        columns a managed table from an older onestep lacks, or check an existing one.
        Optional: `put` and `open` do it when needed."""
        self.connector.run_pooled(self._schema.ensure)

    @property
    def listening(self) -> threading.Event:
        """Set while the source's listening connection listens (for tests, benchmarks)."""
        return self._listener.listening

    # -- set-up (the opening actor's thread) ----------------------------------------------

    def open(self) -> None:
        """Make the table ready; runs on the source actor's thread (and on the sink
        actor's, for a queue that is also an emit sink). Idempotent.

        One attempt: the first open fails fast (app.start() raises StartupError); after a
        lost connection the supervisor reopens with its backoff (no actor sleeps here),
        and the reopen writes the settlements buffered while the connection was down."""
        self.connector.run_pooled(self._schema.ensure)
        self._leases.by_priority = bool(self._schema.has_priority)
        if self._on_source_thread() and self._leases.buffered:
            self._leases.flush(self._connection())

    def subscribe(self, wakeup: Callable[[], None]) -> None:
        """Have `wakeup()` called (from the listener thread) when this idle source has
        rows again; the source actor calls it on its thread after open()."""
        self._listen_thread = threading.get_ident()
        self._listener.start(wakeup)

    def close(self) -> None:
        """On the source actor's thread: stop listening, write buffered settlements and
        disconnect. Settlements that cannot be written (the connection is gone) stay
        buffered for the next open; the rows' leases expire meanwhile, so nothing is
        lost."""
        if threading.get_ident() == self._listen_thread:
            self._listener.stop()
        if not self._on_source_thread():
            return
        try:
            if self._conn is not None and self._leases.buffered:
                self._leases.flush(self._conn)
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            # the connection is gone (a restart): they stay buffered for the reopen
            logger.debug("%s: settlements kept for the next open: %s", self.name, exc)
        finally:
            conn, self._conn = self._conn, None
            close_quietly(conn)

    def _on_source_thread(self) -> bool:
        return threading.get_ident() == self._source_thread

    def _connection(self) -> Any:
        """The source side's connection, made on first use (on the source thread)."""
        conn = self._conn
        if conn is None or conn.closed:
            conn = self._conn = self.connector.connect()
        return conn

    # -- the source side (the source actor's thread) ---------------------------------------

    def fetch(self, limit: int) -> list[Delivery]:
        """Claim up to min(limit, batch_size) due rows; when none is due, arm the
        listener (a NOTIFY, the earliest delayed row, or poll_interval_s wakes us)."""
        ident = threading.get_ident()
        if ident != self._source_thread:
            self._source_thread = ident
        conn = self._connection()
        leases = self._leases
        count = min(limit, self.batch_size)
        if count <= 0:
            if leases.buffered:
                leases.flush(conn)
            return []
        listener = self._listener
        listener.before_fetch()
        if leases.buffered:
            deliveries = leases.flush_and_claim(conn, count)
        else:
            deliveries = leases.claim(conn, count)
        if not deliveries:
            listener.idle(self._pending.next_due_in(conn))
        return deliveries

    def ack(self, delivery: Delivery) -> None:
        """Mark done (or delete) at the next flush, if the row is still ours."""
        self._leases.ack(delivery)

    def retry(self, delivery: Delivery, delay_s: float | None = None) -> None:
        """Count the attempt and make the row due after `delay_s`, at the next flush."""
        self._leases.retry(delivery, delay_s or 0.0)

    def release(self, delivery: Delivery) -> None:
        """Back to pending at once, attempts unchanged (shutdown), at the next flush."""
        self._leases.release(delivery)

    def fail(self, delivery: Delivery, error: BaseException | None = None) -> None:
        """Mark the row failed with the error (rare: written at once)."""
        self._leases.fail(self._connection(), delivery, self._error_text(error))

    def dead_lettered(self, delivery: Delivery, error: BaseException | None = None) -> None:
        """Its dead letter was stored: mark the row `dead_status` with the error, so
        whoever watches the table tells it from a success (rare: written at once)."""
        self._leases.fail(self._connection(), delivery, self._error_text(error), self.dead_status)

    def _error_text(self, error: BaseException | None) -> str | None:
        if self.columns.last_error is None:
            return None
        text = "" if error is None else f"{type(error).__name__}: {error}"[:60000]
        return text.replace("\x00", "\\0")  # PostgreSQL text cannot hold NUL

    def flush(self) -> None:
        """Runs on the source actor's thread when its mailbox is empty after settling,
        just before the actor fetches again. That fetch writes the buffered acks,
        retries and releases in the same round trip as its claim (pipeline mode), so
        this writes them only where pipeline mode is missing. Deferring them measured
        1.0-1.8x the rows/s of the queue benchmark (this machine under load). Should no
        fetch follow, the keepalive (every lease_s / 3, before their leases could
        expire) or close() writes them."""
        leases = self._leases
        if leases.buffered and not leases.pipelined and self._on_source_thread():
            leases.flush(self._connection())

    def keepalive(self) -> None:
        """Renew the leases of the rows handed out and not settled (one UPDATE, the
        server's clock); runs on the source actor's thread every `lease_s / 3`, also
        while every credit is held by a long handler. A row another worker took in the
        meantime is reported lost (see Leases). Does nothing on other threads."""
        if not self._on_source_thread():
            return
        leases = self._leases
        if leases.buffered:
            leases.flush(self._connection())
        if leases.held:
            leases.renew(self._connection())

    # -- producers (any thread) ---------------------------------------------------------

    def put(
        self,
        body: Any,
        meta: dict[str, Any] | None = None,
        *,
        delay_s: float = 0.0,
        priority: int | None = None,
        attempts: int = 0,
    ) -> int:
        """Enqueue one JSON body with optional JSON meta, due after `delay_s`; returns the
        row id once committed. Any thread, with or without a running app; creates the
        table on first use (auto_create). `attempts` is the executions the message
        already had (a dead-letter replay that keeps them sets it). EncodeError, before
        anything is written, for a body or meta that is not valid JSON; TypeError for
        meta that is not a dict. With `priority` (an int; None is 0) the row is claimed
        before every due row of a lower priority, retries included; ValueError when the
        table has no priority column (auto_create=False), with the statements that add
        it."""
        attempts = check_int("attempts", attempts, minimum=0)
        return self._producer.put(body, meta, delay_s, attempts, priority)

    def put_many(
        self,
        bodies: Iterable[Any],
        meta: dict[str, Any] | None = None,
        *,
        delay_s: float = 0.0,
        priority: int | None = None,
    ) -> int:
        """Enqueue many bodies (each with `meta` and `priority`, as in `put`) in one
        transaction; returns how many. If one body is not valid JSON, EncodeError names
        it and nothing is written."""
        return self._producer.put_many(bodies, meta, delay_s, priority)

    async def publish(self, body: Any, meta: dict[str, Any] | None = None) -> int:
        """`put` from async code (the insert runs in a thread); returns the row id."""
        return await asyncio.to_thread(self._producer.put, body, meta, 0.0)

    # -- operations tooling (any thread) -------------------------------------------------

    def browse(
        self,
        limit: int | None = None,
        match: Callable[[DeadLetterEntry], bool] | None = None,
    ) -> list[DeadLetterEntry]:
        """The first `limit` pending rows (all with None) that `match` accepts, by row
        id, without claiming any; the row id is the entry's id. The dead-letter tooling
        calls it on its own thread (pooled connections). NotBrowsable, when a match is
        asked for, for a table without a meta column (its rows name no task)."""
        return self._pending.browse(limit, match)

    def take(
        self, limit: int, match: Callable[[DeadLetterEntry], bool] | None = None
    ) -> DeadLetterClaim:
        """Claim the first `limit` pending rows that `match` accepts, by row id (see
        onestep.kit.DeadLetterClaim): they stay locked (`SELECT ... FOR UPDATE SKIP
        LOCKED`) until the claim is settled or released, so another claim or a consumer
        of this table skips them. The dead-letter tooling calls it on its own thread,
        on a connection of the claim's own."""
        return self._pending.take(limit, match)

    def remove(self, ids: Iterable[Hashable]) -> int:
        """Delete the pending rows with these ids; returns how many. Any thread."""
        return self._pending.remove(ids)

    def depth(self) -> int:
        """Rows waiting to be claimed (`pending`, due now or later: delayed retries
        included). Any thread."""
        return self._pending.count()

    # -- the sink side (the sink actor's thread) ---------------------------------------

    def publish_batch(self, items: list[tuple[Any, Any]]) -> dict[int, BaseException] | None:
        """Enqueue results gathered by the SinkActor in one statement; an item that is
        not valid JSON is returned as {index: EncodeError} and the rest are written."""
        return self._producer.publish_batch(items)

    def describe(self) -> dict[str, Any]:
        return {
            "type": "PostgresTableQueue",
            "name": self.name,
            "table": self.table,
            "batch_size": self.batch_size,
            "lease_s": self.lease_s,
            "fenced": self.columns.lease_token is not None,
            "priorities": bool(self._schema.has_priority),
            "notify": self.notify,
            "dead_status": self.dead_status,
            "channel": self.channel,
            "server": self.connector.url,
        }
