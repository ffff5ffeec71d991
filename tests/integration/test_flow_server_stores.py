"""Flow control kept in the server state stores: the token bucket (Redis: one script on
the server's clock; PostgreSQL and MySQL: `update` in one transaction), per-key slots and
dedup keys hold across two connectors, as across two processes or hosts."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from onestep import MySQLConnector, PostgresConnector, RedisConnector
from tests.flow_support import check_shared_bucket, check_shared_dedup, check_shared_slots
from tests.integration import mysql_support, postgres_support, redis_support

pytestmark = pytest.mark.integration


def _redis_stores() -> tuple[list[Any], Any]:
    redis_support.require_server()
    prefix = f"onestep-test-flow-{uuid.uuid4().hex[:8]}:"
    connectors = [RedisConnector(redis_support.URL), RedisConnector(redis_support.URL)]
    stores = [c.state_store(prefix) for c in connectors]

    def cleanup() -> None:
        client = redis_support.raw_client()
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
        for connector in connectors:
            connector.close()

    return stores, cleanup


def _postgres_stores() -> tuple[list[Any], Any]:
    postgres_support.require_server()
    table = f"onestep_test_flow_{uuid.uuid4().hex[:8]}"
    connectors = [PostgresConnector(postgres_support.URL) for _ in range(2)]
    stores = [c.state_store(table) for c in connectors]

    def cleanup() -> None:
        postgres_support.query(f"DROP TABLE IF EXISTS {table}")
        for connector in connectors:
            connector.close()

    return stores, cleanup


def _mysql_stores() -> tuple[list[Any], Any]:
    mysql_support.require_server()
    table = f"onestep_test_flow_{uuid.uuid4().hex[:8]}"
    connectors = [MySQLConnector(mysql_support.URL) for _ in range(2)]
    stores = [c.state_store(table) for c in connectors]

    def cleanup() -> None:
        stores[0]._run(lambda cursor: cursor.execute(f"DROP TABLE IF EXISTS `{table}`", ()))
        for connector in connectors:
            connector.close()

    return stores, cleanup


@pytest.fixture(params=["redis", "postgres", "mysql"])
def stores(request: Any) -> Any:
    make = {"redis": _redis_stores, "postgres": _postgres_stores, "mysql": _mysql_stores}
    made, cleanup = make[request.param]()
    yield made
    cleanup()


def test_bucket_is_shared(stores: list[Any]) -> None:
    check_shared_bucket(stores, "flow:rate")


def test_slots_are_shared(stores: list[Any]) -> None:
    check_shared_slots(stores, "flow:slot:")


def test_dedup_keys_are_shared(stores: list[Any]) -> None:
    check_shared_dedup(stores, "flow:dedup:")
