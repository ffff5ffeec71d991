"""The connector kit: every name a Source, Sink or StateStore outside onestep's core needs.

Imported by the connectors in `adapters/` exactly as a third party's connector would; the
names here are public and stable, the modules they come from are not. See the docs page
"Write a connector".
"""

from __future__ import annotations

from actors import EncodeError, Failure, HandlerFailed

from ._values import MAX_DELAY_S, check_delay, check_int, check_number, check_priority
from ._wire import (
    WIRE_FORMATS,
    check_wire_format,
    encode_envelope,
    envelope_of,
    envelope_with_attempts,
)
from .core import Delivery, Sink, Source, SourceContext
from .core._encoding import (
    MessageTooLarge,
    check_bodies,
    check_meta,
    check_size,
    encode_json,
    utf8_size,
)
from .ops import DEAD_LETTER_ID, DeadLetterClaim, DeadLetterEntry, IdTally, NotBrowsable
from .ops._serving import BODY_REFUSED, BodyRouter, GuardedServer, guarded_adjustments
from .processes import inherited_socket
from .sql import (
    BusinessTableSource,
    BusinessTableSpec,
    CursorProgress,
    IncrementalSpec,
    IncrementalTableSource,
    check_column,
    column_index,
    decode_position,
    encode_position,
    is_business_mode,
    json_value,
    row_dict,
)
from .state import StateStore, check_ttl

__all__ = [
    "BODY_REFUSED",
    "DEAD_LETTER_ID",
    "MAX_DELAY_S",
    "WIRE_FORMATS",
    "BodyRouter",
    "BusinessTableSource",
    "BusinessTableSpec",
    "CursorProgress",
    "DeadLetterClaim",
    "DeadLetterEntry",
    "Delivery",
    "EncodeError",
    "Failure",
    "GuardedServer",
    "HandlerFailed",
    "IdTally",
    "IncrementalSpec",
    "IncrementalTableSource",
    "MessageTooLarge",
    "NotBrowsable",
    "Sink",
    "Source",
    "SourceContext",
    "StateStore",
    "check_bodies",
    "check_column",
    "check_delay",
    "check_int",
    "check_meta",
    "check_number",
    "check_priority",
    "check_size",
    "check_ttl",
    "check_wire_format",
    "column_index",
    "decode_position",
    "encode_envelope",
    "encode_json",
    "encode_position",
    "envelope_of",
    "envelope_with_attempts",
    "guarded_adjustments",
    "inherited_socket",
    "is_business_mode",
    "json_value",
    "row_dict",
    "utf8_size",
]
