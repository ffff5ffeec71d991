"""Timeouts: a sync handler that overruns `timeout_s` fails with kind "timeout".

`render` has `timeout_s=0.5`. Each job says how long it needs; the one that needs 5 s
overruns. At the deadline onestep fails the message at once (here: to the dead-letter
queue, where the failure kind is "timeout"), sets `ctx.cancelled` and gives the task a
fresh worker thread. `render` is cooperative: it waits on `ctx.cancelled` instead of
sleeping, so it notices the deadline and returns early rather than running on.
`report` prints each outcome and stops the app once all jobs are settled.

Run it (from the repository root):

    onestep run examples/timeout.py
    python examples/timeout.py
"""

from onestep import MemoryQueue, OneStepApp

JOBS = [{"name": "thumbnail", "needs_s": 0.05}, {"name": "video", "needs_s": 5.0}]

app = OneStepApp("timeout")

jobs = MemoryQueue("jobs")
outcomes = MemoryQueue("outcomes")


@app.on_startup
def put_jobs(app):
    for job in JOBS:
        jobs.put(job)


@app.task(source=jobs, emit=outcomes, dead_letter=outcomes, timeout_s=0.5)
def render(ctx, job):
    print(f"render: {job['name']} needs {job['needs_s']}s, has {ctx.remaining_s:.2f}s", flush=True)
    # Stands in for work done in slices: wait() returns True as soon as the deadline
    # (or a shutdown) sets ctx.cancelled, so the worker thread does not run on.
    if ctx.cancelled.wait(job["needs_s"]):
        print(f"render: {job['name']} cancelled at the deadline, giving up", flush=True)
        return None
    return {"job": job["name"], "status": "rendered"}


@app.task(source=outcomes)
def report(ctx, outcome):
    if "failure" in outcome:
        failure = outcome["failure"]
        print(
            f"report: {outcome['payload']['name']} failed, kind={failure['kind']}: "
            f"{failure['message']}",
            flush=True,
        )
    else:
        print(f"report: {outcome['job']} {outcome['status']}", flush=True)
    if ctx.state.incr("settled") == len(JOBS):
        ctx.app.request_shutdown()


if __name__ == "__main__":
    app.run()
