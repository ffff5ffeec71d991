"""A small onestep app for the Redis fault tests, run as a subprocess:

    python tests/faults/redis_worker.py URL JOBS RESULTS [--work-s S] [--claim-idle-s S]

It reads `{"id": n}` entries from stream JOBS and adds `{"id": n, "attempts": a}` to
stream RESULTS for each one it processed, so the test can count lost and duplicated
messages. It prints `ready` once its app started; SIGTERM drains it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

from onestep import MaxAttempts, OneStepApp, RedisConnector


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("jobs")
    parser.add_argument("results")
    parser.add_argument("--work-s", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--claim-idle-s", type=float, default=60.0)
    parser.add_argument("--consumer", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    server = RedisConnector(args.url, connect_timeout_s=2, socket_timeout_s=5)
    app = OneStepApp("redis-fault-worker", shutdown_timeout_s=10.0)
    work_s = args.work_s

    @app.task(
        source=server.stream(
            args.jobs,
            consumer=args.consumer,
            batch_size=50,
            poll_interval_s=0.1,
            claim_idle_s=args.claim_idle_s,
        ),
        emit=server.stream(args.results),
        retry=MaxAttempts(20, delay_s=0.5),
        concurrency=args.concurrency,
    )
    def record(ctx: Any, item: Any) -> Any:
        if work_s:
            time.sleep(work_s)  # the workload, so that entries are in flight for a while
        return {"id": item["id"], "attempts": ctx.current.attempts}

    @app.on_startup
    def ready(app: OneStepApp) -> None:
        print("ready", flush=True)

    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
