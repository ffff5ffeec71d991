"""The connector kit: every name a Source, Sink or StateStore outside onestep's core needs.

Imported by the connectors in `adapters/` exactly as a third party's connector would; the
names here are public and stable, the modules they come from are not. See the docs page
"Write a connector".
"""

from __future__ import annotations

from actors import EncodeError, Failure, HandlerFailed

from ._checks import MAX_DELAY_S, check_delay, check_int, check_number
from ._dead_letter_store import DEAD_LETTER_ID, DeadLetterClaim, DeadLetterEntry, IdTally
from ._dead_letters import NotBrowsable
from ._delivery import Delivery, Sink, Source, SourceContext
from ._encoding import (
    MessageTooLarge,
    check_bodies,
    check_meta,
    check_size,
    encode_json,
    utf8_size,
)
from ._listen import inherited_socket
from ._state import StateStore, check_ttl

__all__ = [
    "DEAD_LETTER_ID",
    "MAX_DELAY_S",
    "DeadLetterClaim",
    "DeadLetterEntry",
    "Delivery",
    "EncodeError",
    "Failure",
    "HandlerFailed",
    "IdTally",
    "MessageTooLarge",
    "NotBrowsable",
    "Sink",
    "Source",
    "SourceContext",
    "StateStore",
    "check_bodies",
    "check_delay",
    "check_int",
    "check_meta",
    "check_number",
    "check_size",
    "check_ttl",
    "encode_json",
    "inherited_socket",
    "utf8_size",
]
