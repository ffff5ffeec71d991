"""Targets for `onestep check --connect` and `onestep dlq` (tests/unit/test_cli_ops.py)."""

import os
import threading

from cli_apps import NullSource
from onestep import DeadLetterEntry, MemoryQueue, OneStepApp, Sink

#: (endpoint name, "open" | "close", thread name) of every recorded call, in order.
CALLS = []


class Recorded(MemoryQueue):
    """A MemoryQueue that records its open and close calls."""

    def open(self):
        CALLS.append((self.name, "open", threading.current_thread().name))

    def close(self):
        CALLS.append((self.name, "close", threading.current_thread().name))


class AsyncSink(Sink):
    """A sink with `async def` open and close."""

    name = "async-sink"

    async def open(self):
        CALLS.append((self.name, "open", "async"))

    async def close(self):
        CALLS.append((self.name, "close", "async"))

    async def publish(self, body, meta=None):
        return None


class Connector:
    """Stands for a connector that keeps a password (as the RabbitMQ and MySQL ones do)."""

    _password = "hunter2"


class BrokenSource(NullSource):
    name = "broken-source"

    def open(self):
        raise ConnectionError("cannot reach amqp://ops:hunter2@broker.invalid:5672/%2F: refused")


class BrokenSink(Sink):
    name = "broken-sink"
    connector = Connector()

    def open(self):
        raise PermissionError("the server said: wrong password hunter2 for user ops")

    def publish(self, body, meta=None):
        return None


class KeptDeadLetters(Sink):
    """A browsable dead-letter sink holding three dead letters of task `work` and one of
    another task; stands for a RabbitMQ queue or a table queue."""

    name = "kept"

    def __init__(self):
        self.entries = [
            DeadLetterEntry(
                f"dl-{n}",
                {"payload": {"n": n}, "failure": _failure(n)},
                {"app": "dlq", "task": task, "original_meta": {"trace": n}, "original_attempts": 2},
            )
            for n, task in [(1, "work"), (2, "work"), (3, "other"), (4, "work")]
        ]

    def publish(self, body, meta=None):
        return None

    def browse(self, limit=None, match=None):
        found = [entry for entry in self.entries if match is None or match(entry)]
        return found if limit is None else found[:limit]

    def remove(self, ids):
        wanted = set(ids)
        before = len(self.entries)
        self.entries = [entry for entry in self.entries if entry.id not in wanted]
        return before - len(self.entries)


def _failure(n):
    return {"kind": "error", "exception_type": "ValueError", "message": f"bad {n}", "traceback": ""}


class PutSource(NullSource):
    """A source in no process's memory (stands for a broker queue) that takes puts."""

    name = "put-source"

    def __init__(self):
        self.put_back = []

    def put(self, body, meta=None, *, attempts=0):
        self.put_back.append((body, meta, attempts))


# -- check --connect ---------------------------------------------------------------------

connect_ok = OneStepApp("connect-ok")
between = Recorded("between")


@connect_ok.task(source=Recorded("jobs"), emit=between, dead_letter=AsyncSink())
def first(ctx, item):
    return item


@connect_ok.task(source=between)
def second(ctx, item):
    return None


connect_fails = OneStepApp("connect-fails")


@connect_fails.task(source=BrokenSource(), emit=[Recorded("fine"), BrokenSink()])
def doomed(ctx, item):
    return item


def webhook_app():
    """A standalone webhook on the port named by ONESTEP_TEST_PORT."""
    from onestep import WebhookSource

    app = OneStepApp("webhook-check")
    port = int(os.environ["ONESTEP_TEST_PORT"])

    @app.task(source=WebhookSource("/hook", host="127.0.0.1", port=port))
    def hook(ctx, item):
        return None

    return app


# -- dlq ---------------------------------------------------------------------------------

memory_dlq = OneStepApp("memory-dlq")


@memory_dlq.task(source=MemoryQueue("in"), dead_letter=MemoryQueue("dead"))
def work(ctx, item):
    return None


dlq = OneStepApp("dlq")
kept = KeptDeadLetters()
put_source = PutSource()


@dlq.task(source=put_source, dead_letter=kept, name="work")
def work_from_a_broker(ctx, item):
    return None


@dlq.task(source=PutSource(), dead_letter=kept, name="other")
def other_from_a_broker(ctx, item):
    return None


@dlq.task(source=MemoryQueue("memory-in"), dead_letter=kept)
def memory_source(ctx, item):
    return None


@dlq.task(source=MemoryQueue("plain-in"))
def no_dead_letter(ctx, item):
    return None


@dlq.task(source=MemoryQueue("two-in"), dead_letter=[MemoryQueue("one"), MemoryQueue("two")])
def two_sinks(ctx, item):
    return None


class DownDeadLetters(KeptDeadLetters):
    """A browsable dead-letter sink whose server is down."""

    name = "down-sink"

    def browse(self, limit=None, match=None):
        raise ConnectionError("cannot connect to the dead-letter server at db.invalid:3306")


@dlq.task(source=PutSource(), dead_letter=DownDeadLetters(), name="down")
def down_server(ctx, item):
    return None
