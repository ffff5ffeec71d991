"""The connector kit: every name a Source, Sink or StateStore outside onestep's core needs.

Imported by the connectors in `adapters/` exactly as a third party's connector would; the
names here are public and stable, the modules they come from are not. See the docs page
"Write a connector".
"""

from __future__ import annotations

from actors import EncodeError, Failure, HandlerFailed

from ._checks import MAX_DELAY_S, check_delay, check_int, check_number
from ._dead_letters import DEAD_LETTER_ID, DeadLetterEntry, IdTally, NotBrowsable
from ._delivery import Delivery, Sink, Source, SourceContext
from ._listen import inherited_socket
from ._state import StateStore, check_ttl
from ._tables import (
    BusinessTableSpec,
    CursorProgress,
    IncrementalSpec,
    check_column,
    decode_position,
    encode_position,
    is_business_mode,
    json_value,
    row_dict,
)

__all__ = [
    "DEAD_LETTER_ID",
    "MAX_DELAY_S",
    "BusinessTableSpec",
    "CursorProgress",
    "DeadLetterEntry",
    "Delivery",
    "EncodeError",
    "Failure",
    "HandlerFailed",
    "IdTally",
    "IncrementalSpec",
    "NotBrowsable",
    "Sink",
    "Source",
    "SourceContext",
    "StateStore",
    "check_column",
    "check_delay",
    "check_int",
    "check_number",
    "check_ttl",
    "decode_position",
    "encode_position",
    "inherited_socket",
    "is_business_mode",
    "json_value",
    "row_dict",
]
