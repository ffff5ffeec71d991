"""The documentation's code blocks marked `# needs: rabbitmq`, `# needs: mysql`,
`# needs: postgres` or `# needs: redis` run against the real servers (tests/unit/test_docs.py
runs the rest).

Each block runs in a fresh RabbitMQ virtual host, MariaDB or PostgreSQL database, deleted
afterwards: the block's URL (`amqp://guest:guest@127.0.0.1:5672/%2F`,
`mysql://root@127.0.0.1:3306/test`, `postgresql://postgres@127.0.0.1:5432/test`, the ones
docs/contributing.md tells writers to use) is replaced with one for it, so the
blocks can use plain names such as `jobs` without meeting each other's messages. Redis
has no such namespaces: a block's `redis://127.0.0.1:6379/0` runs on database 15, and
the keys it made there are deleted afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.docs_blocks import explain, run_block, runnable_blocks
from tests.integration import postgres_support
from tests.integration.mysql_support import query, require_server
from tests.integration.rabbitmq_support import require_broker
from tests.integration.redis_support import raw_client
from tests.integration.redis_support import require_server as require_redis

DOCS_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DOCS_MYSQL_URL = "mysql://root@127.0.0.1:3306/test"
DOCS_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
DOCS_REDIS_URL = "redis://127.0.0.1:6379/0"
#: The database a Redis block runs on (the tests' keys live in database 0).
BLOCKS_REDIS_DB = 15

pytestmark = pytest.mark.integration


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def rabbitmq_vhost() -> Iterator[str]:
    """A fresh virtual host for guest; the URL of the block's substitute."""
    require_broker()
    if shutil.which("rabbitmqctl") is None:
        reason = "rabbitmqctl is not installed: cannot make a virtual host for the block"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    vhost = f"onestep-docs-{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def mysql_database() -> Iterator[str]:
    """A fresh database; the URL of the block's substitute."""
    require_server()
    database = f"onestep_docs_{uuid.uuid4().hex[:10]}"
    query(f"CREATE DATABASE `{database}`")
    try:
        yield f"mysql://root@127.0.0.1:3306/{database}"
    finally:
        query(f"DROP DATABASE IF EXISTS `{database}`")


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database; the URL of the block's substitute."""
    postgres_support.require_server()
    database = f"onestep_docs_{uuid.uuid4().hex[:10]}"
    postgres_support.query(f'CREATE DATABASE "{database}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{database}"
    finally:
        postgres_support.query(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture
def redis_database() -> Iterator[str]:
    """Database 15; the keys a block made there are deleted afterwards (the ones it
    found are kept)."""
    require_redis()
    client = raw_client()
    client.select(BLOCKS_REDIS_DB)
    before = set(client.scan_iter())
    try:
        yield f"redis://127.0.0.1:6379/{BLOCKS_REDIS_DB}"
    finally:
        made = set(client.scan_iter()) - before
        if made:
            client.delete(*made)
        client.close()


@pytest.mark.parametrize(
    "block",
    runnable_blocks(needing=frozenset({"rabbitmq", "mysql", "postgres", "redis"})),
    ids=lambda b: b.id,
)
def test_block_runs_against_the_servers(block, request, tmp_path):
    substitutions = {}
    if "rabbitmq" in block.needs:
        substitutions[DOCS_AMQP_URL] = request.getfixturevalue("rabbitmq_vhost")
    if "mysql" in block.needs:
        substitutions[DOCS_MYSQL_URL] = request.getfixturevalue("mysql_database")
    if "postgres" in block.needs:
        substitutions[DOCS_POSTGRES_URL] = request.getfixturevalue("postgres_database")
    if "redis" in block.needs:
        substitutions[DOCS_REDIS_URL] = request.getfixturevalue("redis_database")
    for url in substitutions:
        assert url in block.code, f"{block.id} does not use the docs' URL {url}"
    completed = run_block(block, tmp_path, substitutions)
    assert completed.returncode == 0, explain(block, completed)
