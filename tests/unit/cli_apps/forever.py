"""An app that never stops by itself: one message is in flight until shutdown.

Its handler prints "working" and then finishes only once a shutdown was requested, so a
test can send SIGTERM while it runs and check that the message was drained.
"""

from onestep import MemoryQueue, OneStepApp

app = OneStepApp("forever", shutdown_timeout_s=10.0)
jobs = MemoryQueue("jobs")


@app.on_startup
def put_job(app):
    jobs.put("job-1")


@app.task(source=jobs)
def work(ctx, item):
    print(f"working on {item}", flush=True)
    ctx.app.wait_for_shutdown_request()
    print(f"finished {item}", flush=True)


@app.on_shutdown
def goodbye(app):
    print("shutdown hook ran", flush=True)
