"""MySQL/MariaDB table queues with priorities against a real server: claims go higher
first (on the priority index), a retry keeps its priority, and a table made before
priorities runs on without the column until a put asks for one."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from mysql_support import TIMEOUT, connector, mysql_url, query, quote, tables

from onestep import MaxAttempts, OneStepApp
from tests.helpers import running

pytestmark = pytest.mark.integration
__all__ = ["connector", "mysql_url", "tables"]  # fixtures used by name

# The managed table as onestep made it before priorities (meta and lease tokens).
BEFORE_PRIORITIES_DDL = """CREATE TABLE {} (
    `id` BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    `payload` LONGTEXT NOT NULL,
    `status` VARCHAR(16) NOT NULL DEFAULT 'pending',
    `attempts` INT UNSIGNED NOT NULL DEFAULT 0,
    `available_at` DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    `leased_until` DATETIME(6) NULL,
    `meta` LONGTEXT NULL,
    `lease_token` VARCHAR(64) NULL,
    `last_error` TEXT NULL,
    `created_at` DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    `updated_at` DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
        ON UPDATE CURRENT_TIMESTAMP(6),
    KEY `onestep_claim` (`status`, `available_at`),
    KEY `onestep_lease` (`status`, `leased_until`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""


def run_in_order(queue: Any, count: int, fail_first: Any = None) -> list[tuple[Any, int]]:
    """Run an app with concurrency 1 on `queue` until it handled `count` executions;
    `fail_first` fails its first two attempts. Returns (item, attempts) in order."""
    order: list[tuple[Any, int]] = []
    done = threading.Event()
    app = OneStepApp("mysql-priority")

    @app.task(source=queue, concurrency=1, retry=MaxAttempts(3))
    def handle(ctx: Any, item: Any) -> None:
        order.append((item, ctx.current.attempts))
        if len(order) == count:
            done.set()
        if item == fail_first and ctx.current.attempts < 2:
            raise RuntimeError("fails twice")

    with running(app):
        assert done.wait(TIMEOUT), f"handled {len(order)} of {count}: {order}"
    return order


def test_high_priority_rows_put_before_the_app_starts_run_first(connector, tables):
    jobs = tables("prio")
    queue = connector.table_queue(jobs, poll_interval_s=0.05)
    queue.put_many([["low", i] for i in range(30)])
    queue.put_many([["high", i] for i in range(5)], priority=9)
    queue.put(["higher", 0], priority=10)
    order = [tuple(item) for item, _ in run_in_order(queue, 36)]
    assert order[:6] == [("higher", 0), *[("high", i) for i in range(5)]]
    assert order[6:] == [("low", i) for i in range(30)]


def test_a_retried_row_keeps_its_priority(connector, tables):
    jobs = tables("prio_retry")
    queue = connector.table_queue(jobs, poll_interval_s=0.05, batch_size=1)
    queue.put("high", priority=5)
    queue.put_many([f"low-{i}" for i in range(5)])
    order = run_in_order(queue, 8, fail_first="high")
    # A retry that lost its priority would be due after the five low rows (its
    # available_at is later): it would run seventh and eighth. A zero-delay retry is due
    # a moment after it was written, so a claim in the same round may take a low row.
    assert [attempts for item, attempts in order if item == "high"] == [0, 1, 2]
    assert max(i for i, (item, _) in enumerate(order) if item == "high") <= 4, order
    assert query(f"SELECT priority FROM {quote(jobs)} WHERE payload = %s", ('"high"',)) == [(5,)]


def test_the_claim_of_a_table_with_priorities_uses_the_priority_index(connector, tables):
    jobs = tables("prio_explain")
    queue = connector.table_queue(jobs)
    queue.put_many([{"n": n} for n in range(200)], priority=1)
    queue.put_many([{"n": n} for n in range(200)])
    query(f"ANALYZE TABLE {quote(jobs)}")
    claim = queue._leases._sql_claim_by_priority.replace("%s", "10")
    [plan] = query("EXPLAIN " + claim)
    row = " ".join(str(value) for value in plan)
    assert "onestep_priority" in row, row
    assert "filesort" not in row, row


def test_a_table_made_before_priorities_runs_on_and_refuses_only_a_priority(connector, tables):
    jobs = tables("prio_legacy")
    query(BEFORE_PRIORITIES_DDL.format(quote(jobs)))
    queue = connector.table_queue(jobs, auto_create=False, poll_interval_s=0.05)
    queue.put_many([["plain", i] for i in range(3)])
    with pytest.raises(ValueError, match="lacks column `priority` \\(priority_column\\)") as info:
        queue.put("urgent", priority=3)
    assert [tuple(item) for item, _ in run_in_order(queue, 3)] == [("plain", i) for i in range(3)]
    assert queue.describe()["priorities"] is False
    with pytest.raises(ValueError, match="lacks column"):
        queue.put_many(["urgent"], priority=3)
    # the fix runs as printed, and priorities then work
    [alter] = [line.strip() for line in str(info.value).splitlines() if "ALTER TABLE" in line]
    query(alter)
    fixed = connector.table_queue(jobs, auto_create=False, poll_interval_s=0.05)
    fixed.put("later")
    fixed.put("urgent", priority=3)
    assert [item for item, _ in run_in_order(fixed, 2)] == ["urgent", "later"]


def test_auto_create_adds_the_priority_column_and_index_to_an_older_table(connector, tables):
    jobs = tables("prio_upgrade")
    query(BEFORE_PRIORITIES_DDL.format(quote(jobs)))
    queue = connector.table_queue(jobs)
    queue.put("plain")
    queue.put("urgent", priority=2)
    columns = {row[0]: row for row in query(f"SHOW COLUMNS FROM {quote(jobs)}")}
    assert columns["priority"][1].lower().startswith("int")
    indexes = {row[2] for row in query(f"SHOW INDEX FROM {quote(jobs)}")}
    assert "onestep_priority" in indexes
    assert [item for item, _ in run_in_order(queue, 2)] == ["urgent", "plain"]


def test_a_priority_that_is_not_an_int_or_too_large_is_refused(connector, tables):
    queue = connector.table_queue(tables("prio_bad"))
    with pytest.raises(ValueError, match="priority must be an int or None"):
        queue.put("x", priority="high")
    with pytest.raises(ValueError, match="priority must fit"):
        queue.put_many(["x"], priority=2**31)
    off = connector.table_queue(tables("prio_off"), priority_column=None)
    with pytest.raises(ValueError, match="priority_column=None"):
        off.put("x", priority=1)
