"""Priorities refused where a queue cannot honour them, before anything is sent: a
RabbitMQ queue without max_priority, a Redis stream, a table queue with priorities off;
and the checks of `priority` and `max_priority` (no server needed)."""

from __future__ import annotations

import pytest

from onestep import MySQLConnector, PostgresConnector, RabbitMQConnector
from onestep.kit import check_priority


def test_a_rabbitmq_queue_without_max_priority_refuses_a_priority_saying_why():
    amqp = RabbitMQConnector("amqp://guest:guest@127.0.0.1:1/%2F")  # never reached
    queue = amqp.queue("plain")
    with pytest.raises(ValueError, match="not declared with max_priority") as info:
        queue.put("x", priority=1)
    assert "RabbitMQ ignores the priority" in str(info.value)
    with pytest.raises(ValueError, match="max_priority=10"):
        queue.put_many(["x"], priority=0)


def test_a_rabbitmq_queue_checks_priorities_against_its_max_priority():
    amqp = RabbitMQConnector("amqp://guest:guest@127.0.0.1:1/%2F")
    queue = amqp.queue("prio", max_priority=5)
    assert queue.arguments == {"x-max-priority": 5}
    assert queue.describe()["max_priority"] == 5
    for bad in (6, -1, 2.0, True, "1"):
        with pytest.raises(ValueError, match="priority must be an int"):
            queue.put("x", priority=bad)
    # the argument given directly counts as max_priority
    assert amqp.queue("args", arguments={"x-max-priority": 3}).max_priority == 3


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_priority": 0}, "max_priority must be an int from 1 to 255"),
        ({"max_priority": 256}, "max_priority must be an int from 1 to 255"),
        ({"max_priority": "10"}, "max_priority must be an int from 1 to 255"),
        ({"max_priority": 4, "arguments": {"x-max-priority": 5}}, "disagrees with arguments"),
    ],
)
def test_a_bad_max_priority_is_refused_naming_it(options, match):
    amqp = RabbitMQConnector("amqp://guest:guest@127.0.0.1:1/%2F")
    with pytest.raises(ValueError, match=match):
        amqp.queue("prio", **options)


def test_a_redis_stream_refuses_a_priority_saying_why():
    from onestep import RedisConnector

    stream = RedisConnector("redis://127.0.0.1:1/0").stream("jobs")
    with pytest.raises(ValueError, match="cannot honour priorities"):
        stream.put("x", priority=1)
    with pytest.raises(ValueError, match="in the order they were added"):
        stream.put_many(["x"], priority=1)


@pytest.mark.parametrize("connector_class", [MySQLConnector, PostgresConnector])
def test_a_table_queue_with_priorities_off_refuses_a_priority(connector_class):
    scheme = "mysql" if connector_class is MySQLConnector else "postgresql"
    connector = connector_class(f"{scheme}://u@127.0.0.1:1/db")
    queue = connector.table_queue("jobs", priority_column=None)
    with pytest.raises(ValueError, match=r"priorities off \(priority_column=None\)"):
        queue.put("x", priority=1)
    with pytest.raises(ValueError, match="priority must be an int or None"):
        queue.put_many(["x"], priority="high")
    assert "priority" not in queue.create_table_sql()


def test_check_priority_names_the_parameter_and_the_bound():
    assert check_priority(-7) == -7
    with pytest.raises(ValueError, match=r"from 0 to 9 \(the bound\), got 10"):
        check_priority(10, maximum=9, why=" (the bound)")
    with pytest.raises(ValueError, match="priority must be an int or None, got None"):
        check_priority(None)
