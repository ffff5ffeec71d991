"""A small onestep app for the RabbitMQ fault tests, run as a subprocess:

    python tests/faults/rabbitmq_worker.py URL JOBS RESULTS [--work-s SECONDS]

It reads `{"id": n}` messages from JOBS and publishes `{"id": n}` to RESULTS for each one
it processed, so the test can count lost and duplicated messages. SIGTERM drains it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

from onestep import MaxAttempts, OneStepApp, RabbitMQConnector


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("jobs")
    parser.add_argument("results")
    parser.add_argument("--work-s", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    amqp = RabbitMQConnector(args.url, heartbeat_s=10, connect_timeout_s=5)
    app = OneStepApp("fault-worker", shutdown_timeout_s=10.0)
    work_s = args.work_s

    @app.task(
        source=amqp.queue(args.jobs, prefetch=50),
        emit=amqp.queue(args.results),
        retry=MaxAttempts(20, delay_s=0.5),
        concurrency=args.concurrency,
    )
    def record(ctx: Any, item: Any) -> Any:
        if work_s:
            time.sleep(work_s)  # the workload, so that messages are in flight for a while
        return {"id": item["id"]}

    @app.on_startup
    def ready(app: OneStepApp) -> None:
        print("ready", flush=True)

    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
