"""Shared fixtures: every test must leave no actor and no onestep thread behind."""

from __future__ import annotations

import threading
import time

import pykka
import pytest


def _onestep_threads() -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t.is_alive() and (t.name.startswith("onestep-") or "Actor-" in t.name)
    ]


@pytest.fixture(autouse=True)
def no_leftover_actors_or_threads():
    """Fail a test that leaves an actor or a runtime thread running after it ends."""
    yield
    # Threads that are shutting down get a moment to finish their last instructions.
    deadline = time.monotonic() + 2.0
    while (_onestep_threads() or pykka.ActorRegistry.get_all()) and time.monotonic() < deadline:
        time.sleep(0.01)
    actors = pykka.ActorRegistry.get_all()
    threads = _onestep_threads()
    pykka.ActorRegistry.stop_all()
    assert not actors, f"actors left running: {actors}"
    assert not threads, f"threads left running: {[t.name for t in threads]}"
