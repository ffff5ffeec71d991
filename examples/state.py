"""State: a counter in `ctx.state`, from a sync handler and from an async one.

`ctx.state` is the app's state store, scoped to the task ("<app>:<task>:<key>"). The
same names work in both kinds of handler: a `def` handler calls
`ctx.state.get("count", 0)` directly, an `async def` handler awaits it. Each counting
task sends its running count to `tallies`; `summary` stops the app when both batches
are counted, and the shutdown hook prints the keys left in the store.

Run it (from the repository root):

    onestep run examples/state.py
    python examples/state.py
"""

from onestep import InMemoryStateStore, MemoryQueue, OneStepApp

SYNC_WORDS = ["apple", "banana", "cherry"]
ASYNC_WORDS = ["delta", "echo"]

store = InMemoryStateStore()
app = OneStepApp("state", state=store)

sync_words = MemoryQueue("sync-words")
async_words = MemoryQueue("async-words")
tallies = MemoryQueue("tallies")


@app.on_startup
def put_words(app):
    for word in SYNC_WORDS:
        sync_words.put(word)
    for word in ASYNC_WORDS:
        async_words.put(word)


@app.task(source=sync_words, emit=tallies)
def count_sync(ctx, word):
    count = ctx.state.get("count", 0)
    ctx.state.set("count", count + 1)
    print(f"count_sync:  {word!r} -> count {count + 1}", flush=True)
    return {"task": "count_sync", "count": count + 1}


@app.task(source=async_words, emit=tallies)
async def count_async(ctx, word):
    count = await ctx.state.get("count", 0)
    await ctx.state.set("count", count + 1)
    print(f"count_async: {word!r} -> count {count + 1}", flush=True)
    return {"task": "count_async", "count": count + 1}


@app.task(source=tallies)
async def summary(ctx, tally):
    seen = await ctx.state.incr("tallies")
    if seen == len(SYNC_WORDS) + len(ASYNC_WORDS):
        ctx.app.request_shutdown()


@app.on_shutdown
def print_store(app):
    for key in store.keys(prefix=f"{app.name}:"):
        print(f"state: {key} = {store.get(key)}", flush=True)


if __name__ == "__main__":
    app.run()
