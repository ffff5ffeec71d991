"""Every built-in broker queue passes onestep.testing.conformance.check_queue against its
real server (MemoryQueue passes it in tests/unit/test_conformance.py).

A backend is one entry of QUEUES: a context manager that skips (or fails under CI) without
its server, yields `make_queue` on a uniquely named queue, and removes that queue after.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from mysql_support import URL as MYSQL_URL
from mysql_support import query, quote, require_server, server_problem
from postgres_support import URL as POSTGRES_URL
from postgres_support import query as postgres_query
from postgres_support import quote as postgres_quote
from postgres_support import require_server as require_postgres
from postgres_support import server_problem as postgres_problem
from rabbitmq_support import AMQP_URL, Rabbit, require_broker
from redis_support import URL as REDIS_URL
from redis_support import Keys
from redis_support import require_server as require_redis

from onestep import MySQLConnector, PostgresConnector, RabbitMQConnector, RedisConnector
from onestep.testing.conformance import CHECKS, PRIORITY_CHECK, check_queue, delay_for

pytestmark = pytest.mark.integration

MakeQueue = Callable[[], Any]


@contextlib.contextmanager
def rabbitmq_queue() -> Iterator[MakeQueue]:
    """`RabbitMQConnector(url).queue(name)`; the queue and its delay queue deleted after."""
    require_broker()
    rabbit = Rabbit()
    connector = RabbitMQConnector(AMQP_URL)
    name = rabbit.name("conformance")
    rabbit.delayed(name, delay_for(connector.queue(name)))
    try:
        yield lambda: connector.queue(name)
    finally:
        connector.close()
        rabbit.close()


@contextlib.contextmanager
def mysql_table_queue() -> Iterator[MakeQueue]:
    """`MySQLConnector(url).table_queue(table)`; the table dropped after."""
    require_server()
    connector = MySQLConnector(MYSQL_URL, connect_timeout_s=5)
    table = f"t_conformance_{uuid.uuid4().hex[:10]}"
    try:
        yield lambda: connector.table_queue(table)
    finally:
        connector.close()
        if server_problem() is None:
            query(f"DROP TABLE IF EXISTS {quote(table)}")


@contextlib.contextmanager
def postgres_table_queue() -> Iterator[MakeQueue]:
    """`PostgresConnector(url).table_queue(table)`; the table dropped after."""
    require_postgres()
    connector = PostgresConnector(POSTGRES_URL, connect_timeout_s=5)
    table = f"t_conformance_{uuid.uuid4().hex[:10]}"
    try:
        yield lambda: connector.table_queue(table)
    finally:
        connector.close()
        if postgres_problem() is None:
            postgres_query(f"DROP TABLE IF EXISTS {postgres_quote(table)}")


@contextlib.contextmanager
def redis_stream() -> Iterator[MakeQueue]:
    """`RedisConnector(url).stream(name)`; the stream and its delay set deleted after."""
    require_redis()
    keys = Keys()
    connector = RedisConnector(REDIS_URL)
    name = keys.name("conformance")
    try:
        yield lambda: connector.stream(name, poll_interval_s=0.1)
    finally:
        connector.close()
        keys.cleanup()


#: Every built-in queue on a real server; a new backend adds its context manager here.
QUEUES: dict[str, Callable[[], contextlib.AbstractContextManager[MakeQueue]]] = {
    "rabbitmq": rabbitmq_queue,
    "mysql-table": mysql_table_queue,
    "postgres-table": postgres_table_queue,
    "redis-stream": redis_stream,
}


@pytest.fixture(params=sorted(QUEUES))
def make_queue(request: pytest.FixtureRequest) -> Iterator[MakeQueue]:
    with QUEUES[request.param]() as make:
        yield make


# A passing run takes 3-10 s; a failing one may wait timeout_s at several steps before
# it reports every failed check, which pytest's default 60 s would cut short.
@pytest.mark.timeout(600)
def test_the_queue_passes_every_conformance_check(make_queue: MakeQueue) -> None:
    assert check_queue(make_queue) == list(CHECKS)


@contextlib.contextmanager
def rabbitmq_priority_queue() -> Iterator[MakeQueue]:
    """`RabbitMQConnector(url).queue(name, max_priority=3)`, deleted after."""
    require_broker()
    rabbit = Rabbit()
    connector = RabbitMQConnector(AMQP_URL)
    name = rabbit.name("conformance-priority")
    rabbit.delayed(name, delay_for(connector.queue(name)))
    try:
        yield lambda: connector.queue(name, max_priority=3)
    finally:
        connector.close()
        rabbit.close()


#: The queues that honour priorities: they pass the opt-in `priority` check too.
PRIORITY_QUEUES = {
    "rabbitmq-max-priority": rabbitmq_priority_queue,
    "mysql-table": mysql_table_queue,
    "postgres-table": postgres_table_queue,
}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", sorted(PRIORITY_QUEUES))
def test_a_queue_with_priorities_passes_the_priority_check(kind: str) -> None:
    with PRIORITY_QUEUES[kind]() as make_queue:
        assert check_queue(make_queue, priorities=True) == [*CHECKS, PRIORITY_CHECK]
