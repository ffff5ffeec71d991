"""PostgreSQL on psycopg 3: a table as a job queue woken by LISTEN/NOTIFY, business tables
(where/claim/ack/nack), an incremental cursor source, a batched table sink and a
cluster-wide state store; users import PostgresConnector (also as
onestep.PostgresConnector)."""

from ._business import BusinessTable
from ._connector import PostgresConnector
from ._incremental import IncrementalSource
from ._queue import TableQueue
from ._sink import TableSink
from ._state import PostgresStateStore

__all__ = [
    "BusinessTable",
    "IncrementalSource",
    "PostgresConnector",
    "PostgresStateStore",
    "TableQueue",
    "TableSink",
]
