"""The publishing channel that awaits publisher confirms per batch; made by RabbitMQQueue
on the sink actor's thread (results), the source actor's thread (retries) and by the
producer pool on the thread that calls `put`."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import pika
import pika.exceptions

from onestep.kit import MessageTooLarge

#: How long a publish waits for the broker's confirms before it gives up.
CONFIRM_TIMEOUT_S = 60.0


class PublishRefused(RuntimeError):
    """The broker refused (nacked) or returned (unroutable) some of a batch."""

    def __init__(self, nacked: int, returned: int, count: int, destination: str = "") -> None:
        to = f" to {destination}" if destination else ""
        super().__init__(
            f"RabbitMQ refused {nacked} and returned {returned} (unroutable) of {count} "
            f"message(s) published{to}"
        )
        self.nacked = nacked
        self.returned = returned
        self.count = count


def _noop() -> None:
    return None


#: How RabbitMQ says why it closed a channel over a message above `max_message_size`.
_TOO_LARGE = re.compile(r"message size (\d+) is larger than configured max size (\d+)")


def _closed_error(reason: BaseException | None, what: str) -> BaseException:
    """What a wait raises when the broker closed the channel: MessageTooLarge with the
    broker's numbers for an oversize message (a connector configured with a larger
    `max_message_bytes` than the broker's), else the broker's reason."""
    text = str(getattr(reason, "reply_text", "") or reason or "")
    found = _TOO_LARGE.search(text)
    if found is not None:
        return MessageTooLarge(
            "a message", int(found[1]), int(found[2]), "the broker's max_message_size"
        )
    error: BaseException = pika.exceptions.ChannelWrongStateError(
        f"the channel closed while awaiting {what}"
    )
    if isinstance(reason, pika.exceptions.ChannelClosed):
        error = pika.exceptions.ChannelClosedByBroker(reason.reply_code, reason.reply_text)
    return error


class _Publisher:
    """A channel in confirm mode whose confirms are awaited per batch, not per message.

    pika's BlockingChannel.confirm_delivery() waits for each message's confirm inside
    basic_publish (one round trip per message). Instead the underlying channel
    (`BlockingChannel._impl`, pika's asynchronous Channel) is put in confirm mode with
    our own callback, a batch is written without waiting, and process_data_events runs
    until every confirm of the batch arrived.
    """

    def __init__(self, connection: Any, confirms: bool) -> None:
        self._connection = connection
        self._channel = connection.channel()
        self._impl = self._channel._impl
        self._confirms = confirms
        self._published = 0  # the broker numbers confirms 1, 2, ... per channel
        self._unconfirmed: set[int] = set()
        self._nacked = 0
        self._returned = 0
        self._ready = False
        self._closed_by: BaseException | None = None
        self._impl.add_on_return_callback(self._on_return)
        self._impl.add_on_close_callback(self._on_close)
        if confirms:
            self._impl.confirm_delivery(self._on_confirm, callback=self._on_select_ok)
            self._wait(lambda: self._ready, "Confirm.Select")

    @property
    def is_open(self) -> bool:
        return bool(self._channel.is_open)

    def _on_select_ok(self, _: Any) -> None:
        self._ready = True
        self._connection.call_later(0, _noop)  # ends the wait in process_data_events

    def _on_return(self, *_: Any) -> None:
        self._returned += 1

    def _on_close(self, _: Any, reason: BaseException) -> None:
        """Runs inside process_data_events when the channel closes (the broker closed it:
        a message over its `max_message_size`, a deleted exchange): ends the wait."""
        self._closed_by = reason
        self._connection.call_later(0, _noop)

    def _on_confirm(self, frame: Any) -> None:
        """Runs inside process_data_events for each Basic.Ack or Basic.Nack."""
        method = frame.method
        tag = method.delivery_tag
        unconfirmed = self._unconfirmed
        before = len(unconfirmed)
        if method.multiple:
            self._unconfirmed = {t for t in unconfirmed if t > tag}
        else:
            unconfirmed.discard(tag)
        if isinstance(method, pika.spec.Basic.Nack):
            # a multiple nack refuses every message up to its tag
            self._nacked += before - len(self._unconfirmed)
        if not self._unconfirmed:
            self._connection.call_later(0, _noop)

    def _wait(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + CONFIRM_TIMEOUT_S
        process = self._connection.process_data_events
        while not done():
            if self._impl.is_closed:
                # no confirm comes on a closed channel: say why at once, not after the timeout
                raise _closed_error(self._closed_by, what)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"RabbitMQ did not answer {what} in {CONFIRM_TIMEOUT_S:g} s")
            process(time_limit=remaining)

    def publish(self, messages: Iterable[tuple[str, str, bytes, Any]]) -> None:
        """Publish (exchange, routing_key, body, properties) messages and wait until the
        broker confirmed all of them; raise if any was nacked or returned unroutable."""
        self._nacked = self._returned = 0
        publish = self._impl.basic_publish
        first = self._published + 1
        for exchange, routing_key, body, properties in messages:
            publish(exchange, routing_key, body, properties, mandatory=True)
            self._published += 1
        count = self._published - first + 1
        if self._confirms:
            self._unconfirmed.update(range(first, self._published + 1))
            self._wait(lambda: not self._unconfirmed, "publisher confirms")
        else:
            self._connection.process_data_events(time_limit=0)  # write them out
        if self._nacked or self._returned:
            raise PublishRefused(self._nacked, self._returned, count)
