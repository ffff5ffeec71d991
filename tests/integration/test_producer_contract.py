"""The producer contract every built-in queue keeps (MemoryQueue, RabbitMQ queue, MySQL
table queue, PostgreSQL table queue, Redis stream), run with the same inputs against each:
bad `put` arguments raise the same exception types before anything is sent (TypeError for
a meta that is not a mapping and for `bodies` that are not an iterable, EncodeError for
what JSON cannot hold, MessageTooLarge for a body over the destination's limit), and
`put_many` of more messages than one insert chunk (or pipeline) returns the full count."""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from adapters.redis._stream import PUT_CHUNK
from onestep import (
    EncodeError,
    MemoryQueue,
    MySQLConnector,
    PostgresConnector,
    RabbitMQConnector,
    RedisConnector,
)
from onestep.kit import MessageTooLarge
from tests.integration import postgres_support
from tests.integration.mysql_support import URL, mysql_url, tables
from tests.integration.rabbitmq_support import AMQP_URL, Rabbit, rabbit_fixture  # noqa: F401
from tests.integration.redis_support import URL as REDIS_URL
from tests.integration.redis_support import Keys, keys_fixture  # noqa: F401

__all__ = ["mysql_url", "tables"]  # fixtures used by name

pytestmark = pytest.mark.integration

QUEUES = ["memory", "rabbitmq", "mysql", "postgres", "redis"]
#: The body size limit the RabbitMQ, PostgreSQL and Redis queues are given here: MariaDB's
#: default max_allowed_packet, so that one oversize body is refused by all three.
LIMIT = 16 * 1024 * 1024


def _deep(levels: int) -> Any:
    nested: Any = []
    for _ in range(levels):
        nested = [nested]
    return nested


class Queue:
    """A queue under test and how to count what it holds."""

    def __init__(self, kind: str, queue: Any, depth: Callable[[], int]) -> None:
        self.kind = kind
        self.queue = queue
        self.depth = depth


@pytest.fixture(params=QUEUES)
def under_test(request: pytest.FixtureRequest) -> Iterator[Queue]:
    kind = request.param
    if kind == "memory":
        memory = MemoryQueue("contract")
        yield Queue(kind, memory, memory.qsize)
    elif kind == "rabbitmq":
        rabbit: Rabbit = request.getfixturevalue("rabbit")
        amqp = RabbitMQConnector(AMQP_URL, max_message_bytes=LIMIT)
        name = rabbit.name("contract")
        rabbit.declare(name)
        yield Queue(kind, amqp.queue(name), lambda: rabbit.count(name))
        amqp.close()
    elif kind == "postgres":
        postgres_support.require_server()
        pg = PostgresConnector(postgres_support.URL, max_message_bytes=LIMIT)
        name = f"t_contract_{uuid.uuid4().hex[:10]}"
        pg_table = pg.table_queue(name)
        pg_table.create_table()
        yield Queue(kind, pg_table, pg_table.depth)
        pg.close()
        postgres_support.query(f"DROP TABLE IF EXISTS {postgres_support.quote(name)}")
    elif kind == "redis":
        keys: Keys = request.getfixturevalue("keys")
        server = RedisConnector(REDIS_URL, connect_timeout_s=5, max_message_bytes=LIMIT)
        stream = server.stream(keys.name("contract"))
        yield Queue(kind, stream, stream.depth)
        server.close()
    else:
        made: Callable[[str], str] = request.getfixturevalue("tables")
        db = MySQLConnector(URL, connect_timeout_s=5)
        table = db.table_queue(made("contract"))
        table.create_table()
        yield Queue(kind, table, table.depth)
        db.close()


