"""A source's optional `dead_lettered(delivery, error)`: called instead of `ack` once a
message's dead letter was stored (through the SourceActor and in direct mode); a source
without it is acked as before."""

from __future__ import annotations

import threading
from typing import Any

from actors import HandlerFailed
from onestep import Delivery, MemoryQueue, OneStepApp
from tests.helpers import ListSource, running

TIMEOUT = 10.0


class ParkingSource(ListSource):
    def __init__(self, items: list[Any]) -> None:
        super().__init__("parking", items)
        self.dead: list[tuple[Any, BaseException | None]] = []
        self.settled = threading.Semaphore(0)

    def ack(self, delivery: Delivery) -> None:
        super().ack(delivery)
        self.settled.release()

    def dead_lettered(self, delivery: Delivery, error: BaseException | None = None) -> None:
        self.dead.append((delivery.payload, error))
        self.settled.release()


class ParkingMemoryQueue(MemoryQueue):
    """A MemoryQueue (direct mode: the runtime settles it inline) that parks dead ones."""

    def __init__(self) -> None:
        super().__init__("parking-memory")
        self.dead: list[Any] = []
        self.parked = threading.Event()

    def dead_lettered(self, delivery: Delivery, error: BaseException | None = None) -> None:
        assert isinstance(error, HandlerFailed)
        self.dead.append(delivery.payload)
        self.parked.set()


def fails_on_bad(app: OneStepApp, source: Any, dead: MemoryQueue) -> None:
    @app.task(source=source, dead_letter=dead)
    def handle(ctx: Any, item: str) -> None:
        if item == "bad":
            raise ValueError("bad item")


def test_a_source_with_dead_lettered_gets_it_instead_of_ack():
    source = ParkingSource(["good", "bad", "fine"])
    dead = MemoryQueue("dead")
    app = OneStepApp("parking")
    fails_on_bad(app, source, dead)
    with running(app):
        for _ in range(3):
            assert source.settled.acquire(timeout=TIMEOUT)
    assert sorted(source.acked) == ["fine", "good"]
    [(payload, error)] = source.dead
    assert payload == "bad"
    assert isinstance(error, HandlerFailed)
    assert error.failure.message == "bad item"
    assert dead.get(timeout=TIMEOUT)["payload"] == "bad"


class PlainSource(ListSource):
    def __init__(self, items: list[Any]) -> None:
        super().__init__("plain", items)
        self.settled = threading.Event()

    def ack(self, delivery: Delivery) -> None:
        super().ack(delivery)
        self.settled.set()


def test_a_source_without_it_is_acked_after_the_dead_letter():
    source = PlainSource(["bad"])
    dead = MemoryQueue("dead")
    app = OneStepApp("plain")
    fails_on_bad(app, source, dead)
    with running(app):
        assert dead.get(timeout=TIMEOUT)["payload"] == "bad"
        assert source.settled.wait(TIMEOUT)
    assert source.acked == ["bad"]


def test_direct_mode_calls_dead_lettered_too():
    source = ParkingMemoryQueue()
    source.put("bad")
    dead = MemoryQueue("dead")
    app = OneStepApp("direct")
    fails_on_bad(app, source, dead)
    with running(app):
        assert source.parked.wait(TIMEOUT)
    assert source.dead == ["bad"]
