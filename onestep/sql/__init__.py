"""What the SQL connectors (MySQL, PostgreSQL) share, re-exported by onestep.kit: the options
of business tables and incremental sources, cursor progress, rows as JSON, and the two
sources built on a few statements each database supplies. Imports the core, the state
stores and onestep._values; imported by onestep.kit only."""

from ._business_sql import BusinessStatements
from ._business_table import BusinessTableSource
from ._incremental_source import IncrementalTableSource
from ._tables import (
    BusinessTableSpec,
    CursorProgress,
    IncrementalSpec,
    check_column,
    column_index,
    decode_position,
    encode_position,
    is_business_mode,
    json_value,
    row_dict,
)

__all__ = [
    "BusinessStatements",
    "BusinessTableSource",
    "BusinessTableSpec",
    "CursorProgress",
    "IncrementalSpec",
    "IncrementalTableSource",
    "check_column",
    "column_index",
    "decode_position",
    "encode_position",
    "is_business_mode",
    "json_value",
    "row_dict",
]
