"""Refusing an upstream option onestep does not have with a ValueError that names it and
says why; called by onestep.compat's connectors at construction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def refuse(where: str, kind: str, given: Mapping[str, Any], why: str) -> None:
    """ValueError naming every option in `given` (nothing when it is empty)."""
    if not given:
        return
    names = ", ".join(f"{key}={value!r}" for key, value in given.items())
    raise ValueError(
        f"{where}: {kind} {names} not supported by onestep ({why}); see "
        "docs/migrating/upstream.md for what to use instead"
    )
