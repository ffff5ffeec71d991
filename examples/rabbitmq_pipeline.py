"""RabbitMQ pipeline: orders -> price_order -> priced -> report, with retries through a
delay queue and a dead-letter queue, on a real broker.

Needs RabbitMQ (guest/guest at 127.0.0.1:5672, or set ONESTEP_RABBITMQ_URL) and pika
(`pip install 'onestep[rabbitmq]'`). At startup it publishes 20 orders to the queue
`example-orders` with `put_many`; `price_order` prices each one (order 13 fails every
time: after three executions it lands in `example-dead-letters`), `report` prints the
priced orders, and the app stops by itself once all 20 are settled. It deletes its queues
when it stops.

Run it (from the repository root):

    onestep run examples/rabbitmq_pipeline.py
    python examples/rabbitmq_pipeline.py
"""

import os
import threading

import pika

from onestep import MaxAttempts, OneStepApp, RabbitMQConnector

URL = os.environ.get("ONESTEP_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
ORDERS = 20
QUEUES = ["example-orders", "example-priced", "example-dead-letters"]

app = OneStepApp("rabbitmq-pipeline")
amqp = RabbitMQConnector(URL)
orders = amqp.queue("example-orders", prefetch=50)
priced = amqp.queue("example-priced")
dead_letters = amqp.queue("example-dead-letters")

settled = 0
settled_lock = threading.Lock()


def one_settled(app):
    global settled
    with settled_lock:
        settled += 1
        if settled == ORDERS:
            app.request_shutdown()


@app.on_startup
def publish_orders(app):
    """put_many works from any code, app or not: it declares the queue on first use and
    returns once the broker confirmed every order."""
    orders.put_many(
        [{"id": n, "quantity": n % 4 + 1} for n in range(1, ORDERS + 1)], {"source": "example"}
    )
    print(f"startup: published {ORDERS} orders", flush=True)


@app.on_shutdown
def delete_queues(app):
    amqp.close()  # the producer connection put_many used
    with pika.BlockingConnection(pika.URLParameters(URL)) as connection:
        channel = connection.channel()
        for name in [*QUEUES, orders.delay_queue_name(0.2)]:
            channel.queue_delete(name)


@app.task(
    source=orders,
    emit=priced,
    dead_letter=dead_letters,
    retry=MaxAttempts(3, delay_s=0.2),
    concurrency=4,
)
def price_order(ctx, order):
    if order["id"] == 13:
        print(f"price_order: order 13 failed (execution {ctx.current.attempts + 1})", flush=True)
        raise ValueError("no price for order 13")
    return {"id": order["id"], "total": order["quantity"] * 2.5}


@app.task(source=priced)
def report(ctx, order):
    print(f"report: order {order['id']} costs {order['total']:.2f}", flush=True)
    one_settled(ctx.app)


@app.task(source=dead_letters)
def inspect_dead_letter(ctx, letter):
    failure = letter["failure"]
    print(
        f"dead letter: order {letter['payload']['id']} after "
        f"{ctx.current.meta['original_attempts']} executions: "
        f"{failure['exception_type']}: {failure['message']}",
        flush=True,
    )
    one_settled(ctx.app)


if __name__ == "__main__":
    app.run()
