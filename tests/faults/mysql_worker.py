"""A onestep worker process on a MySQL table queue, for the MySQL integration and fault
tests: it logs "<n> <pid>" per execution of item {"n": n} with one os.write (which a
SIGKILL cannot tear) and runs until SIGTERM (app.run(): graceful shutdown, exit 0).
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

from onestep import MySQLConnector, OneStepApp


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

    connector = MySQLConnector(args.url, connect_timeout_s=15)
    queue = connector.table_queue(
        args.table, lease_s=args.lease_s, batch_size=args.batch_size, poll_interval_s=0.05
    )
    app = OneStepApp("mysql-worker", shutdown_timeout_s=args.shutdown_timeout_s)
    log = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()
    pause = threading.Event()

    if args.mode == "block":

        @app.task(source=queue, concurrency=args.concurrency)
        async def block(ctx: Any, item: Any) -> None:
            os.write(log, f"{item['n']} {pid}\n".encode())
            await asyncio.sleep(3600)  # cancelled by the shutdown

    else:

        @app.task(source=queue, concurrency=args.concurrency)
        def work(ctx: Any, item: Any) -> None:
            os.write(log, f"{item['n']} {pid}\n".encode())
            if args.work_s:
                pause.wait(args.work_s)

    app.run()
    print("worker stopped cleanly", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
