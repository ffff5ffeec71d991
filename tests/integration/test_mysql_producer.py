"""Producing into the MySQL table queue against a real MariaDB: `put` and `put_many` with
meta from many threads and without a running app, the table made on first use (also
from a startup hook), bodies that are not JSON refused before anything is written,
delays, async `publish`, and the queue as a task's emit sink.
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
from collections import Counter
from typing import Any

import pytest
from mysql_support import TIMEOUT, connector, mysql_url, query, quote, statuses, tables

from actors import EncodeError
from onestep import MemoryQueue, OneStepApp
from onestep.kit import MessageTooLarge
from tests.helpers import running

pytestmark = pytest.mark.integration
__all__ = ["connector", "mysql_url", "tables"]  # fixtures used by name

THREADS, PER_THREAD = 4, 500


def consume(source: Any, count: int, concurrency: int = 8) -> list[tuple[Any, dict[str, Any]]]:
    """Run one app on `source` until `count` messages succeeded; (payload, meta) of each."""
    seen: queue.Queue[tuple[Any, dict[str, Any]]] = queue.Queue()
    done = threading.Event()
    succeeded = Counter[str]()
    app = OneStepApp("consumer")

    @app.on_event
    def on_event(event: Any) -> None:
        if event.kind == "succeeded":
            succeeded["n"] += 1
            if succeeded["n"] >= count:
                done.set()

    @app.task(source=source, concurrency=concurrency)
    def record(ctx: Any, item: Any) -> None:
        seen.put((item, dict(ctx.current.meta)))

    with running(app):
        assert done.wait(60), f"{succeeded['n']} of {count} messages in 60 s"
    return [seen.get_nowait() for _ in range(seen.qsize())]


def in_threads(target: Any) -> None:
    errors: list[BaseException] = []

    def run(thread: int) -> None:
        try:
            target(thread)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not errors, errors


def test_put_from_four_threads_without_an_app_then_one_app_consumes_them(connector, tables):
    jobs = tables("put")
    producer = connector.table_queue(jobs)  # the table does not exist yet
    ids: list[int] = []

    def produce(thread: int) -> None:
        for i in range(PER_THREAD):
            ids.append(producer.put({"t": thread, "i": i}, {"from": thread, "seq": i}))

    in_threads(produce)
    total = THREADS * PER_THREAD
    assert len(set(ids)) == total
    assert statuses(jobs) == {"pending": total}
    consumed = consume(connector.table_queue(jobs, poll_interval_s=0.05), total)
    assert len(consumed) == total
    assert {(item["t"], item["i"]) for item, _ in consumed} == {
        (t, i) for t in range(THREADS) for i in range(PER_THREAD)
    }
    for item, meta in consumed:
        assert meta["from"] == item["t"] and meta["seq"] == item["i"]
    assert sorted(meta["id"] for _, meta in consumed) == sorted(ids)
    assert statuses(jobs) == {"done": total}


def test_put_many_from_four_threads_without_an_app_then_one_app_consumes_them(connector, tables):
    jobs = tables("putmany")
    producer = connector.table_queue(jobs)
    counts: list[int] = []

    def produce(thread: int) -> None:
        bodies = ({"t": thread, "i": i} for i in range(PER_THREAD))
        counts.append(producer.put_many(bodies, {"from": thread}))

    in_threads(produce)
    total = THREADS * PER_THREAD
    assert counts == [PER_THREAD] * THREADS
    consumed = consume(connector.table_queue(jobs, poll_interval_s=0.05), total)
    assert len({(item["t"], item["i"]) for item, _ in consumed}) == total == len(consumed)
    assert all(meta["from"] == item["t"] for item, meta in consumed)
    assert len({meta["id"] for _, meta in consumed}) == total


def test_put_in_a_startup_hook_on_a_new_table_that_is_the_tasks_source(connector, tables):
    jobs = tables("startup")
    source = connector.table_queue(jobs, poll_interval_s=0.05)
    got: queue.Queue[tuple[Any, dict[str, Any]]] = queue.Queue()
    app = OneStepApp("startup-put")

    @app.on_startup
    def enqueue(app: OneStepApp) -> None:
        source.put({"n": 1}, {"by": "startup"})  # before the source opened
        source.put_many([{"n": 2}, {"n": 3}])

    @app.task(source=source)
    def handle(ctx: Any, item: Any) -> None:
        got.put((item, dict(ctx.current.meta)))

    with running(app):
        results = [got.get(timeout=TIMEOUT) for _ in range(3)]
    first = next(meta for item, meta in results if item == {"n": 1})
    assert first["by"] == "startup"
    assert sorted(item["n"] for item, _ in results) == [1, 2, 3]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (object(), "not JSON serializable"),
        (math.nan, "Out of range float values are not JSON compliant"),
        ({"x": [math.inf]}, "Out of range float"),
        ({"when": {1, 2}}, "not JSON serializable"),
    ],
    ids=["object", "nan", "nested-infinity", "set"],
)
def test_a_body_that_is_not_json_raises_encode_error_and_writes_nothing(
    connector, tables, body, problem
):
    jobs = tables("encode")
    producer = connector.table_queue(jobs)
    producer.create_table()
    with pytest.raises(EncodeError, match=f"body is not valid JSON: .*{problem}"):
        producer.put(body)
    with pytest.raises(EncodeError, match=f"bodies\\[2\\] is not valid JSON: .*{problem}"):
        producer.put_many([{"ok": 1}, {"ok": 2}, body, {"ok": 4}])
    with pytest.raises(EncodeError, match="meta is not valid JSON"):
        producer.put({"ok": 1}, {"bad": body})
    assert query(f"SELECT COUNT(*) FROM {quote(jobs)}") == [(0,)]


def test_a_body_over_max_allowed_packet_is_refused_naming_both_sizes(connector, tables):
    jobs = tables("oversize")
    producer = connector.table_queue(jobs)
    producer.create_table()
    (packet,) = query("SELECT @@max_allowed_packet")[0]
    body = "x" * (50 * 1024 * 1024)  # the server would say "(2006, server has gone away)"
    with pytest.raises(MessageTooLarge, match="max_allowed_packet") as raised:
        producer.put(body)
    assert raised.value.limit == packet
    assert raised.value.size > len(body)
    assert f"over the limit of {packet:,} bytes" in str(raised.value)
    assert f"table {jobs!r}: body (as an INSERT) is {raised.value.size:,} bytes" in str(
        raised.value
    )
    with pytest.raises(MessageTooLarge, match=r"bodies\[1\]"):
        producer.put_many([{"n": 0}, body, {"n": 2}])
    # a body whose JSON is half the limit but whose INSERT is more (JSON writes a quote
    # as \", and the statement escapes both characters) is refused too
    with pytest.raises(MessageTooLarge):
        producer.put('"' * (packet // 4 + 1))
    assert query(f"SELECT COUNT(*) FROM {quote(jobs)}") == [(0,)]
    producer.put({"next": "works"})
    assert query(f"SELECT payload FROM {quote(jobs)}") == [('{"next":"works"}',)]


def test_bad_producer_arguments_name_their_parameter(connector, tables):
    producer = connector.table_queue(tables("args"))
    for delay in (-1, math.nan, 31 * 86_400, "soon"):
        with pytest.raises(ValueError, match="delay_s"):
            producer.put({"n": 1}, delay_s=delay)
        with pytest.raises(ValueError, match="delay_s"):
            producer.put_many([{"n": 1}], delay_s=delay)
    with pytest.raises(TypeError, match="meta must be a dict or None, got list"):
        producer.put({"n": 1}, ["not", "a", "dict"])
    with pytest.raises(TypeError, match="bodies must be an iterable"):
        producer.put_many("abc")
    no_meta = connector.table_queue(tables("args"), meta_column=None)
    with pytest.raises(ValueError, match="no meta column"):
        no_meta.put({"n": 1}, {"k": "v"})


def test_delay_s_makes_the_row_due_later_by_the_servers_clock(connector, tables):
    jobs = tables("delay")
    producer = connector.table_queue(jobs)
    later = producer.put({"n": 1}, delay_s=3600)
    producer.put_many([{"n": 2}, {"n": 3}], delay_s=7200)
    now = producer.put({"n": 0})
    rows = dict(
        query(
            f"SELECT id, TIMESTAMPDIFF(SECOND, NOW(6), available_at) FROM {quote(jobs)}",
        )
    )
    assert 3590 <= rows[later] <= 3600
    assert rows[now] <= 0
    assert all(7190 <= rows[row_id] <= 7200 for row_id in rows if row_id not in (later, now))
    worker = connector.table_queue(jobs)
    worker.open()
    try:
        [due] = worker.fetch(10)
        assert due.handle == now
        worker.ack(due)
    finally:
        worker.close()


def test_publish_from_async_code_carries_meta(connector, tables):
    jobs = tables("publish")
    producer = connector.table_queue(jobs)

    async def produce() -> list[int]:
        return list(await asyncio.gather(*(producer.publish({"n": n}, {"k": n}) for n in range(5))))

    ids = asyncio.run(produce())
    assert len(set(ids)) == 5
    meta = dict(query(f"SELECT id, meta FROM {quote(jobs)}"))
    assert [meta[row_id] for row_id in ids] == [f'{{"k":{n}}}' for n in range(5)]


def test_the_queue_as_an_emit_sink_feeds_another_task_and_refuses_one_result(connector, tables):
    """A TableQueue that is one task's emit and another task's source: the SinkActor
    opens it too (on its own thread) without disturbing the source, its batches are
    written together, and a result that is not JSON fails alone (kind encode)."""
    jobs = tables("chain")
    chained = connector.table_queue(jobs, poll_interval_s=0.05)
    first = MemoryQueue("numbers")
    for n in range(20):
        first.put(n)
    dead = MemoryQueue("dead")
    seen: queue.Queue[Any] = queue.Queue()
    app = OneStepApp("chain")

    @app.task(source=first, emit=chained, dead_letter=dead, concurrency=4)
    def produce(ctx: Any, n: int) -> Any:
        return {"n": n, "x": math.nan if n == 7 else n / 2}

    @app.task(source=chained, concurrency=4)
    def consume_it(ctx: Any, item: Any) -> None:
        seen.put(item)

    with running(app):
        record = dead.get(timeout=TIMEOUT)
        results = [seen.get(timeout=TIMEOUT) for _ in range(19)]
    assert record["failure"]["kind"] == "encode"
    assert record["payload"] == 7
    assert sorted(item["n"] for item in results) == [n for n in range(20) if n != 7]
    assert statuses(jobs) == {"done": 19}
