"""MySQL/MariaDB on pymysql: a table as a job queue, a batched table sink and a
cluster-wide state store; users import MySQLConnector (also as onestep.MySQLConnector)."""

from ._connector import MySQLConnector
from ._queue import TableQueue
from ._sink import TableSink
from ._state import MySQLStateStore

__all__ = ["MySQLConnector", "MySQLStateStore", "TableQueue", "TableSink"]
