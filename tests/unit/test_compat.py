"""onestep.compat: upstream's connector names with their keywords and defaults, imported
lazily (no pika, pymysql, psycopg or redis until a name is used); options onestep does
not have are refused by name. No server is contacted: construction makes no connection."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

DRIVERS = ("pika", "pymysql", "psycopg", "psycopg_pool", "redis")


def test_importing_compat_imports_no_driver() -> None:
    code = (
        "import sys, onestep.compat, onestep\n"
        f"print(sorted(m for m in {DRIVERS!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_rabbitmq_queue_takes_upstream_keywords_and_speaks_upstream_format() -> None:
    from onestep.compat import RabbitMQConnector

    amqp = RabbitMQConnector("amqp://guest:guest@localhost/", options={"heartbeat": 20})
    queue = amqp.queue(
        "jobs", exchange="jobs.events", routing_key="jobs.created", prefetch=50, batch_size=10
    )
    assert queue.wire_format == "upstream"
    assert (queue.exchange, queue.routing_key, queue.prefetch) == (
        "jobs.events",
        "jobs.created",
        50,
    )
    assert amqp.heartbeat_s == 20
    assert amqp.queue("plain").routing_key == "plain"
    assert amqp.queue("own", wire_format="onestep").wire_format == "onestep"
    asyncio.run(_await(amqp.close()))  # upstream awaits close(); a plain call works too
    amqp.close()


async def _await(value: object) -> None:
    await value  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"exclusive": True}, "exclusive"),
        ({"auto_delete": True}, "auto_delete"),
        ({"bind": False}, "bind"),
        ({"exchange_arguments": {"x": 1}}, "exchange_arguments"),
        ({"routing_key": "other"}, "routing_key"),
    ],
)
def test_rabbitmq_options_onestep_lacks_are_refused_by_name(
    kwargs: dict[str, object], named: str
) -> None:
    from onestep.compat import RabbitMQConnector

    with pytest.raises(ValueError, match=named):
        RabbitMQConnector("amqp://guest:guest@localhost/").queue("q", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ssl_options"):
        RabbitMQConnector("amqp://guest:guest@localhost/", options={"ssl_options": {}})


def test_redis_stream_has_upstream_defaults() -> None:
    from onestep.compat import RedisConnector

    redis = RedisConnector("redis://localhost:6379")
    stream = redis.stream("jobs", group="workers", batch_size=10, poll_interval_s=0.5, block_ms=5)
    assert (stream.start_id, stream.wire_format, stream.group) == ("$", "upstream", "workers")
    assert redis.stream("s").poll_interval_s == 1.0
    with pytest.raises(ValueError, match="create_group"):
        redis.stream("s", create_group=False)


def test_mysql_connector_takes_upstream_dsns_and_keywords() -> None:
    from onestep.compat import MySQLConnector

    db = MySQLConnector("mysql+aiomysql://root:pw@127.0.0.1:3306/app", pool_pre_ping=True)
    assert (db.host, db.database, db.user) == ("127.0.0.1", "app", "root")
    queue = db.table_queue(
        table="orders",
        key="id",
        where="status = 0",
        claim={"status": 9},
        ack={"status": 1},
        nack={"status": 0},
        batch_size=100,
    )
    assert type(queue).__name__ == "BusinessTable"
    assert type(db.table_sink(table="out", mode="upsert", keys=("id",))).__name__ == "TableSink"
    with pytest.raises(ValueError, match="update_expr"):
        db.table_sink(table="out", update_expr={"n": "n + 1"})
    with pytest.raises(ValueError, match="key_column"):
        db.state_store(key_column="k")
    with pytest.raises(NotImplementedError, match="binlog"):
        db.binlog(server_id=1)
    with pytest.raises(ValueError, match="connect_args"):
        MySQLConnector("mysql://root@127.0.0.1/app", connect_args={})


def test_postgres_connector_takes_upstream_dsns() -> None:
    from onestep.compat import PostgresConnector

    db = PostgresConnector("postgresql+asyncpg://postgres@127.0.0.1:5432/test", echo=False)
    assert (db.host, db.database) == ("127.0.0.1", "test")
    assert type(db.table_sink(table="out")).__name__ == "TableSink"


def test_an_unknown_name_is_an_attribute_error() -> None:
    import onestep.compat

    with pytest.raises(AttributeError, match="SQSConnector"):
        onestep.compat.SQSConnector  # noqa: B018
