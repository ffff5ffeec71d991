"""Argument checks shared by the public constructors: each error names the parameter.

Called at construction or decoration time, never on the hot path.
"""

from __future__ import annotations

import math
from typing import Any


def check_number(
    param: str,
    value: Any,
    *,
    minimum: float = 0.0,
    exclusive: bool = False,
    allow_inf: bool = False,
) -> float:
    """`value` as a float if it is a real number >= `minimum` (> with `exclusive`);
    NaN is always refused, infinity unless `allow_inf`."""
    bound = f"> {minimum:g}" if exclusive else f">= {minimum:g}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{param} must be a number {bound}, got {value!r}")
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{param} must be a finite number {bound}, got {value!r}")
    if value < minimum or (exclusive and value == minimum):
        raise ValueError(f"{param} must be a number {bound}, got {value!r}")
    return float(value)


def check_int(param: str, value: Any, *, minimum: int) -> int:
    """`value` if it is an int (not a bool) >= `minimum`; ValueError naming `param`
    otherwise."""
    if type(value) is not int or value < minimum:
        raise ValueError(f"{param} must be an int >= {minimum}, got {value!r}")
    return value


def check_priority(value: Any, *, maximum: int | None = None, why: str = "") -> int:
    """A message's `priority` (higher first): an int (not a bool), at most `maximum` when
    the queue bounds it (a RabbitMQ queue: 0..max_priority); ValueError naming `priority`
    and, with `why`, saying where the bound comes from. Called by every `put` given one."""
    if type(value) is not int:
        raise ValueError(f"priority must be an int or None, got {value!r}")
    if maximum is not None and not 0 <= value <= maximum:
        raise ValueError(f"priority must be an int from 0 to {maximum}{why}, got {value!r}")
    return value


MAX_DELAY_S = 30 * 86_400.0
"""The longest delay or timeout onestep accepts anywhere (`delay_s`, `timeout_s`, retry
delays, leases): 30 days. Longer ones are refused where they are given, naming the
parameter, instead of overflowing a timer or a timestamp later."""


def check_delay(param: str, value: Any, *, exclusive: bool = False) -> float:
    """`value` as a float if it is a number from 0 (above 0 with `exclusive`) to
    MAX_DELAY_S (30 days); ValueError naming `param` and the bound otherwise."""
    delay = check_number(param, value, exclusive=exclusive)
    if delay > MAX_DELAY_S:
        raise ValueError(f"{param} must be at most {MAX_DELAY_S:g} s (30 days), got {value!r}")
    return delay
