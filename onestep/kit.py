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
from ._serving import BODY_REFUSED, BodyRouter, GuardedServer, guarded_adjustments
from ._state import StateStore, check_ttl

__all__ = [
    "BODY_REFUSED",
    "DEAD_LETTER_ID",
    "MAX_DELAY_S",
    "BodyRouter",
    "DeadLetterEntry",
    "Delivery",
    "EncodeError",
    "Failure",
    "GuardedServer",
    "HandlerFailed",
    "IdTally",
    "NotBrowsable",
    "Sink",
    "Source",
    "SourceContext",
    "StateStore",
    "check_delay",
    "check_int",
    "check_number",
    "check_ttl",
    "guarded_adjustments",
    "inherited_socket",
]
