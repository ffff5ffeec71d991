"""Redis on redis-py: streams read through consumer groups as onestep sources, sinks and
producers, and a state store shared by every process; users build them from
`RedisConnector(url)` (also as onestep.RedisConnector).

The runtime calls a stream's source methods on its SourceActor's thread and its sink
methods on its SinkActor's thread; `put`, `put_many` and the state store run on any
thread.
"""

from ._codec import ATTEMPTS, BODY, META, TYPE
from ._connector import RedisConnector
from ._state import RedisStateStore
from ._stream import RedisStream, default_consumer

__all__ = [
    "ATTEMPTS",
    "BODY",
    "META",
    "TYPE",
    "RedisConnector",
    "RedisStateStore",
    "RedisStream",
    "default_consumer",
]
