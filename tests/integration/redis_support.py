"""Fixtures and helpers for the Redis tests (integration and faults): the server check
(skip on a laptop, fail under CI), unique stream and key names deleted afterwards, and a
raw redis-py client to inspect what the connector wrote.

Imported by tests/integration/test_redis*.py and tests/faults/test_redis_faults.py; kept
out of conftest.py so that it touches no other suite.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.helpers import skip_or_fail
from tests.helpers import wait_until as wait_until  # the tests import it from here

URL = os.environ.get("ONESTEP_REDIS_URL", "redis://127.0.0.1:6379/0")
TIMEOUT = 20.0


def raw_client() -> Any:
    return redis.Redis.from_url(URL, socket_connect_timeout=3, socket_timeout=10)


def server_problem() -> str | None:
    """None if Redis answers, else why not."""
    client = raw_client()
    try:
        client.ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return None


def require_server() -> None:
    """Skip when Redis is unreachable; fail instead when CI is set."""
    problem = server_problem()
    if problem is None:
        return
    skip_or_fail(f"Redis is not reachable at {URL}: {problem}")


class Keys:
    """A raw client for the test thread, and the keys a test made (deleted after it)."""

    def __init__(self) -> None:
        self.client = raw_client()
        self.made: list[str] = []

    def name(self, label: str) -> str:
        """A stream name unique to this test; it and its delay set are deleted after."""
        name = f"onestep-test-{label}-{uuid.uuid4().hex[:10]}"
        self.made += [name, f"{name}:delayed"]
        return name

    def prefix(self, label: str) -> str:
        """A state-store prefix unique to this test; its keys are deleted after."""
        prefix = f"onestep-test-{label}-{uuid.uuid4().hex[:10]}:"
        self.made.append(prefix + "*")
        return prefix

    def pending(self, stream: str, group: str = "onestep") -> int:
        """Entries of `stream` read by `group` and not acked."""
        if not self.client.exists(stream):
            return 0
        return int(self.client.xpending(stream, group)["pending"])

    def entries(self, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
        return list(self.client.xrange(stream))

    def cleanup(self) -> None:
        for key in self.made:
            if key.endswith("*"):
                for found in self.client.scan_iter(match=key):
                    self.client.delete(found)
            else:
                self.client.delete(key)
        self.client.close()


@pytest.fixture(name="keys")
def keys_fixture() -> Iterator[Keys]:
    require_server()
    keys = Keys()
    yield keys
    if server_problem() is None:
        keys.cleanup()


@pytest.fixture(name="redis_connector")
def redis_connector_fixture(keys: Keys) -> Iterator[Any]:
    from onestep import RedisConnector

    connector = RedisConnector(URL, connect_timeout_s=5)
    yield connector
    connector.close()
