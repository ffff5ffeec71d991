"""RabbitMQConnector: RabbitMQ queues (on pika) as onestep sources, sinks and producers;
users build queues with `RabbitMQConnector(url).queue(name)` (also as
onestep.RabbitMQConnector).

The runtime calls each queue's source methods on its SourceActor's thread and its sink
methods on its SinkActor's thread; `put` and `put_many` run on any thread.
"""

from ._connector import RabbitMQConnector
from ._delays import DELAY_QUEUE_GRACE_S, delay_bucket_ms
from ._message import ATTEMPTS_HEADER, BINARY_TYPE, HEADER_PREFIX, JSON_TYPE, META_HEADER
from ._producer import MAX_IDLE_PRODUCERS
from ._publisher import CONFIRM_TIMEOUT_S, PublishRefused
from ._queue import EXCHANGE_TYPES, IDLE_WAIT_S, RabbitMQQueue

__all__ = [
    "ATTEMPTS_HEADER",
    "BINARY_TYPE",
    "CONFIRM_TIMEOUT_S",
    "DELAY_QUEUE_GRACE_S",
    "EXCHANGE_TYPES",
    "HEADER_PREFIX",
    "IDLE_WAIT_S",
    "JSON_TYPE",
    "MAX_IDLE_PRODUCERS",
    "META_HEADER",
    "PublishRefused",
    "RabbitMQConnector",
    "RabbitMQQueue",
    "delay_bucket_ms",
]
