"""Retry policies: what the supervisor does when a handler fails.

`attempts` is the number of executions so far, the failed one included, so
`MaxAttempts(3)` runs a message at most three times.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import Any

from actors import Failure

from .._values import check_delay, check_int, check_number


class RetryPolicy(ABC):
    """Base class: `next_delay` returns seconds to wait before the next attempt (a number
    from 0 to 30 days), or None to give up. Anything else (NaN, a negative or longer
    delay, a string) is a bug of the policy: the runtime logs it and gives up on the
    message (dead letter, or failed at its source) rather than guess."""

    @abstractmethod
    def next_delay(self, attempts: int, failure: Failure) -> float | None: ...

    def describe(self) -> dict[str, Any]:
        return {"type": type(self).__name__}


class NoRetry(RetryPolicy):
    """Never retry: the first failure goes to the dead letter (or fails at the source)."""

    def next_delay(self, attempts: int, failure: Failure) -> float | None:
        return None

    def __repr__(self) -> str:
        return "NoRetry()"


class MaxAttempts(RetryPolicy):
    """Run a message at most `max_attempts` times, `delay_s` apart."""

    def __init__(self, max_attempts: int = 3, delay_s: float = 0.0) -> None:
        self.max_attempts = check_int("max_attempts", max_attempts, minimum=1)
        self.delay_s = check_delay("delay_s", delay_s)

    def next_delay(self, attempts: int, failure: Failure) -> float | None:
        if attempts >= self.max_attempts:
            return None
        return self.delay_s

    def describe(self) -> dict[str, Any]:
        return {"type": "MaxAttempts", "max_attempts": self.max_attempts, "delay_s": self.delay_s}

    def __repr__(self) -> str:
        return f"MaxAttempts(max_attempts={self.max_attempts}, delay_s={self.delay_s})"


class ExponentialBackoff(RetryPolicy):
    """Run a message at most `max_attempts` times; the n-th retry waits
    `min_delay_s * multiplier ** (n - 1)`, capped at `max_delay_s`, then shortened by a
    random fraction of up to `jitter` (0 = none, 1 = "full jitter") so that messages
    that failed together do not retry together."""

    def __init__(
        self,
        max_attempts: int = 5,
        min_delay_s: float = 1.0,
        max_delay_s: float = 300.0,
        multiplier: float = 2.0,
        jitter: float = 0.1,
    ) -> None:
        self.max_attempts = check_int("max_attempts", max_attempts, minimum=1)
        self.min_delay_s = check_delay("min_delay_s", min_delay_s)
        self.max_delay_s = check_delay("max_delay_s", max_delay_s)
        if self.max_delay_s < self.min_delay_s:
            raise ValueError(
                f"max_delay_s ({max_delay_s!r}) must be >= min_delay_s ({min_delay_s!r})"
            )
        self.multiplier = check_number("multiplier", multiplier, minimum=1)
        jitter = check_number("jitter", jitter)
        if jitter > 1:
            raise ValueError(f"jitter must be between 0 and 1, got {jitter!r}")
        self.jitter = jitter

    def delay_for(self, retry_number: int, rand: float | None = None) -> float:
        """The delay before retry number `retry_number` (1 for the first retry)."""
        exponent = min(retry_number - 1, 1024)
        try:
            delay = self.min_delay_s * self.multiplier**exponent
        except OverflowError:
            delay = self.max_delay_s
        delay = min(self.max_delay_s, delay)
        if self.jitter:
            delay -= delay * self.jitter * (random.random() if rand is None else rand)
        return delay

    def next_delay(self, attempts: int, failure: Failure) -> float | None:
        if attempts >= self.max_attempts:
            return None
        return self.delay_for(attempts)

    def describe(self) -> dict[str, Any]:
        return {
            "type": "ExponentialBackoff",
            "max_attempts": self.max_attempts,
            "min_delay_s": self.min_delay_s,
            "max_delay_s": self.max_delay_s,
            "multiplier": self.multiplier,
            "jitter": self.jitter,
        }

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "type")
        return f"ExponentialBackoff({fields})"