# (label, call, exception type) run against every queue: nothing may be put by any
BAD_PUTS: list[tuple[str, Callable[[Any], Any], type[BaseException]]] = [
    ("meta-list", lambda q: q.put({"n": 1}, ["not", "a", "dict"]), TypeError),
    ("meta-str", lambda q: q.put({"n": 1}, "trace=1"), TypeError),
    ("meta-many-list", lambda q: q.put_many([{"n": 1}], meta=[1]), TypeError),
    ("meta-surrogate", lambda q: q.put({"n": 1}, {"s": "a\ud800b"}), EncodeError),
    ("meta-nan", lambda q: q.put({"n": 1}, {"x": math.nan}), EncodeError),
    ("meta-object", lambda q: q.put({"n": 1}, {"o": object()}), EncodeError),
    ("meta-deep", lambda q: q.put({"n": 1}, {"d": _deep(100_000)}), EncodeError),
    ("meta-int-key", lambda q: q.put({"n": 1}, {1: "one"}), EncodeError),
    ("bodies-str", lambda q: q.put_many("abc"), TypeError),
    ("bodies-int", lambda q: q.put_many(5), TypeError),
    ("bodies-dict", lambda q: q.put_many({"n": 1}), TypeError),
]

# Bodies JSON cannot hold (or too large): the queues that send bytes refuse them. A
# MemoryQueue carries any Python object from one stage to another in one process, so it
# takes them (documented in docs/guides/memory.md).
BAD_BODIES: list[tuple[str, Callable[[], Any], type[BaseException]]] = [
    ("surrogate", lambda: "lone \udc80 surrogate", EncodeError),
    ("nan", lambda: {"x": math.nan}, EncodeError),
    ("infinity", lambda: math.inf, EncodeError),
    ("object", lambda: {"o": object()}, EncodeError),
    ("deep", lambda: _deep(100_000), EncodeError),
    ("oversize", lambda: "x" * (LIMIT + 1), MessageTooLarge),
]


@pytest.mark.parametrize(("label", "call", "error"), BAD_PUTS, ids=[b[0] for b in BAD_PUTS])
def test_bad_puts_raise_the_same_errors_on_every_queue(
    under_test: Queue, label: str, call: Callable[[Any], Any], error: type[BaseException]
) -> None:
    with pytest.raises(error) as raised:
        call(under_test.queue)
    assert type(raised.value) is error or issubclass(type(raised.value), error)
    assert under_test.depth() == 0
    under_test.queue.put({"n": "after"})  # the queue still works
    assert under_test.depth() == 1


@pytest.mark.parametrize(("label", "make", "error"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bodies_json_cannot_hold_are_refused_by_every_queue_that_sends_bytes(
    under_test: Queue, label: str, make: Callable[[], Any], error: type[BaseException]
) -> None:
    body = make()
    if under_test.kind == "memory":
        under_test.queue.put(body)  # carried as the object it is
        assert under_test.queue.get(timeout=1) is body
        return
    with pytest.raises(error) as raised:
        under_test.queue.put(body)
    assert isinstance(raised.value, EncodeError)
    with pytest.raises(error):
        under_test.queue.put_many([{"n": 1}, body, {"n": 3}])
    assert under_test.depth() == 0  # nothing of the batch was written
    if error is MessageTooLarge:
        assert f"{LIMIT + 1:,}" in str(raised.value) or f"{LIMIT:,}" in str(raised.value)
        assert raised.value.limit <= LIMIT  # type: ignore[attr-defined]
    under_test.queue.put({"n": "after"})
    assert under_test.depth() == 1


def test_put_many_of_more_than_one_insert_chunk_returns_the_full_count(
    under_test: Queue,
) -> None:
    # 1,500 rows: more than one MySQL insert chunk (1,000), more than a bounded
    # MemoryQueue's room (its producer waits for a consumer for the rest); 5,001 on
    # PostgreSQL, whose chunk (one unnest array) is 5,000; on Redis, more than one
    # pipeline (PUT_CHUNK entries)
    count = {"postgres": 5001, "redis": PUT_CHUNK + 1}.get(under_test.kind, 1500)
    if under_test.kind == "memory":
        bounded = MemoryQueue("bounded", maxsize=1000)
        taken: list[Any] = []
        consumer = threading.Thread(
            target=lambda: taken.extend(bounded.get(timeout=30) for _ in range(count))
        )
        consumer.start()
        assert bounded.put_many({"n": n} for n in range(count)) == count
        consumer.join(30)
        assert [item["n"] for item in taken] == list(range(count))
        return
    assert under_test.queue.put_many({"n": n} for n in range(count)) == count
    assert under_test.depth() == count
