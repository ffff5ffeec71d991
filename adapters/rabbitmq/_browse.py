"""Reading a RabbitMQ queue without consuming it, removing chosen messages from it, and
its depth; RabbitMQQueue.browse, remove and depth call these on the calling thread (the
dead-letter tooling, `onestep dlq`, `onestep.testing.run_until_idle`).

AMQP has no "peek": `browse` takes messages with `basic.get` and manual acks, keeps
every one unacked, and closes its channel at the end, which gives them all back to the
queue. The broker puts a message given back at its original place when it can (so the
order is kept), marks it `redelivered`, and a quorum queue counts it as a delivery (its
`x-delivery-count` grows; with a `delivery-limit` policy, browsing often enough would
drop it). Each pass reads at most the queue's depth when it started, so messages
published meanwhile and messages given back by other consumers are not read twice.
While a pass runs, the messages it holds are invisible to other consumers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any

import pika.exceptions

from onestep.kit import DEAD_LETTER_ID, DeadLetterEntry, IdTally

from ._message import decode_message
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
            if look(channel, method.delivery_tag, _entry(properties, body)):
                break
        # Close-Ok comes after the broker handled every ack sent before the Close, so
        # the removed messages are gone when this returns; the rest are given back
        channel.close()
    except pika.exceptions.AMQPError as exc:
        raise ConnectionError(
            f"cannot read queue {queue.queue_name!r} at {queue.connector.where}: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    finally:
        with quiet():
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


def _entry(properties: Any, body: bytes) -> DeadLetterEntry:
    """A message as an entry: decoded as the queue's source decodes it (JSON payload,
    onestep meta from its header); its id is the dead-letter id onestep put in the meta,
    else the AMQP `message_id`, else a digest of its contents (stable across reads)."""
    delivery = decode_message(None, 0, properties, body)
    meta = delivery.meta
    entry_id = meta.get(DEAD_LETTER_ID) or properties.message_id
    if not entry_id:
        digest = hashlib.sha256(body)
        digest.update(repr(sorted((properties.headers or {}).items())).encode())
        entry_id = f"sha256-{digest.hexdigest()[:32]}"
    return DeadLetterEntry(entry_id, delivery.payload, meta)
