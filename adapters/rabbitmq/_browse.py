"""Reading a RabbitMQ queue without consuming it, claiming messages of it, removing chosen
messages from it, and its depth; RabbitMQQueue.browse, take, remove and depth call these
on the calling thread (the dead-letter tooling, `onestep dlq`,
`onestep.testing.run_until_idle`).

AMQP has no "peek": `browse` takes messages with `basic.get` and manual acks, keeps
every one unacked, and closes its channel at the end, which gives them all back to the
queue. The broker puts a message given back at its original place when it can (so the
order is kept), marks it `redelivered`, and a quorum queue counts it as a delivery (its
`x-delivery-count` grows; with a `delivery-limit` policy, browsing often enough would
drop it). Each pass reads at most the queue's depth when it started, so messages
published meanwhile and messages given back by other consumers are not read twice.
While a pass runs, the messages it holds are invisible to other consumers.

`take` is such a pass that keeps its channel open after it: the messages it claimed stay
unacked, so no other consumer or claim gets them, until the claim acks the ones it
settles and closes the channel (which gives the others back). If the claiming process
dies, the broker gives them back when its connection drops.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any

import pika.exceptions

from onestep.kit import DEAD_LETTER_ID, DeadLetterClaim, DeadLetterEntry, IdTally

from ._message import decode_message, decode_upstream
from ._quiet import quiet

if TYPE_CHECKING:
    from ._queue import RabbitMQQueue

#: The reply code of a passive declare of a queue that does not exist.
_NOT_FOUND = 404


def browse(
    queue: RabbitMQQueue,
    limit: int | None,
    match: Callable[[DeadLetterEntry], bool] | None,
) -> list[DeadLetterEntry]:
    """The first `limit` messages of `queue` that `match` accepts (all with None),
    head first; consumes none of them."""
    found: list[DeadLetterEntry] = []

    def look(channel: Any, tag: int, entry: DeadLetterEntry) -> bool:
        if match is None or match(entry):
            found.append(entry)
        return limit is not None and len(found) >= limit

    _walk(queue, "browse", look)
    return found


def remove(queue: RabbitMQQueue, ids: Iterable[Hashable]) -> int:
    """Ack (delete) the messages of `queue` with these ids, each named id once, and give
    the others back; returns how many were removed. Stops at the last id found, or after
    the queue's depth when it started."""
    wanted = IdTally(ids)
    removed = 0

    def look(channel: Any, tag: int, entry: DeadLetterEntry) -> bool:
        nonlocal removed
        if wanted.take(entry.id):
            channel.basic_ack(tag)
            removed += 1
        return wanted.empty()

    if not wanted.empty():
        _walk(queue, "remove", look)
    return removed


def take(
    queue: RabbitMQQueue, limit: int, match: Callable[[DeadLetterEntry], bool] | None
) -> DeadLetterClaim:
    """Claim the first `limit` messages of `queue` that `match` accepts, head first; the
    ones it passes over are held too until the claim ends (so that the next `basic.get`
    moves on), then given back."""
    connection = queue.connector.connect(f"onestep claim on queue {queue.name!r}")
    claimed: list[tuple[int, DeadLetterEntry]] = []
    try:
        channel = None
        depth = _message_count(connection, queue.queue_name) if limit > 0 else 0
        if depth:
            channel = connection.channel()
            for _ in range(depth):
                method, properties, body = channel.basic_get(queue.queue_name, auto_ack=False)
                if method is None:
                    break
                entry = _entry(queue, properties, body)
                if match is None or match(entry):
                    claimed.append((method.delivery_tag, entry))
                    if len(claimed) >= limit:
                        break
    except pika.exceptions.AMQPError as exc:
        _close(connection)
        raise _read_error(queue, exc) from None
    except BaseException:
        _close(connection)
        raise
    return _MessageClaim(queue, connection, channel, claimed)


