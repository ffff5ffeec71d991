"""Quickstart: a four-stage pipeline on MemoryQueues that stops by itself.

    ingest -> double -> add_one -> report

The startup hook puts a batch of numbers on the first queue; each stage prints what
it does and returns its result, which onestep publishes to the next stage's queue.
The last stage counts results in `ctx.state` and asks the app to shut down once the
whole batch is through, so every number ends as 2x+1.

Run it either way (from the repository root):

    onestep run examples/quickstart.py
    python examples/quickstart.py
"""

from onestep import MemoryQueue, OneStepApp

BATCH = [1, 2, 3, 4, 5]

app = OneStepApp("quickstart", config={"batch": BATCH})

incoming = MemoryQueue("incoming")
ingested = MemoryQueue("ingested")
doubled = MemoryQueue("doubled")
results = MemoryQueue("results")


@app.on_startup
def put_batch(app):
    """Runs once the sinks are open and before any source fetches."""
    for number in app.config["batch"]:
        incoming.put(number)
    print(f"startup: put {len(app.config['batch'])} numbers on {incoming.name!r}", flush=True)


@app.task(source=incoming, emit=ingested)
def ingest(ctx, item):
    print(f"ingest:  received {item}", flush=True)
    return item


@app.task(source=ingested, emit=doubled)
async def double(ctx, item):
    print(f"double:  {item} -> {item * 2}", flush=True)
    return item * 2


@app.task(source=doubled, emit=results)
def add_one(ctx, item):
    print(f"add_one: {item} -> {item + 1}", flush=True)
    return item + 1


@app.task(source=results)
async def report(ctx, item):
    done = await ctx.state.incr("done")
    total = len(ctx.config["batch"])
    print(f"report:  result {item} ({done}/{total})", flush=True)
    if done == total:
        print("report:  batch complete, shutting down", flush=True)
        ctx.app.request_shutdown()


@app.on_shutdown
def goodbye(app):
    print("shutdown: all stages stopped", flush=True)


if __name__ == "__main__":
    app.run()
