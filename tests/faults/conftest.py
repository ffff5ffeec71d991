"""Fixtures shared by the fault tests that start `onestep run` parents."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.processes_support import Parent, all_started_pids, kill_leftovers


@pytest.fixture
def parents() -> Iterator[list[Parent]]:
    """The parents a test starts: killed afterwards (with any worker left) if the test
    did not stop them."""
    started: list[Parent] = []
    yield started
    for parent in started:
        parent.kill()
        kill_leftovers(all_started_pids(parent.err.ready()))
