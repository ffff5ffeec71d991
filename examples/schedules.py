"""Schedules: an IntervalSource and a CronSource on the embedded durable state store.

- `heartbeat` runs every 0.5 s (`immediate=True`: the first run at start). Its payload
  is a value, so each run gets a fresh copy of it.
- `report` runs on a 6-field cron expression, every second (the 6th field is seconds),
  in Europe/Berlin time: `scheduled_at` carries the +01:00 or +02:00 offset. Its
  payload is a callable, called once per run.
- `sync_inventory` runs every 0.2 s but each run takes 0.5 s. With `overlap="skip"`
  (the default) the ticks that fall due while a run is in flight are dropped, and each
  drop is a `skipped` TaskEvent, printed here by an `app.on_event` handler.
- `nightly` (02:30 Europe/Berlin) never fires in this short demo; the startup hook
  prints every task's schedule from `app.describe()`.

Each run prints its meta: `sequence` (1, 2, 3, ... per schedule) and `scheduled_at`
(ISO 8601 with offset). The app stops itself once `heartbeat` has run 4 times and
`report` twice, after about 2 s.

The state store is a `SQLiteStateStore` (stdlib sqlite3): the last fired tick of every
schedule and its per-tick claims live there, so a restarted app knows which ticks it
missed and two processes sharing the file fire each tick once. This demo keeps the file
in a temporary directory that the shutdown hook removes, so it leaves nothing behind;
a real app points it at a lasting path, e.g. `SQLiteStateStore("onestep-state.db")`.

Run it (from the repository root):

    onestep run examples/schedules.py
    python examples/schedules.py
"""

import os
import shutil
import tempfile
import threading
import uuid

from onestep import CronSource, IntervalSource, OneStepApp, SQLiteStateStore

HEARTBEATS = 4
REPORTS = 2

state_dir = tempfile.mkdtemp(prefix="onestep-schedules-")
app = OneStepApp("schedules", state=SQLiteStateStore(os.path.join(state_dir, "state.db")))

_lock = threading.Lock()
_runs = {"heartbeat": 0, "report": 0}


def count_run(ctx):
    """Count a run; stop the app once both demo schedules have run often enough."""
    with _lock:
        _runs[ctx.task_name] += 1
        done = _runs["heartbeat"] >= HEARTBEATS and _runs["report"] >= REPORTS
    if done:
        ctx.app.request_shutdown()


@app.task(
    source=IntervalSource.every(
        seconds=0.5, immediate=True, payload={"checks": ["db", "cache"]}, name="heartbeat"
    )
)
def heartbeat(ctx, item):
    meta = ctx.current.meta
    print(f"heartbeat: run {meta['sequence']} due at {meta['scheduled_at']}, {item}", flush=True)
    count_run(ctx)


@app.task(
    source=CronSource(
        "* * * * * *",
        timezone="Europe/Berlin",
        payload=lambda: {"report_id": uuid.uuid4().hex[:8]},
        name="report",
    )
)
def report(ctx, item):
    meta = ctx.current.meta
    print(
        f"report: run {meta['sequence']} due at {meta['scheduled_at']}, id {item['report_id']}",
        flush=True,
    )
    count_run(ctx)


@app.task(source=IntervalSource.every(seconds=0.2, immediate=True, name="inventory"))
def sync_inventory(ctx, item):
    print(f"sync_inventory: run {ctx.current.meta['sequence']} takes 0.5 s", flush=True)
    ctx.cancelled.wait(0.5)  # stands for slow work; returns early at shutdown


@app.task(source=CronSource("30 2 * * *", timezone="Europe/Berlin", name="nightly"))
def nightly(ctx, item):
    print("nightly: runs at 02:30 Berlin time", flush=True)


@app.on_event
def print_skipped(event):
    if event.kind == "skipped":
        meta = event.meta
        print(
            f"skipped: {event.task} tick due at {meta['scheduled_at']} ({meta['reason']})",
            flush=True,
        )


@app.on_startup
def print_schedules(app):
    for task in app.describe()["tasks"]:
        source = task["source"]
        rule = source.get("expression") or f"every {source['interval_s']:g} s"
        print(
            f"schedule: {task['name']} -> {rule} ({source['timezone']}, "
            f"overlap={source['overlap']}, misfire={source['misfire']})",
            flush=True,
        )


@app.on_shutdown
def remove_state(app):
    print(f"shutdown: heartbeat ran {_runs['heartbeat']}, report ran {_runs['report']}")
    app.state.close()
    shutil.rmtree(state_dir, ignore_errors=True)


if __name__ == "__main__":
    app.run()
