"""Apps for the flow-control fault tests, loaded by `onestep run --processes 2` workers
as targets (`tests/faults/flow_apps.py:NAME`), configured by environment variables."""

from __future__ import annotations

import os
import time
from typing import Any

from onestep import OneStepApp, SQLiteStateStore


def rate_limited_rabbit_app() -> OneStepApp:
    """RabbitMQ jobs -> results at `TEST_RATE` shared through one SQLite state file: each
    result says which worker ran it and when."""
    from onestep import RabbitMQConnector

    amqp = RabbitMQConnector(os.environ["TEST_AMQP_URL"], heartbeat_s=10, connect_timeout_s=5)
    app = OneStepApp(
        "flow-rabbit", state=SQLiteStateStore(os.environ["TEST_STATE"]), shutdown_timeout_s=10.0
    )

    @app.task(
        source=amqp.queue(os.environ["TEST_JOBS"], prefetch=10),
        emit=amqp.queue(os.environ["TEST_RESULTS"]),
        concurrency=4,
        rate_limit=os.environ["TEST_RATE"],
    )
    def record(ctx: Any, item: Any) -> Any:
        return {
            "id": item["id"],
            "worker": os.environ.get("ONESTEP_WORKER", "?"),
            "at": time.time(),
        }

    return app
