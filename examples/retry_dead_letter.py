"""Retry and dead letter: MaxAttempts(3) runs a failing message three times, then
onestep publishes it to the dead-letter queue with the failure attached.

Orders with a negative amount always fail. `check_order` retries each one up to three
executions in all (`MaxAttempts(max_attempts=3, delay_s=0.05)`), then gives up and
publishes `{"payload": ..., "failure": {...}}` to `dead_letters`; `inspect_dead_letter`
prints it. Good orders go to `accepted`. The app stops once every order is settled.

Run it (from the repository root):

    onestep run examples/retry_dead_letter.py
    python examples/retry_dead_letter.py
"""

from onestep import MaxAttempts, MemoryQueue, OneStepApp

ORDERS = [{"id": 1, "amount": 30}, {"id": 2, "amount": -5}, {"id": 3, "amount": 12}]

app = OneStepApp("retry-dead-letter")

orders = MemoryQueue("orders")
accepted = MemoryQueue("accepted")
dead_letters = MemoryQueue("dead-letters")


@app.on_startup
def put_orders(app):
    for order in ORDERS:
        orders.put(order)


@app.task(
    source=orders,
    emit=accepted,
    dead_letter=dead_letters,
    retry=MaxAttempts(max_attempts=3, delay_s=0.05),
)
def check_order(ctx, order):
    execution = ctx.current.attempts + 1
    print(f"check_order: order {order['id']}, execution {execution}", flush=True)
    if order["amount"] < 0:
        raise ValueError(f"order {order['id']} has a negative amount")
    return order


def settled(ctx):
    """Counts orders that reached the end (accepted or dead-lettered); stops at the last."""
    if ctx.app.state.incr("settled") == len(ORDERS):
        ctx.app.request_shutdown()


@app.task(source=accepted)
def record_accepted(ctx, order):
    print(f"accepted: order {order['id']}", flush=True)
    settled(ctx)


@app.task(source=dead_letters)
def inspect_dead_letter(ctx, record):
    failure = record["failure"]
    print(
        f"dead letter: payload={record['payload']} kind={failure['kind']} "
        f"error={failure['exception_type']}: {failure['message']} "
        f"executions={ctx.current.meta['original_attempts']}",
        flush=True,
    )
    settled(ctx)


if __name__ == "__main__":
    app.run()
