"""The PostgreSQL table queue passes onestep.testing.conformance.check_queue against a real
PostgreSQL (skipped where the conformance suite is not part of the tree yet: it came to
main beside this connector; once both are in, this test runs it)."""

from __future__ import annotations

import uuid

import pytest
from postgres_support import URL, query, quote, require_server, server_problem

from onestep import PostgresConnector

conformance = pytest.importorskip("onestep.testing.conformance")

pytestmark = pytest.mark.integration


@pytest.mark.timeout(600)
def test_the_postgres_table_queue_passes_every_conformance_check() -> None:
    require_server()
    connector = PostgresConnector(URL, connect_timeout_s=5)
    table = f"t_conformance_{uuid.uuid4().hex[:10]}"
    try:
        assert conformance.check_queue(lambda: connector.table_queue(table)) == list(
            conformance.CHECKS
        )
    finally:
        connector.close()
        if server_problem() is None:
            query(f"DROP TABLE IF EXISTS {quote(table)}")
