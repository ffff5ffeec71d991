"""Fixtures shared by the unit tests of the `onestep` command."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from onestep.cli import onestep

UNIT_DIR = Path(__file__).resolve().parent


@pytest.fixture
def invoke(monkeypatch):
    """Run `onestep ARGS...` in-process from tests/unit (so `cli_apps.*` targets import);
    undo its imports and logging afterwards."""
    monkeypatch.chdir(UNIT_DIR)
    saved_path = sys.path[:]
    saved_modules = set(sys.modules)
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(onestep, list(args), catch_exceptions=False)

    yield run
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    sys.path[:] = saved_path
    for name in set(sys.modules) - saved_modules:
        del sys.modules[name]
