"""MySQL/MariaDB on pymysql: a table as a job queue, an application's own table as a
business-table queue or an incremental source, a batched table sink and a
cluster-wide state store; users import MySQLConnector (also as onestep.MySQLConnector)."""

from ._business import BusinessTable
from ._connector import MySQLConnector
from ._incremental import IncrementalSource
from ._queue import TableQueue
from ._sink import TableSink
from ._state import MySQLStateStore

__all__ = [
    "BusinessTable",
    "IncrementalSource",
    "MySQLConnector",
    "MySQLStateStore",
    "TableQueue",
    "TableSink",
]
