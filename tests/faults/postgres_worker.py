"""A onestep worker process on a PostgreSQL table queue, for the PostgreSQL integration and fault
tests. It logs "ready <pid>" once started; per execution of item {"n": n} it logs
"start <n> <pid>" when the handler starts,
"end <n> <pid> <lease_lost>" when it returns (`work` mode), and "succeeded <n> <pid>
<lease_lost>" from the succeeded event, each with one os.write (which a SIGKILL cannot
tear); <lease_lost> is 1 if the delivery's meta says its lease was lost. It runs until
SIGTERM (app.run(): graceful shutdown, exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from onestep import OneStepApp, PostgresConnector


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--lease-s", type=float, default=60.0)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--work-s", type=float, default=0.0)
    parser.add_argument("--mode", choices=("work", "block"), default="work")
    parser.add_argument("--shutdown-timeout-s", type=float, default=5.0)
    args = parser.parse_args()

    connector = PostgresConnector(args.url, connect_timeout_s=15)
    queue = connector.table_queue(
        args.table, lease_s=args.lease_s, batch_size=args.batch_size, poll_interval_s=0.05
    )
    app = OneStepApp("postgres-worker", shutdown_timeout_s=args.shutdown_timeout_s)
    log = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()
    pause = threading.Event()

    def write(what: str, n: int, meta: dict[str, Any] | None = None) -> None:
        lost = "" if meta is None else f" {int(bool(meta.get('lease_lost')))}"
        os.write(log, f"{what} {n} {pid}{lost}\n".encode())

    @app.on_startup
    def ready(app: OneStepApp) -> None:
        os.write(log, f"ready {pid}\n".encode())

    @app.on_event
    def on_event(event: Any) -> None:
        if event.kind == "succeeded" and "n" in event.meta:
            write("succeeded", event.meta["n"], event.meta)

    if args.mode == "block":

        @app.task(source=queue, concurrency=args.concurrency)
        async def block(ctx: Any, item: Any) -> None:
            write("start", item["n"])
            await asyncio.sleep(3600)  # cancelled by the shutdown

    else:

        @app.task(source=queue, concurrency=args.concurrency)
        def work(ctx: Any, item: Any) -> None:
            ctx.current.meta["n"] = item["n"]  # for the succeeded event
            write("start", item["n"])
            if args.work_s:
                pause.wait(args.work_s)
            write("end", item["n"], ctx.current.meta)

    app.run()
    print("worker stopped cleanly", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