class _MessageClaim(DeadLetterClaim):
    """Messages held unacked on `channel`: settling acks the named ones and closes the
    channel (its Close-Ok comes once the broker handled the acks; the rest go back),
    releasing closes it without acks."""

    def __init__(
        self,
        queue: RabbitMQQueue,
        connection: Any,
        channel: Any,
        claimed: list[tuple[int, DeadLetterEntry]],
    ) -> None:
        super().__init__(entry for _, entry in claimed)
        self._queue = queue
        self._connection = connection
        self._channel = channel
        self._tags = [tag for tag, _ in claimed]

    def _settle(self, ids: list[Hashable]) -> int:
        wanted = IdTally(ids)
        acked = 0
        try:
            for tag, entry in zip(self._tags, self.entries, strict=True):
                if wanted.take(entry.id):
                    self._channel.basic_ack(tag)
                    acked += 1
            if self._channel is not None:
                self._channel.close()
        except pika.exceptions.AMQPError as exc:
            # the broker gives back what it did not ack: how many it did is unknown
            raise ConnectionError(
                f"lost the claim on queue {self._queue.queue_name!r} while removing "
                f"{acked} message(s) (some may have been removed): {type(exc).__name__}: {exc}"
            ) from None
        finally:
            _close(self._connection)
        return acked

    def _release(self) -> None:
        _close(self._connection)  # every unacked message goes back to the queue


def depth(queue: RabbitMQQueue, delay_queues: list[str]) -> int:
    """Messages ready in `queue` plus those waiting in `delay_queues`, by passive
    declares on a producer connection; a queue that does not exist counts 0."""

    def count(connection: Any) -> int:
        return sum(_message_count(connection, name) for name in [queue.queue_name, *delay_queues])

    return int(queue.connector.producers.run(count))


def _walk(
    queue: RabbitMQQueue, purpose: str, look: Callable[[Any, int, DeadLetterEntry], bool]
) -> None:
    """Take the messages of `queue` one by one, up to its depth when this started, and
    call `look(channel, tag, entry)` for each until it returns True; then close the
    channel, which gives back every message not acked. Runs on the calling thread on a
    connection of its own, closed before it returns."""
    connection = queue.connector.connect(f"onestep {purpose} of queue {queue.name!r}")
    try:
        depth = _message_count(connection, queue.queue_name)
        if not depth:
            return
        channel = connection.channel()
        for _ in range(depth):
            method, properties, body = channel.basic_get(queue.queue_name, auto_ack=False)
            if method is None:
                break
            if look(channel, method.delivery_tag, _entry(queue, properties, body)):
                break
        # Close-Ok comes after the broker handled every ack sent before the Close, so
        # the removed messages are gone when this returns; the rest are given back
        channel.close()
    except pika.exceptions.AMQPError as exc:
        raise _read_error(queue, exc) from None
    finally:
        _close(connection)


def _read_error(queue: RabbitMQQueue, exc: BaseException) -> ConnectionError:
    return ConnectionError(
        f"cannot read queue {queue.queue_name!r} at {queue.connector.where}: "
        f"{type(exc).__name__}: {exc}"
    )


def _close(connection: Any) -> None:
    """Close `connection` if it is open: the broker gives back what it holds unacked."""
    with quiet(), contextlib.suppress(pika.exceptions.AMQPError):
        if connection.is_open:
            connection.close()


def _message_count(connection: Any, name: str) -> int:
    """The ready messages of queue `name` (passive declare on a channel of its own);
    0 when it does not exist."""
    channel = connection.channel()
    try:
        result = channel.queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == _NOT_FOUND:
            return 0
        raise
    channel.close()
    return int(result.method.message_count)


def _entry(queue: RabbitMQQueue, properties: Any, body: bytes) -> DeadLetterEntry:
    """A message as an entry: decoded as the queue's source decodes it (JSON payload,
    onestep meta from its header); its id is the dead-letter id onestep put in the meta,
    else the AMQP `message_id`, else a digest of its contents (stable across reads)."""
    decode = decode_upstream if queue.wire_format == "upstream" else decode_message
    delivery = decode(None, 0, properties, body)
    meta = delivery.meta
    entry_id = meta.get(DEAD_LETTER_ID) or properties.message_id
    if not entry_id:
        digest = hashlib.sha256(body)
        digest.update(repr(sorted((properties.headers or {}).items())).encode())
        entry_id = f"sha256-{digest.hexdigest()[:32]}"
    return DeadLetterEntry(entry_id, delivery.payload, meta)
