"""A onestep worker process on a MySQL or PostgreSQL business table (table_queue with
where/claim/ack/nack; `--connector`), for the fault tests. It logs "ready <pid>" once
started and "start <id> <pid>" when a handler starts, each with one os.write (which a
SIGKILL cannot tear). In `block` mode the handler never returns (the worker is
SIGKILLed holding its rows); in `work` mode it returns at once. It runs until SIGTERM
(app.run(): graceful shutdown, exit 0)."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from onestep import MySQLConnector, OneStepApp, PostgresConnector


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connector", choices=("mysql", "postgres"), default="mysql")
    parser.add_argument("--url", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--lease-column", default=None)
    parser.add_argument("--lease-s", type=float, default=60.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--mode", choices=("work", "block"), default="work")
    args = parser.parse_args()

    make = MySQLConnector if args.connector == "mysql" else PostgresConnector
    connector = make(args.url, connect_timeout_s=15)
    orders = connector.table_queue(
        args.table,
        where="status = 0",
        claim={"status": 9},
        ack={"status": 1},
        nack={"status": 2},
        lease_column=args.lease_column,
        lease_s=args.lease_s,
        batch_size=args.batch_size,
        poll_interval_s=0.05,
    )
    app = OneStepApp(f"{args.connector}-business-worker", shutdown_timeout_s=2.0)
    log = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()
    never = threading.Event()

    @app.on_startup
    def ready(app: OneStepApp) -> None:
        os.write(log, f"ready {pid}\n".encode())

    @app.task(source=orders, concurrency=args.concurrency)
    def handle(ctx: Any, order: dict[str, Any]) -> None:
        os.write(log, f"start {order['id']} {pid}\n".encode())
        if args.mode == "block":
            never.wait()  # SIGKILLed while holding the row

    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
