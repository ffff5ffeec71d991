"""Fixtures and helpers for the PostgreSQL tests (integration and faults): the server
check (skip on a laptop, fail under CI), unique tables dropped afterwards, raw queries,
and worker processes (tests/faults/postgres_worker.py).

Imported by tests/integration/test_postgres*.py and tests/faults/test_postgres*.py; kept
out of conftest.py so that it touches no other suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.helpers import skip_or_fail
from tests.helpers import wait_until as wait_until  # the tests import it from here

URL = os.environ.get("ONESTEP_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
HOST, PORT, USER, DATABASE = "127.0.0.1", 5432, "postgres", "test"
REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "tests" / "faults" / "postgres_worker.py"
TIMEOUT = 20.0


def raw_connect() -> Any:
    return psycopg.connect(
        host=HOST, port=PORT, user=USER, dbname=DATABASE, autocommit=True, connect_timeout=3
    )


def server_problem() -> str | None:
    """None if PostgreSQL answers, else why not."""
    try:
        raw_connect().close()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def require_server() -> None:
    """Skip when PostgreSQL is unreachable; fail instead when CI is set."""
    problem = server_problem()
    if problem is None:
        return
    skip_or_fail(
        f"PostgreSQL is not reachable at {HOST}:{PORT} (postgres, database test): {problem}"
    )


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def query(sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement on a fresh connection; returns its rows (none for DDL)."""
    with raw_connect() as conn:
        cursor = conn.execute(sql, args)
        return list(cursor.fetchall()) if cursor.description else []


def statuses(table: str) -> dict[str, int]:
    rows = query(f"SELECT status, count(*) FROM {quote(table)} GROUP BY status")
    return {status: int(count) for status, count in rows}


@pytest.fixture
def postgres_url() -> str:
    require_server()
    return URL


@pytest.fixture
def connector(postgres_url: str) -> Iterator[Any]:
    from onestep import PostgresConnector

    conn = PostgresConnector(postgres_url, connect_timeout_s=5)
    yield conn
    conn.close()


@pytest.fixture
def tables(postgres_url: str) -> Iterator[Callable[[str], str]]:
    """`tables("jobs")` gives a unique table name; every one is dropped afterwards."""
    made: list[str] = []

    def make(prefix: str) -> str:
        name = f"t_{prefix}_{uuid.uuid4().hex[:10]}"
        made.append(name)
        return name

    yield make
    if server_problem() is None:
        for name in made:
            query(f"DROP TABLE IF EXISTS {quote(name)}")


def preload(connector: Any, table: str, count: int, **queue_options: Any) -> Any:
    """Create the managed table and insert `count` rows {"n": 0..count-1}."""
    queue = connector.table_queue(table, **queue_options)
    queue.create_table()
    queue.put_many({"n": n} for n in range(count))
    return queue


# -- worker processes ----------------------------------------------------------------------


class Worker:
    """A worker process (tests/faults/postgres_worker.py) and the log of what it executed."""

    def __init__(self, table: str, log: Path, **options: Any) -> None:
        self.log = log
        command = [sys.executable, str(WORKER), "--url", URL, "--table", table, "--log", str(log)]
        for key, value in options.items():
            command += [f"--{key.replace('_', '-')}", str(value)]
        self.process = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def lines(self, what: str) -> list[list[str]]:
        """The fields after `what` of every log line of that kind, in order."""
        if not self.log.exists():
            return []
        lines = [line.split() for line in self.log.read_text().splitlines()]
        return [fields[1:] for fields in lines if fields and fields[0] == what]

    def ready(self) -> bool:
        """Whether the worker's app has started (its startup hook ran)."""
        return bool(self.lines("ready"))

    def executed(self) -> list[int]:
        """The item numbers this worker started, in order (one line per execution)."""
        return [int(fields[0]) for fields in self.lines("start")]

    def finished(self) -> dict[int, bool]:
        """Item number -> whether its lease was lost, for every handler that returned."""
        return {int(fields[0]): fields[2] == "1" for fields in self.lines("end")}

    def succeeded(self) -> dict[int, bool]:
        """Item number -> the `lease_lost` of its succeeded event's meta."""
        return {int(fields[0]): fields[2] == "1" for fields in self.lines("succeeded")}

    def stop(self, timeout: float = TIMEOUT) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            output, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output, _ = self.process.communicate()
        return self.process.returncode, output

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()
