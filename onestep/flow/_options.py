"""The flow-control options of `@app.task`: `rate_limit`, `concurrency_key`/`max_per_key`
and `dedup_key`/`dedup_ttl_s`, checked at decoration time by TaskSpec (core/_task.py).

Nothing here runs per message: the gate (onestep/flow/_gate.py) is built from these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .._values import MAX_DELAY_S, check_delay, check_int, check_number

_RATE_FORMS = (
    'a string "N/s", "N/m" or "N/h" (N a whole number above 0: "20/s", "600/m", '
    '"1000/h"), or RateLimit(count, per_s=seconds)'
)
_RATE = re.compile(r"\s*(\d+)\s*/\s*(s|m|h)\s*")
_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}

#: How long a message's dedup key is kept when `dedup_ttl_s` is not given: one day.
DEFAULT_DEDUP_TTL_S = 86_400.0


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `count` messages per `per_s` seconds: a token bucket that refills at
    `count / per_s` tokens a second and holds at most `count` (a burst of one period).
    `rate_limit="20/s"` is `RateLimit(20, per_s=1)`."""

    count: int
    per_s: float = 1.0

    def __post_init__(self) -> None:
        check_int("RateLimit count", self.count, minimum=1)
        per_s = check_number("RateLimit per_s", self.per_s, exclusive=True)
        if per_s > MAX_DELAY_S:
            raise ValueError(f"RateLimit per_s must be at most {MAX_DELAY_S:g} s, got {per_s!r}")
        object.__setattr__(self, "per_s", per_s)

    @property
    def rate_per_s(self) -> float:
        return self.count / self.per_s

    def __str__(self) -> str:
        for unit, seconds in _PERIODS.items():
            if self.per_s == seconds:
                return f"{self.count}/{unit}"
        return f"{self.count}/{self.per_s:g}s"


def parse_rate_limit(value: Any) -> RateLimit | None:
    """`rate_limit` as a RateLimit (None stays None); ValueError showing the accepted
    forms otherwise."""
    if value is None or isinstance(value, RateLimit):
        return value
    if isinstance(value, str):
        match = _RATE.fullmatch(value)
        if match is not None and int(match.group(1)) > 0:
            return RateLimit(int(match.group(1)), per_s=_PERIODS[match.group(2)])
    raise ValueError(f"rate_limit must be {_RATE_FORMS}; got {value!r}")


@dataclass(frozen=True, slots=True)
class FlowOptions:
    """A task's flow-control options, checked; `None` everywhere means none."""

    rate_limit: RateLimit | None = None
    concurrency_key: Any = None
    max_per_key: int = 1
    dedup_key: Any = None
    dedup_ttl_s: float = DEFAULT_DEDUP_TTL_S

    @property
    def active(self) -> bool:
        return (
            self.rate_limit is not None
            or self.concurrency_key is not None
            or self.dedup_key is not None
        )

    def describe(self) -> dict[str, Any]:
        """The limits as `describe()` and `onestep check` show them (only those set)."""
        info: dict[str, Any] = {}
        if self.rate_limit is not None:
            info["rate_limit"] = str(self.rate_limit)
        if self.concurrency_key is not None:
            info["concurrency_key"] = _name(self.concurrency_key)
            info["max_per_key"] = self.max_per_key
        if self.dedup_key is not None:
            info["dedup_key"] = _name(self.dedup_key)
            info["dedup_ttl_s"] = self.dedup_ttl_s
        return info


def read_flow_options(
    rate_limit: Any,
    concurrency_key: Any,
    max_per_key: Any,
    dedup_key: Any,
    dedup_ttl_s: Any,
) -> FlowOptions:
    """Check the options of one `@app.task`; the error names the parameter."""
    rate = parse_rate_limit(rate_limit)
    if concurrency_key is not None and not callable(concurrency_key):
        raise TypeError(
            f"concurrency_key must be a callable taking the message body, "
            f"got {type(concurrency_key).__name__}"
        )
    check_int("max_per_key", max_per_key, minimum=1)
    if max_per_key != 1 and concurrency_key is None:
        raise ValueError("max_per_key needs concurrency_key (a callable giving each key)")
    if dedup_key is not None and not callable(dedup_key):
        raise TypeError(
            f"dedup_key must be a callable taking the message body, got {type(dedup_key).__name__}"
        )
    if dedup_ttl_s is None:
        ttl = DEFAULT_DEDUP_TTL_S
    else:
        if dedup_key is None:
            raise ValueError("dedup_ttl_s needs dedup_key (a callable giving each key)")
        ttl = check_delay("dedup_ttl_s", dedup_ttl_s, exclusive=True)
    return FlowOptions(rate, concurrency_key, max_per_key, dedup_key, ttl)


def format_limits(limits: dict[str, Any]) -> str:
    """A task's `describe()["limits"]` as one line of `onestep check`."""
    parts = []
    if "rate_limit" in limits:
        parts.append(f"rate {limits['rate_limit']}")
    if "concurrency_key" in limits:
        parts.append(f"at most {limits['max_per_key']} per key {limits['concurrency_key']}")
    if "dedup_key" in limits:
        parts.append(f"dedup key {limits['dedup_key']} for {limits['dedup_ttl_s']:g}s")
    scope = limits.get("scope")
    if scope == "per process":
        parts.append("per process (in-memory state store: each process has its own)")
    elif scope:
        parts.append("shared by every process using the state store")
    return "; ".join(parts)


def _name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))
