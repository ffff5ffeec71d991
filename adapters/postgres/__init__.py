"""PostgreSQL on psycopg 3: a table as a job queue woken by LISTEN/NOTIFY, a batched table
sink and a cluster-wide state store; users import PostgresConnector (also as
onestep.PostgresConnector)."""

from ._connector import PostgresConnector
from ._queue import TableQueue
from ._sink import TableSink
from ._state import PostgresStateStore

__all__ = ["PostgresConnector", "PostgresStateStore", "TableQueue", "TableSink"]
