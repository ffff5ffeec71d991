"""RabbitMQ pipeline: orders -> price_order -> priced -> report, with retries through the
TTL retry queue and a dead-letter queue, on a real broker.

Needs RabbitMQ (guest/guest at 127.0.0.1:5672, or set ONESTEP_RABBITMQ_URL) and pika
(`pip install 'onestep[rabbitmq]'`). At startup it publishes 20 orders to the queue
`example-orders`; `price_order` prices each one (order 13 fails every time: after three
executions it lands in `example-dead-letters`), `report` prints the priced orders, and the
app stops by itself once all 20 are settled. It deletes its queues when it stops.

Run it (from the repository root):

    onestep run examples/rabbitmq_pipeline.py
    python examples/rabbitmq_pipeline.py
"""

import json
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
    """Any producer can feed a queue: JSON bodies with content_type application/json."""
    with pika.BlockingConnection(pika.URLParameters(URL)) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        # the source declares its queue when it opens, after the startup hooks ran
        channel.queue_declare("example-orders", durable=True)
        properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
        for n in range(1, ORDERS + 1):
            body = json.dumps({"id": n, "quantity": n % 4 + 1})
            channel.basic_publish("", "example-orders", body, properties)
    print(f"startup: published {ORDERS} orders", flush=True)


@app.on_shutdown
def delete_queues(app):
    with pika.BlockingConnection(pika.URLParameters(URL)) as connection:
        channel = connection.channel()
        for name in [*QUEUES, "example-orders.retry"]:
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
