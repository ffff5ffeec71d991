"""Operations: where to look while an app runs, and what to do with its dead letters.

`charge` takes payments and passes receipts to `send_receipt`; two payments carry a bad
amount, fail twice (`MaxAttempts(2)`) and end in the `failed-payments` dead-letter queue.
Once both are there, the "operator" (an event handler here; you, at a shell, in real
life) lists them as `onestep dlq list` prints them, fixes the cause and replays them:
each goes back on `payments` with its original meta and succeeds. After the fifth
receipt the app stops and prints where to look in a running app.

Dead letters in a MemoryQueue live in this process, so here they are handled with
`app.dead_letters("charge")`. With a RabbitMQ queue or a MySQL table queue as
`dead_letter`, the same is done from a shell while the app runs:

    onestep dlq list    myapp.py --task charge [--json]
    onestep dlq replay  myapp.py --task charge [--limit N] [--keep-attempts]
    onestep dlq discard myapp.py --task charge [--limit N]

While it runs, `--http` serves Prometheus metrics at /metrics, the probes /healthz and
/readyz, and a status page at /; at shutdown the example reads its own /metrics and
prints the counts of `charge` from there.

Run it (from the repository root):

    onestep run examples/operations.py --http 9100
    python examples/operations.py --http 9100
"""

import sys
import threading
import urllib.request

from onestep import MaxAttempts, MemoryQueue, OneStepApp
from onestep.cli import format_dead_letter

PAYMENTS = [
    {"id": 1, "amount": 30},
    {"id": 2, "amount": -5},
    {"id": 3, "amount": 12},
    {"id": 4, "amount": 0},
    {"id": 5, "amount": 7},
]

app = OneStepApp("operations")

payments = MemoryQueue("payments")
receipts = MemoryQueue("receipts")
failed_payments = MemoryQueue("failed-payments")

# the bug the operator fixes before replaying: amounts of 0 or less are refused
refuse_non_positive = threading.Event()
refuse_non_positive.set()

# handlers, the event handler and hooks print from several threads: one at a time, so
# that no line is cut into by another
_printing = threading.Lock()


def say(*lines):
    with _printing:
        print("\n".join(lines), flush=True)


@app.on_startup
def queue_payments(app):
    for payment in PAYMENTS:
        payments.put(payment, {"requested_by": f"customer-{payment['id']}"})
    say(f"operations: {len(PAYMENTS)} payments queued")


@app.task(
    source=payments,
    emit=receipts,
    dead_letter=failed_payments,
    retry=MaxAttempts(2),
)
def charge(ctx, payment):
    if refuse_non_positive.is_set() and payment["amount"] <= 0:
        raise ValueError(f"amount must be positive, got {payment['amount']}")
    say(f"charge: payment {payment['id']} charged")
    return payment


@app.task(source=receipts)
def send_receipt(ctx, payment):
    say(f"receipt: payment {payment['id']}")
    if ctx.app.state.incr("receipts") == len(PAYMENTS):
        ctx.app.request_shutdown()


@app.on_event
def operator(event):
    """Runs on the event actor's thread: once both bad payments are dead letters, list
    them, fix the cause and replay them."""
    if event.kind != "dead_lettered" or app.state.incr("dead_lettered") != 2:
        return
    letters = app.dead_letters("charge")
    found = letters.list()
    say(
        f"operator: {len(found)} dead letter(s) of task 'charge' in 'failed-payments'",
        *(format_dead_letter(letter) for letter in found),
        f"operator: health {app.health()['status']}; fixing the cause and replaying",
    )
    refuse_non_positive.clear()
    replayed = letters.replay()
    say(f"operator: replayed {replayed} dead letter(s)")


def charge_counts(url):
    """The `onestep_messages_total` samples of task `charge`, read from /metrics."""
    with urllib.request.urlopen(url + "metrics", timeout=5) as response:
        text = response.read().decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("onestep_messages_total{") and 'task="charge"' in line:
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            counts[outcome] = int(float(line.rsplit(" ", 1)[1]))
    return counts


@app.on_shutdown
def where_to_look(app):
    left = len(app.dead_letters("charge").list())
    http = app.http_url  # set while `--http` (or app.serve_http) serves this app
    if http:
        counts = charge_counts(http)
        say(
            "metrics: charge "
            + ", ".join(f"{k} {counts[k]}" for k in ("succeeded", "retried", "dead_lettered"))
        )
    say(
        f"shutdown: {app.state.get('receipts')} receipts, {left} dead letter(s) left",
        "where to look:",
        "  dead letters  onestep dlq list TARGET --task charge "
        "(a RabbitMQ or MySQL dead_letter), app.dead_letters('charge') in-process",
        "  connections   onestep check TARGET --connect",
        "  task graph    onestep check TARGET",
        f"  metrics       {http + 'metrics' if http else 'not served: add --http PORT'}",
        f"  probes        {http + 'healthz, ' + http + 'readyz' if http else '-'}",
        f"  status page   {http or '-'}",
        "  status line   one log line per task every --status-interval seconds (30)",
    )


if __name__ == "__main__":
    if "--http" in sys.argv:  # what `onestep run --http HOST:PORT` does, by hand
        from onestep.http import parse_address

        with app.serve_http(*parse_address(sys.argv[sys.argv.index("--http") + 1])):
            app.run()
    else:
        app.run()
