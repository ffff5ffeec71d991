"""Operations: metrics monitors, status page and line, dead-letter tooling, connection
checks. Imports the core, the state stores and the sources; imported by the public app,
onestep.http, onestep.kit and the CLI. The Prometheus collector (`_collector`) is not
re-exported here: prometheus_client is imported only by onestep.http.
"""

from ._connection_check import EndpointCheck, check_connections
from ._dead_letter_store import DEAD_LETTER_ID, DeadLetterClaim, DeadLetterEntry, IdTally
from ._dead_letters import DeadLetter, DeadLetters, NotBrowsable, dead_letters_of
from ._graph import FORMATS as GRAPH_FORMATS
from ._graph import render_graph
from ._metrics import AppMonitor, Monitor, WorkersMonitor
from ._put_back import NotReplayable

__all__ = [
    "DEAD_LETTER_ID",
    "GRAPH_FORMATS",
    "AppMonitor",
    "DeadLetter",
    "DeadLetterClaim",
    "DeadLetterEntry",
    "DeadLetters",
    "EndpointCheck",
    "IdTally",
    "Monitor",
    "NotBrowsable",
    "NotReplayable",
    "WorkersMonitor",
    "check_connections",
    "dead_letters_of",
    "render_graph",
]
