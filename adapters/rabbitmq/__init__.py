"""RabbitMQConnector: RabbitMQ queues (on pika) as onestep sources and sinks; users build
queues with `RabbitMQConnector(url).queue(name)` (also as onestep.RabbitMQConnector).

The runtime calls each queue's source methods on its SourceActor's thread and its sink
methods on its SinkActor's thread.
"""

from ._connector import RabbitMQConnector
from ._message import ATTEMPTS_HEADER, BINARY_TYPE, HEADER_PREFIX, JSON_TYPE, META_HEADER
from ._publisher import CONFIRM_TIMEOUT_S
from ._queue import EXCHANGE_TYPES, IDLE_WAIT_S, RabbitMQQueue

__all__ = [
    "ATTEMPTS_HEADER",
    "BINARY_TYPE",
    "CONFIRM_TIMEOUT_S",
    "EXCHANGE_TYPES",
    "HEADER_PREFIX",
    "IDLE_WAIT_S",
    "JSON_TYPE",
    "META_HEADER",
    "RabbitMQConnector",
    "RabbitMQQueue",
]
