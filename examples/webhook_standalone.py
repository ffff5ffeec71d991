"""Webhook standalone: onestep serves POST /orders itself (waitress in the background).

The task receives each request as a payload dict ({"body", "headers", "query",
"method", "path", "client", "received_at"}) and totals the orders. `/quote` answers
with the handler's return value (respond="result"). A demo client posts a few
requests to the app's own URL, prints each answer, and asks the app to shut down.

Run it either way (from the repository root):

    onestep run examples/webhook_standalone.py
    python examples/webhook_standalone.py
"""

import json
import threading
import time
import urllib.error
import urllib.request

from adapters.webhook import BearerToken
from onestep import OneStepApp, WebhookSource

TOKEN = "demo-token"

app = OneStepApp("webhook-standalone")
# port=0 picks a free port; a real deployment names one (8080 by default).
orders = WebhookSource("/orders", port=0, auth=BearerToken(TOKEN))
quotes = WebhookSource("/quote", port=0, respond="result")


@app.task(source=orders)
def take_order(ctx, item):
    order = item["body"]
    total = ctx.state.get("total", 0) + order["qty"] * order["price"]
    ctx.state.set("total", total)
    print(f"task:   order {ctx.current.meta['webhook_id']} {order}, total {total}", flush=True)


@app.task(source=quotes)
def quote(ctx, item):
    body = item["body"]
    return {"item": body["item"], "price": 3 * body["qty"]}


def post(url, body, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def demo():
    """Runs on its own thread: waits for the server, posts, then stops the app."""
    orders.ready.wait(10)
    quotes.ready.wait(10)
    for order in ({"qty": 2, "price": 5}, {"qty": 1, "price": 7}):
        print(f"client: POST /orders -> {post(orders.url, order, TOKEN)}", flush=True)
    print(f"client: POST /orders without a token -> {post(orders.url, {})}", flush=True)
    print(f"client: POST /quote -> {post(quotes.url, {'item': 'tea', 'qty': 4})}", flush=True)
    deadline = time.monotonic() + 10
    while app.state.get("webhook-standalone:take_order:total", 0) < 17:
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    app.request_shutdown()


@app.on_startup
def start_demo(app):
    threading.Thread(target=demo, name="demo-client", daemon=True).start()


@app.on_shutdown
def report(app):
    print(f"shutdown: total {app.state.get('webhook-standalone:take_order:total', 0)}", flush=True)


if __name__ == "__main__":
    app.run()
