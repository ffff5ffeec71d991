"""Webhook in a falcon app: an existing API keeps its own routes and gains POST /events.

`mount(api, app)` adds a route for every WebhookSource of the onestep app to the falcon
app `api`; the sources then start no server of their own: waitress serves `api`.
onestep's startup hook starts that server (and a demo client), its shutdown hook stops
it. Under gunicorn you would instead call `app.start()` in `post_worker_init` and
`app.stop()` in `worker_exit` (see the README). The demo client calls the API's own
route, posts two events and a bad one, prints the answers, and shuts the app down.

Run it either way (from the repository root):

    onestep run examples/webhook_in_falcon_app.py
    python examples/webhook_in_falcon_app.py
"""

import http.client
import json
import threading

import falcon
import waitress

from adapters.webhook import mount
from onestep import OneStepApp, WebhookSource

app = OneStepApp("webhook-in-falcon")
events = WebhookSource("/events")
handled = threading.Semaphore(0)


@app.task(source=events)
def record_event(ctx, item):
    print(f"task:   {item['method']} {item['path']} body={item['body']}", flush=True)
    handled.release()


class Health:
    """The host API's own route."""

    def on_get(self, req, resp):
        resp.media = {"status": "ok", "onestep": app.health()["status"]}


api = falcon.App()
api.add_route("/health", Health())
mount(api, app)

# Embedded, the host's server owns the connections: body size, connection limit and
# timeouts are set here (the README lists what onestep's own server does for you).
server = waitress.create_server(
    api,
    host="127.0.0.1",
    port=0,
    threads=4,
    connection_limit=500,  # waitress's 100 lets a hundred slow clients lock others out
    channel_timeout=60,  # close connections idle this long
    max_request_body_size=events.max_body_bytes + 1,  # refuse larger bodies before reading
    asyncore_use_poll=True,  # select() fails past file descriptor 1023
)


def request(method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=10)
    headers = {"Content-Type": "application/json"}
    conn.request(method, path, None if body is None else json.dumps(body), headers)
    response = conn.getresponse()
    answer = (response.status, json.loads(response.read()))
    conn.close()
    print(f"client: {method} {path} -> {answer}", flush=True)


def demo():
    """Runs on its own thread: waits until the webhook accepts requests (it opens after
    the startup hooks), calls the API, then stops the app."""
    events.ready.wait(10)
    request("GET", "/health")
    request("POST", "/events", {"type": "signup", "user": "ann"})
    request("POST", "/events", {"type": "login", "user": "ann"})
    request("GET", "/events")  # 405: the webhook accepts POST only
    for _ in range(2):
        handled.acquire(timeout=10)
    app.request_shutdown()


@app.on_startup
def start_server(app):
    threading.Thread(target=server.run, name="host-waitress", daemon=True).start()
    threading.Thread(target=demo, name="demo-client", daemon=True).start()


@app.on_shutdown
def stop_server(app):
    server.close()
    print("shutdown: host server closed", flush=True)


if __name__ == "__main__":
    app.run()
