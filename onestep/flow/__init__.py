"""Flow control: rate limits, per-key concurrency and deduplication keys of a task, kept
in the app's state store. Imported by the core's TaskSpec; imports only the state stores,
`onestep._values` and `actors`.
"""

from ._gate import DEFAULT_SLOT_LEASE_S, SKIP, Gate
from ._options import (
    DEFAULT_DEDUP_TTL_S,
    FlowOptions,
    RateLimit,
    format_limits,
    parse_rate_limit,
    read_flow_options,
)

__all__ = [
    "DEFAULT_DEDUP_TTL_S",
    "DEFAULT_SLOT_LEASE_S",
    "SKIP",
    "FlowOptions",
    "Gate",
    "RateLimit",
    "format_limits",
    "parse_rate_limit",
    "read_flow_options",
]
