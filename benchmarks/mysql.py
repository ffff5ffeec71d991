"""Throughput and peak memory of the MySQL adapter against raw pymysql, same run, same
machine (needs MariaDB at 127.0.0.1:3306, root, database test; or --url).

    python benchmarks/mysql.py                  # both cases, 20,000 rows
    python benchmarks/mysql.py --json --repeat 3
    python benchmarks/mysql.py --case queue

Cases:
- `queue`: 20,000 preloaded rows in a managed table -> `table_queue` (batch_size 100)
  -> a no-op async task (concurrency 100). Baseline: one pymysql connection claiming 100
  rows per transaction with `SELECT ... FOR UPDATE SKIP LOCKED`, decoding the JSON,
  calling a no-op and marking them done with one UPDATE per batch.
- `sink`: 20,000 ints preloaded in a MemoryQueue -> an async task (concurrency 1000)
  returning a dict -> `table_sink` (batch_size 500). Baseline: pymysql `executemany` of 500 rows per
  transaction.

The onestep rate is (N - 1) / (time of the N-th handled row - time of the first), as in
memory_pipeline.py; after it the app is stopped and the table checked (every row done,
or written). Each side runs in a fresh child process (peak RSS is its own).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import (
    CountingEvent,
    add_common_args,
    emit_child_result,
    parse_common_args,
    print_results,
    run_cases,
)

CASES = ("queue", "sink")
DEFAULT_MESSAGES = 20_000
DEFAULT_URL = "mysql://root@127.0.0.1:3306/test"
SINK_DDL = "CREATE TABLE {} (n BIGINT PRIMARY KEY, label VARCHAR(64), score DOUBLE)"


def _table(prefix: str) -> str:
    return f"bench_{prefix}_{uuid.uuid4().hex[:8]}"


def _raw(url: str) -> Any:
    from onestep import MySQLConnector

    return MySQLConnector(url).connect()


def _drop(url: str, table: str) -> None:
    conn = _raw(url)
    with conn.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS `{table}`")
    conn.close()


def _count(url: str, sql: str) -> int:
    conn = _raw(url)
    with conn.cursor() as cursor:
        cursor.execute(sql)
        (value,) = cursor.fetchone()
    conn.close()
    return int(value)


def _preload_queue(url: str, table: str, messages: int) -> Any:
    from onestep import MySQLConnector

    queue = MySQLConnector(url).table_queue(table, batch_size=100, poll_interval_s=0.01)
    queue.create_table()
    queue.put_many({"n": n} for n in range(messages))
    return queue


# -- children ------------------------------------------------------------------------------


def onestep_queue(url: str, messages: int, wait_s: float) -> dict[str, Any]:
    from onestep import OneStepApp

    table = _table("queue")
    try:
        queue = _preload_queue(url, table, messages)
        counter = CountingEvent(messages)
        hit = counter.hit
        app = OneStepApp("bench", shutdown_timeout_s=5.0)

        @app.task(source=queue, concurrency=100, name="noop")
        async def noop(ctx: Any, item: Any) -> None:
            hit()

        app.start()
        try:
            finished = counter.done.wait(wait_s)
        finally:
            app.stop()
        done = _count(url, f"SELECT COUNT(*) FROM `{table}` WHERE status = 'done'")
    finally:
        _drop(url, table)
    if not finished or done != messages:
        return {"error": f"{done} of {messages} rows done in {wait_s:g} s"}
    return {"rate": counter.rate(), "done": done}


def baseline_queue(url: str, messages: int, wait_s: float) -> dict[str, Any]:
    table = _table("queue")
    try:
        _preload_queue(url, table, messages)
        conn = _raw(url)
        claim = (
            f"SELECT id, payload, attempts FROM `{table}` WHERE status = 'pending' "
            "AND available_at <= NOW(6) ORDER BY available_at LIMIT 100 FOR UPDATE SKIP LOCKED"
        )
        handled = 0

        def noop(item: Any) -> None:
            return None

        started = time.perf_counter()
        with conn.cursor() as cursor:
            while True:
                conn.begin()
                cursor.execute(claim)
                rows = cursor.fetchall()
                if not rows:
                    conn.commit()
                    break
                for _, payload, _ in rows:
                    noop(json.loads(payload))
                ids = [row[0] for row in rows]
                cursor.execute(
                    f"UPDATE `{table}` SET status = 'done' WHERE id IN "
                    f"({', '.join(['%s'] * len(ids))})",
                    ids,
                )
                conn.commit()
                handled += len(rows)
        elapsed = time.perf_counter() - started
        conn.close()
    finally:
        _drop(url, table)
    return {"rate": handled / elapsed, "done": handled}


def onestep_sink(url: str, messages: int, wait_s: float) -> dict[str, Any]:
    from adapters.mysql import TableSink
    from onestep import MemoryQueue, MySQLConnector, OneStepApp

    table = _table("sink")
    conn = _raw(url)
    with conn.cursor() as cursor:
        cursor.execute(SINK_DDL.format(f"`{table}`"))
    conn.close()
    try:
        counter = CountingEvent(messages)
        hit = counter.hit

        class CountingSink(TableSink):
            def publish_batch(self, items: Any) -> Any:
                refused = TableSink.publish_batch(self, items)
                for _ in range(len(items) - len(refused or ())):
                    hit()
                return refused

        connector = MySQLConnector(url)
        sink = CountingSink(connector, table, batch_size=500)
        source = MemoryQueue("bench-in")
        for n in range(messages):
            source.put(n)
        app = OneStepApp("bench", shutdown_timeout_s=5.0)

        # results in flight (and so the sink's batches) are bounded by the credits: two
        # batches' worth lets the task produce one while the sink writes the other
        @app.task(source=source, emit=sink, concurrency=1000, name="to_row")
        async def to_row(ctx: Any, n: Any) -> Any:
            return {"n": n, "label": f"item-{n}", "score": n * 0.5}

        app.start()
        try:
            finished = counter.done.wait(wait_s)
        finally:
            app.stop()
        written = _count(url, f"SELECT COUNT(*) FROM `{table}`")
    finally:
        _drop(url, table)
    if not finished or written != messages:
        return {"error": f"{written} of {messages} rows written in {wait_s:g} s"}
    return {"rate": counter.rate(), "written": written}


def baseline_sink(url: str, messages: int, wait_s: float) -> dict[str, Any]:
    table = _table("sink")
    conn = _raw(url)
    with conn.cursor() as cursor:
        cursor.execute(SINK_DDL.format(f"`{table}`"))
    try:
        sql = f"INSERT INTO `{table}` (n, label, score) VALUES (%s, %s, %s)"
        started = time.perf_counter()
        with conn.cursor() as cursor:
            for start in range(0, messages, 500):
                rows = [(n, f"item-{n}", n * 0.5) for n in range(start, min(start + 500, messages))]
                conn.begin()
                cursor.executemany(sql, rows)
                conn.commit()
        elapsed = time.perf_counter() - started
        conn.close()
    finally:
        _drop(url, table)
    return {"rate": messages / elapsed, "written": messages}


MEASURES = {
    ("onestep", "queue"): onestep_queue,
    ("baseline", "queue"): baseline_queue,
    ("onestep", "sink"): onestep_sink,
    ("baseline", "sink"): baseline_sink,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="MySQL table queue and table sink against raw pymysql; each side of "
        "each case in its own child process."
    )
    add_common_args(parser, messages=DEFAULT_MESSAGES)
    parser.add_argument("--url", default=DEFAULT_URL, help=f"server (default {DEFAULT_URL})")
    args = parse_common_args(parser, argv, CASES)
    if args.child:
        kind, case = args.child
        emit_child_result(**MEASURES[(kind, case)](args.url, args.messages, args.timeout))
        return 0
    results = run_cases(
        os.path.abspath(__file__),
        args.cases,
        repeat=args.repeat,
        child_args=[
            "--messages",
            str(args.messages),
            "--timeout",
            str(args.timeout),
            "--url",
            args.url,
        ],
        timeout_s=args.timeout + 60.0,
    )
    title = (
        f"MySQL adapter against raw pymysql, {args.messages:,} rows, best of {args.repeat}, "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPU(s)"
    )
    print_results(results, as_json=args.json, title=title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
