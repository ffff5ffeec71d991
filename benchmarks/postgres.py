"""Throughput, peak memory and wake-up latency of the PostgreSQL adapter against raw
psycopg 3, same run, same machine (needs PostgreSQL at 127.0.0.1:5432, user postgres,
database test; or --url).

    python benchmarks/postgres.py                  # every case, 20,000 rows
    python benchmarks/postgres.py --json --repeat 3
    python benchmarks/postgres.py --case notify-latency

Cases:
- `queue`: 20,000 preloaded rows in a managed table -> `table_queue` (batch_size 100)
  -> a no-op async task (concurrency 100). Baseline: one psycopg connection claiming 100
  rows per statement (`UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED LIMIT
  100) RETURNING`), decoding the JSON, calling a no-op and marking them done with one
  `UPDATE ... WHERE id = ANY(...)` per batch.
- `sink`: 20,000 ints preloaded in a MemoryQueue -> an async task (concurrency 1000)
  returning a dict -> `table_sink` (batch_size 500). Baseline: psycopg `COPY ... FROM
  STDIN` of 500 rows per transaction.
- `notify-latency`: an idle `table_queue` with `poll_interval_s=5`; `--latency-puts`
  puts one after another (each once the previous one was handled and the source is
  idle again); the time from `put` to the handler's start. Baseline: a raw psycopg
  connection LISTENing on the same trigger's channel, woken by the insert, claiming the
  row with the same UPDATE ... SKIP LOCKED. Reported as median and p99 in ms; the
  ratio is the baseline's median over onestep's (1.0: as fast as raw).

The onestep rate is (N - 1) / (time of the N-th handled row - time of the first), as in
memory_pipeline.py; after it the app is stopped and the table checked (every row done,
or written). Each side runs in a fresh child process (peak RSS is its own).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import sys
import threading
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

CASES = ("queue", "sink", "notify-latency")
DEFAULT_MESSAGES = 20_000
DEFAULT_PUTS = 200
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
SINK_DDL = "CREATE TABLE {} (n bigint PRIMARY KEY, label text, score double precision)"


def _table(prefix: str) -> str:
    return f"bench_{prefix}_{uuid.uuid4().hex[:8]}"


def _raw(url: str) -> Any:
    from onestep import PostgresConnector

    return PostgresConnector(url).connect()


def _execute(url: str, sql: str) -> Any:
    with _raw(url) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchone() if cursor.description else None


def _preload_queue(url: str, table: str, messages: int) -> Any:
    from onestep import PostgresConnector

    queue = PostgresConnector(url).table_queue(table, batch_size=100, poll_interval_s=0.01)
    queue.create_table()
    queue.put_many({"n": n} for n in range(messages))
    return queue


def _claim_sql(table: str, limit: int) -> str:
    return (
        f"UPDATE \"{table}\" SET status = 'leased', "
        "leased_until = clock_timestamp() + interval '60 seconds' "
        f"WHERE id IN (SELECT id FROM \"{table}\" WHERE status = 'pending' "
        f"AND available_at <= now() ORDER BY available_at, id LIMIT {limit} "
        "FOR UPDATE SKIP LOCKED) RETURNING id, payload"
    )


# -- queue ---------------------------------------------------------------------------------


def onestep_queue(url: str, messages: int, args: argparse.Namespace) -> dict[str, Any]:
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
            finished = counter.done.wait(args.timeout)
        finally:
            app.stop()
        (done,) = _execute(url, f"SELECT count(*) FROM \"{table}\" WHERE status = 'done'")
    finally:
        _execute(url, f'DROP TABLE IF EXISTS "{table}"')
    if not finished or done != messages:
        return {"error": f"{done} of {messages} rows done in {args.timeout:g} s"}
    return {"rate": counter.rate(), "done": done}


def baseline_queue(url: str, messages: int, args: argparse.Namespace) -> dict[str, Any]:
    table = _table("queue")
    try:
        _preload_queue(url, table, messages)
        conn = _raw(url)
        claim = _claim_sql(table, 100)
        ack = f"UPDATE \"{table}\" SET status = 'done', leased_until = NULL WHERE id = ANY(%s)"
        handled = 0

        def noop(item: Any) -> None:
            return None

        started = time.perf_counter()
        while rows := conn.execute(claim).fetchall():
            for _, payload in rows:
                noop(json.loads(payload))
            conn.execute(ack, ([row[0] for row in rows],))
            handled += len(rows)
        elapsed = time.perf_counter() - started
        conn.close()
    finally:
        _execute(url, f'DROP TABLE IF EXISTS "{table}"')
    return {"rate": handled / elapsed, "done": handled}


# -- sink ----------------------------------------------------------------------------------


def onestep_sink(url: str, messages: int, args: argparse.Namespace) -> dict[str, Any]:
    from adapters.postgres import TableSink
    from onestep import MemoryQueue, OneStepApp, PostgresConnector

    table = _table("sink")
    _execute(url, SINK_DDL.format(f'"{table}"'))
    try:
        counter = CountingEvent(messages)
        hit = counter.hit

        class CountingSink(TableSink):
            def publish_batch(self, items: Any) -> Any:
                refused = TableSink.publish_batch(self, items)
                for _ in range(len(items) - len(refused or ())):
                    hit()
                return refused

        sink = CountingSink(PostgresConnector(url), table, batch_size=500)
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
            finished = counter.done.wait(args.timeout)
        finally:
            app.stop()
        (written,) = _execute(url, f'SELECT count(*) FROM "{table}"')
    finally:
        _execute(url, f'DROP TABLE IF EXISTS "{table}"')
    if not finished or written != messages:
        return {"error": f"{written} of {messages} rows written in {args.timeout:g} s"}
    return {"rate": counter.rate(), "written": written}


def baseline_sink(url: str, messages: int, args: argparse.Namespace) -> dict[str, Any]:
    table = _table("sink")
    _execute(url, SINK_DDL.format(f'"{table}"'))
    try:
        conn = _raw(url)
        started = time.perf_counter()
        for start in range(0, messages, 500):
            with (
                conn.transaction(),
                conn.cursor().copy(f'COPY "{table}" (n, label, score) FROM STDIN') as copy,
            ):
                for n in range(start, min(start + 500, messages)):
                    copy.write_row((n, f"item-{n}", n * 0.5))
        elapsed = time.perf_counter() - started
        conn.close()
    finally:
        _execute(url, f'DROP TABLE IF EXISTS "{table}"')
    return {"rate": messages / elapsed, "written": messages}


# -- notify latency ------------------------------------------------------------------------


def _latency_result(latencies: list[float]) -> dict[str, Any]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    median = statistics.median(ordered)
    return {"rate": 1.0 / median, "median_ms": median * 1000, "p99_ms": p99 * 1000}


def onestep_latency(url: str, messages: int, args: argparse.Namespace) -> dict[str, Any]:
    import queue as queue_module

    from onestep import OneStepApp, PostgresConnector

    table = _table("latency")
    connector = PostgresConnector(url)
    source = connector.table_queue(table, poll_interval_s=5)
    source.create_table()
    started: queue_module.SimpleQueue[float] = queue_module.SimpleQueue()
    app = OneStepApp("bench-latency")

    @app.task(source=source, name="mark")
    def mark(ctx: Any, item: Any) -> None:
        started.put(time.perf_counter())

    latencies = []
    pause = threading.Event()
    app.start()
    try:
        if not source.listening.wait(30):
            return {"error": "the source never listened"}
        for n in range(args.latency_puts):
            pause.wait(0.02)  # let the source settle and go idle again
            put_at = time.perf_counter()
            source.put({"n": n})
            latencies.append(started.get(timeout=30) - put_at)
    finally:
        app.stop()
        connector.run_pooled(lambda conn: conn.execute(f'DROP TABLE IF EXISTS "{table}"'))
        connector.close()
    return _latency_result(latencies)


def baseline_latency(url: str, messages: int, args: argparse.Namespace) -> dict[str, Any]:
    """A raw LISTEN loop on its own thread, woken by the trigger of the same managed
    table, claiming with the same UPDATE ... SKIP LOCKED; the producer inserts on a
    second connection."""
    table = _table("latency")
    _preload_queue(url, table, 0)  # the managed table and its NOTIFY trigger
    listener, producer = _raw(url), _raw(url)
    listener.execute(f'LISTEN "onestep:{table}"')
    claim = _claim_sql(table, 100)
    started: list[float] = []
    got = threading.Event()
    stop = threading.Event()

    def listen() -> None:
        pgconn = listener.pgconn
        while not stop.is_set():
            readable, _, _ = select.select([listener.fileno()], [], [], 0.2)
            if not readable:
                continue
            pgconn.consume_input()
            woken = False
            while pgconn.notifies() is not None:
                woken = True
            if woken and listener.execute(claim).fetchall():
                started.append(time.perf_counter())
                got.set()

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    insert = f'INSERT INTO "{table}" (payload) VALUES (%s)'
    latencies = []
    pause = threading.Event()
    try:
        for n in range(args.latency_puts):
            pause.wait(0.02)
            got.clear()
            put_at = time.perf_counter()
            producer.execute(insert, (json.dumps({"n": n}),))
            if not got.wait(30):
                return {"error": "the raw listener was not woken"}
            latencies.append(started[-1] - put_at)
    finally:
        stop.set()
        thread.join(1)
        listener.close()
        producer.execute(f'DROP TABLE IF EXISTS "{table}"')
        producer.close()
    return _latency_result(latencies)


MEASURES = {
    ("onestep", "queue"): onestep_queue,
    ("baseline", "queue"): baseline_queue,
    ("onestep", "sink"): onestep_sink,
    ("baseline", "sink"): baseline_sink,
    ("onestep", "notify-latency"): onestep_latency,
    ("baseline", "notify-latency"): baseline_latency,
}


def _print_latency(results: list[Any], as_json: bool) -> None:
    for result in results:
        sides = {}
        for side, trial in (("onestep", result.onestep), ("baseline", result.baseline)):
            # the run with the lowest median of the K repeats
            best = min(trial.extra, key=lambda r: r["median_ms"], default=None)
            sides[side] = best
        line: dict[str, Any] = {"case": result.case}
        for side, best in sides.items():
            line[f"{side}_median_ms"] = None if best is None else round(best["median_ms"], 2)
            line[f"{side}_p99_ms"] = None if best is None else round(best["p99_ms"], 2)
        ours, raw = sides["onestep"], sides["baseline"]
        line["ratio"] = (
            None if not ours or not raw else round(raw["median_ms"] / ours["median_ms"], 4)
        )
        line["peak_rss_mb"] = None if ours is None else ours["peak_rss_mb"]
        if as_json:
            print(json.dumps(line), flush=True)
        else:
            print(
                f"{result.case:<15} onestep median {line['onestep_median_ms']} ms, p99 "
                f"{line['onestep_p99_ms']} ms; raw LISTEN median {line['baseline_median_ms']} "
                f"ms, p99 {line['baseline_p99_ms']} ms; ratio {line['ratio']}"
            )
        for side, trial in (("onestep", result.onestep), ("baseline", result.baseline)):
            for error in trial.errors:
                print(f"{result.case} {side}: {error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="PostgreSQL table queue, table sink and NOTIFY wake-ups against raw "
        "psycopg; each side of each case in its own child process."
    )
    add_common_args(parser, messages=DEFAULT_MESSAGES)
    parser.add_argument("--url", default=DEFAULT_URL, help=f"server (default {DEFAULT_URL})")
    parser.add_argument(
        "--latency-puts",
        type=int,
        default=DEFAULT_PUTS,
        help=f"puts measured by notify-latency (default {DEFAULT_PUTS})",
    )
    args = parse_common_args(parser, argv, CASES)
    if args.child:
        kind, case = args.child
        emit_child_result(**MEASURES[(kind, case)](args.url, args.messages, args))
        return 0
    child_args = [
        "--messages",
        str(args.messages),
        "--timeout",
        str(args.timeout),
        "--url",
        args.url,
        "--latency-puts",
        str(args.latency_puts),
    ]
    script = os.path.abspath(__file__)
    throughput = [case for case in args.cases if case != "notify-latency"]
    results = run_cases(
        script, throughput, repeat=args.repeat, child_args=child_args, timeout_s=args.timeout + 60
    )
    title = (
        f"PostgreSQL adapter against raw psycopg, {args.messages:,} rows, best of "
        f"{args.repeat}, Python {sys.version.split()[0]}, {os.cpu_count()} CPU(s)"
    )
    if results:
        print_results(results, as_json=args.json, title=title)
    if "notify-latency" in args.cases:
        latency = run_cases(
            script,
            ["notify-latency"],
            repeat=args.repeat,
            child_args=child_args,
            timeout_s=args.timeout + 60,
        )
        _print_latency(latency, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
