"""Faults on a PostgreSQL business table, with real worker processes
(business_worker.py --connector postgres): a worker SIGKILLed while holding claimed rows. Without a
lease column the rows stay claimed (the documented UPDATE frees them once no worker
runs); with one, another worker takes them back after lease_s. Nothing is lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from postgres_support import REPO, URL, connector, postgres_url, query, quote, tables, wait_until

pytestmark = pytest.mark.integration
__all__ = ["connector", "postgres_url", "tables"]  # fixtures used by name

WORKER = REPO / "tests" / "faults" / "business_worker.py"
COUNT = 20


class Worker:
    def __init__(self, table: str, log: Path, **options: Any) -> None:
        self.log = log
        command = [sys.executable, str(WORKER), "--connector", "postgres", "--url", URL]
        command += ["--table", table, "--log", str(log)]
        for key, value in options.items():
            command += [f"--{key.replace('_', '-')}", str(value)]
        self.process = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def started(self) -> list[int]:
        if not self.log.exists():
            return []
        fields = [line.split() for line in self.log.read_text().splitlines()]
        return [int(line[1]) for line in fields if line and line[0] == "start"]

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.communicate()

    def stop(self) -> int:
        self.process.terminate()
        try:
            self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
        return self.process.returncode


def make_orders(table: str) -> None:
    query(
        f"CREATE TABLE {quote(table)} (id serial PRIMARY KEY, "
        "status smallint NOT NULL DEFAULT 0, claimed_at timestamptz NULL)"
    )
    query(f"INSERT INTO {quote(table)} (status) VALUES " + ", ".join(["(0)"] * COUNT))


def statuses(table: str) -> dict[int, int]:
    return dict(query(f"SELECT status, count(*) FROM {quote(table)} GROUP BY status"))


def test_rows_of_a_killed_worker_stay_claimed_without_a_lease_column(tables, tmp_path):
    orders = tables("orders")
    make_orders(orders)
    first = Worker(orders, tmp_path / "first.log", mode="block")
    wait_until(lambda: len(first.started()) == 4)
    first.kill()
    held = set(first.started())
    second = Worker(orders, tmp_path / "second.log")
    try:
        wait_until(lambda: statuses(orders) == {1: COUNT - 4, 9: 4})
    finally:
        assert second.stop() == 0
    # nobody takes them back: no lease column says the claimer is gone
    assert {
        row_id for (row_id,) in query(f"SELECT id FROM {quote(orders)} WHERE status = 9")
    } == held
    assert not held & set(second.started())
    # the documented fix, with no worker running: give them back, and they run
    query(f"UPDATE {quote(orders)} SET status = 0 WHERE status = 9")
    third = Worker(orders, tmp_path / "third.log")
    try:
        wait_until(lambda: statuses(orders) == {1: COUNT})
    finally:
        assert third.stop() == 0
    assert sorted(third.started()) == sorted(held)


def test_a_lease_column_lets_another_worker_take_a_killed_workers_rows_back(tables, tmp_path):
    orders = tables("orders")
    make_orders(orders)
    options = {"lease_column": "claimed_at", "lease_s": 1.5}
    first = Worker(orders, tmp_path / "first.log", mode="block", **options)
    wait_until(lambda: len(first.started()) == 4)
    first.kill()
    held = set(first.started())
    assert query(f"SELECT count(*) FROM {quote(orders)} WHERE claimed_at IS NOT NULL") == [(4,)]
    second = Worker(orders, tmp_path / "second.log", **options)
    try:
        wait_until(lambda: statuses(orders) == {1: COUNT}, timeout=40)
    finally:
        assert second.stop() == 0
    executions = Counter(first.started() + second.started())
    assert sorted(executions) == list(range(1, COUNT + 1))  # nothing lost
    # only the killed worker's rows ran twice
    assert {row_id for row_id, n in executions.items() if n > 1} == held
