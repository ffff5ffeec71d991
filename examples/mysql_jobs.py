"""MySQL jobs: a MariaDB/MySQL table as a job queue, results upserted into another table,
a counter in the MySQL state store; it stops by itself once every job is done.

    jobs table -> resize (retried once on a flaky failure) -> results table

Needs a server; by default MariaDB at 127.0.0.1:3306, user root, no password, database
`test` (set ONESTEP_MYSQL_URL=mysql://user:pass@host:3306/db to change it). It creates
and drops the tables `onestep_example_jobs` and `onestep_example_results`, and empties
`onestep_example_state` (the state store). Run it either way (from the repository root):

    onestep run examples/mysql_jobs.py
    python examples/mysql_jobs.py
"""

import os

from onestep import MaxAttempts, MySQLConnector, OneStepApp

URL = os.environ.get("ONESTEP_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
JOBS = [{"image": f"photo-{n}.jpg", "width": 100 * n} for n in range(1, 6)]

db = MySQLConnector(URL)
jobs = db.table_queue("onestep_example_jobs", batch_size=10, poll_interval_s=0.1, lease_s=30)
results = db.table_sink("onestep_example_results", mode="upsert", keys=("image",), auto_create=True)
state = db.state_store("onestep_example_state")

app = OneStepApp("mysql-jobs", state=state)


def _drop_tables() -> None:
    with db.pooled() as conn, conn.cursor() as cursor:
        for table in ("onestep_example_jobs", "onestep_example_results"):
            cursor.execute(f"DROP TABLE IF EXISTS `{table}`")
        cursor.execute("DELETE FROM `onestep_example_state`")


@app.on_startup
def enqueue(app):
    """Runs before the queue is opened: start from empty tables, then submit the jobs
    the way a web app would (`put` is thread-safe, needs no running app and creates
    the table on first use)."""
    _drop_tables()
    jobs.put(JOBS[0], {"requested_by": "alice"})
    jobs.put_many(JOBS[1:], {"requested_by": "batch"})
    print(f"startup: put {len(JOBS)} jobs on table 'onestep_example_jobs'")


@app.task(source=jobs, emit=results, retry=MaxAttempts(2))
def resize(ctx, job):
    if job["width"] == 300 and ctx.current.attempts == 0:
        raise RuntimeError("flaky storage, try again")  # the retry counts in the row
    thumb = {"image": job["image"], "thumb_width": job["width"] // 4, "meta": {"ok": True}}
    meta = ctx.current.meta  # the producer's meta plus `id`, the row id
    print(
        f"resize: row {meta['id']} {job['image']} -> {thumb['thumb_width']} px "
        f"(attempt {ctx.current.attempts + 1}, requested by {meta['requested_by']})"
    )
    if ctx.state.incr("done") == len(JOBS):
        ctx.app.request_shutdown()
    return thumb


@app.on_shutdown
def report(app):
    with db.pooled() as conn, conn.cursor() as cursor:
        cursor.execute("SELECT status, attempts FROM `onestep_example_jobs` ORDER BY id")
        print("jobs:", cursor.fetchall())
        cursor.execute("SELECT COUNT(*) FROM `onestep_example_results`")
        print("results written:", cursor.fetchone()[0])
    _drop_tables()


if __name__ == "__main__":
    app.run()
