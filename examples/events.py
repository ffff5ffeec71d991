"""Events: count task events with InMemoryMetrics and log them with
StructuredEventLogger.

Both are registered with `app.on_event`. `flaky` fails the first execution of every
odd number and succeeds on the retry (`MaxAttempts(2)`), so the metrics count
`fetched`, `started`, `retried` and `succeeded` events per task. StructuredEventLogger
writes one log record per event with the event's fields as `extra` (run it with
`--log-format json` to see them as JSON fields). The shutdown hook prints the metrics
snapshot, `{task: {kind: count}}`.

Run it (from the repository root):

    onestep run examples/events.py --log-format json
    python examples/events.py
"""

import json

from onestep import (
    InMemoryMetrics,
    MaxAttempts,
    MemoryQueue,
    OneStepApp,
    StructuredEventLogger,
    configure_logging,
)

NUMBERS = [1, 2, 3, 4]

app = OneStepApp("events")
metrics = InMemoryMetrics()
app.on_event(metrics)
app.on_event(StructuredEventLogger())

numbers = MemoryQueue("numbers")
squares = MemoryQueue("squares")


@app.on_startup
def put_numbers(app):
    for number in NUMBERS:
        numbers.put(number)


@app.task(source=numbers, emit=squares, retry=MaxAttempts(2))
def flaky(ctx, number):
    if number % 2 and ctx.current.attempts == 0:
        raise RuntimeError(f"{number} is odd; failing its first execution")
    return number * number


@app.task(source=squares)
def collect(ctx, square):
    print(f"collect: {square}", flush=True)
    if ctx.state.incr("collected") == len(NUMBERS):
        ctx.app.request_shutdown()


@app.on_shutdown
def print_metrics(app):
    print("metrics: " + json.dumps(metrics.snapshot(), sort_keys=True), flush=True)
    print(
        f"metrics: retried={metrics.count('retried')} "
        f"succeeded (flaky)={metrics.count('succeeded', task='flaky')}",
        flush=True,
    )


if __name__ == "__main__":
    configure_logging("INFO")  # `onestep run` does this itself (--log-level, --log-format)
    app.run()
