"""The ledger of unsettled deliveries: credits, settling once, and no delivery slipping
in after a stop (it would be neither run to the end nor released).

The Ledger takes no lock on the per-message path (see its docstring); LockedLedger, for a
free-threaded interpreter, locks everything. Both run every test here; the interleaving
tests stop one operation before each of its bytecodes in actors._ledger while another
runs (tests/interleave.py), and the stress test races many threads under forced
preemption, accounting for every delivery exactly once.
"""

from __future__ import annotations

import collections
import queue
import random
import threading
from collections.abc import Callable
from typing import Any

import pytest

from actors._ledger import Ledger, LockedLedger, new_ledger
from onestep import Delivery
from tests.helpers import preempting
from tests.interleave import SETTLE_S, Other, Stepper, each_stop

KINDS = [Ledger, LockedLedger]
LEDGER = {"actors._ledger"}
EVENT_WAIT = {threading.Event.wait.__code__}


@pytest.fixture(params=KINDS, ids=["lock-free", "locked"])
def kind(request):
    return request.param


def test_new_ledger_is_the_lock_free_one_under_the_gil():
    assert type(new_ledger(2)) is Ledger


def test_free_credits_are_concurrency_minus_unsettled(kind):
    ledger = kind(3)
    first, second = Delivery(1), Delivery(2)
    assert ledger.add(first) and ledger.add(second)
    assert ledger.free() == 1
    assert ledger.remove(first)
    assert ledger.free() == 2


def test_a_delivery_is_settled_once(kind):
    ledger = kind(1)
    delivery = Delivery(1)
    ledger.add(delivery)
    assert ledger.remove(delivery) is True
    assert ledger.remove(delivery) is False


def test_nothing_is_added_after_stop_and_the_ledger_gives_it_back(kind):
    given_back: list[Any] = []
    ledger = kind(1, given_back.append)
    ledger.stop()
    assert ledger.drained.is_set()
    delivery = Delivery(1)
    assert ledger.add(delivery) is False
    assert given_back == [delivery]
    assert len(ledger) == 0
    assert ledger.drained.is_set()


def test_drained_is_set_when_the_last_unsettled_delivery_settles_after_stop(kind):
    ledger = kind(2)
    delivery = Delivery(1)
    ledger.add(delivery)
    ledger.stop()
    assert not ledger.drained.is_set()
    ledger.remove(delivery)
    assert ledger.drained.is_set()


def test_release_all_hands_back_the_unsettled_in_order_and_wakes_waiting_workers(kind):
    ledger = kind(3)
    deliveries = [Delivery(i) for i in range(3)]
    for delivery in deliveries:
        ledger.add(delivery)
    woke = threading.Event()
    waiter = threading.Thread(
        target=lambda: (ledger.wait_settled(deliveries[0], threading.Event()), woke.set())
    )
    waiter.start()
    ledger.stop()
    assert ledger.release_all() == deliveries
    assert woke.wait(5)
    waiter.join(5)
    assert ledger.remove(deliveries[0]) is False  # a late settle finds nothing to do
    assert ledger.drained.is_set()


def test_wait_settled_returns_at_once_for_a_settled_delivery(kind):
    ledger = kind(1)
    delivery = Delivery(1)
    ledger.add(delivery)
    ledger.remove(delivery)
    ledger.wait_settled(delivery, threading.Event())  # would block forever otherwise


def test_on_free_is_called_when_a_credit_comes_back(kind):
    ledger = kind(1)
    freed: list[int] = []
    ledger.on_free = lambda: freed.append(ledger.free())
    delivery = Delivery(1)
    ledger.add(delivery)
    ledger.remove(delivery)
    assert freed == [1]


# -- every interleaving of two operations --------------------------------------------


def unlocked(ledger: Ledger) -> Callable[[], bool]:
    return lambda: not ledger._lock.locked()


class Shutdown:
    """What ActorSystem.stop does to a ledger: stop(), and release_all() once it is
    drained (here at once, or never: the timeout case releases later, see `sweep`)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.drained_at_stop = False
        self.released: list[Any] = []

    def __call__(self) -> None:
        self.ledger.stop()
        self.drained_at_stop = self.ledger.drained.is_set()
        if self.drained_at_stop:
            self.released = self.ledger.release_all()


def check_add_against_shutdown(
    delivery: Any, added: bool, shutdown: Shutdown, given_back: list[Any]
) -> None:
    """Whatever the interleaving, the delivery is handled exactly once: run (added while
    shutdown had not called the ledger drained), or given back, or released."""
    if len(shutdown.ledger) == 0:
        assert shutdown.ledger.drained.is_set(), "stopped and empty, but not drained"
    late = shutdown.ledger.release_all()  # what a shutdown timeout would release
    handed_back = given_back.count(delivery) + shutdown.released.count(delivery)
    if added:
        # it runs: so shutdown must not have called the ledger drained without it
        assert not shutdown.drained_at_stop or delivery in shutdown.released
        assert handed_back + late.count(delivery) == 1
    else:
        assert handed_back == 1 and delivery not in late
    assert shutdown.ledger.drained.is_set()
    assert len(shutdown.ledger) == 0


def test_an_add_stopped_anywhere_meets_a_shutdown_and_the_delivery_is_handled_once(kind):
    def run(k: int) -> bool:
        given_back: list[Any] = []
        ledger = kind(2, given_back.append)
        delivery = Delivery("d")
        shutdown = Shutdown(ledger)
        # Stopped under the ledger's lock too (in _refuse): release_all then parks on it.
        may_stop = unlocked(ledger) if kind is LockedLedger else (lambda: True)
        stepped = Stepper(lambda: ledger.add(delivery), k, LEDGER, may_stop).start()
        other = Other(shutdown, {Ledger.release_all.__code__}).start()
        stepped.resume()
        assert other.join() and other.error is None, other.error
        assert stepped.error is None, stepped.error
        check_add_against_shutdown(delivery, stepped.result, shutdown, given_back)
        return stepped.stopped

    assert each_stop(run) > 2


def test_a_shutdown_stopped_anywhere_meets_an_add_and_the_delivery_is_handled_once(kind):
    def run(k: int) -> bool:
        given_back: list[Any] = []
        ledger = kind(2, given_back.append)
        delivery = Delivery("d")
        shutdown = Shutdown(ledger)
        may_stop = unlocked(ledger) if kind is LockedLedger else (lambda: True)
        stepped = Stepper(shutdown, k, LEDGER, may_stop).start()
        # the add that sees `stopping` takes the lock in _refuse: it parks there
        other = Other(lambda: ledger.add(delivery), {Ledger._refuse.__code__}).start()
        stepped.resume()
        assert other.join() and other.error is None, other.error
        check_add_against_shutdown(delivery, other.result, shutdown, given_back)
        return stepped.stopped

    assert each_stop(run) > 2


@pytest.mark.parametrize("stepped_side", ["waiter", "settler"])
def test_a_waiting_worker_is_woken_by_a_settle_interleaved_anywhere(kind, stepped_side):
    def run(k: int) -> bool:
        ledger = kind(1)
        delivery = Delivery("d")
        ledger.add(delivery)

        def wait() -> None:
            ledger.wait_settled(delivery, threading.Event())

        if stepped_side == "waiter":
            stepped = Stepper(wait, k, LEDGER, unlocked(ledger), EVENT_WAIT).start()
            other = Other(lambda: ledger.remove(delivery)).start()
            assert other.join() and other.result is True
            stepped.resume()  # fails unless the waiter returns
        else:
            stepped = Stepper(lambda: ledger.remove(delivery), k, LEDGER, unlocked(ledger)).start()
            other = Other(wait, EVENT_WAIT).start()
            stepped.resume()
            assert other.join(), f"stop point {k}: the waiting worker was never woken"
            assert stepped.result is True
        return stepped.stopped

    assert each_stop(run) > 2


class WatchedEvent(threading.Event):
    """A worker's Event that tells the test when the worker waits on it."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = threading.Condition()
        self.waiting = False
        self.worker_done = False

    def wait(self, timeout: float | None = None) -> bool:
        with self.changed:
            self.waiting = True
            self.changed.notify_all()
        try:
            return super().wait(timeout)
        finally:
            with self.changed:
                self.waiting = False
                self.changed.notify_all()

    def wait_until_asleep_or_done(self) -> None:
        """Until the worker waits with the Event clear (nothing will wake it), or ended."""
        with self.changed:
            assert self.changed.wait_for(
                lambda: self.worker_done or (self.waiting and not self.is_set()), SETTLE_S
            )


def test_a_late_wake_up_for_the_previous_delivery_does_not_end_the_next_wait(kind):
    """The worker registers its Event for `first`; remove(first) pops it, and is stopped
    before it sets it; the worker, seeing `first` settled, returns and waits for `second`
    with the same Event; then remove(first) sets it. That late set must not end the wait
    while `second` is unsettled. Every pair of stop points (worker, remover) is tried."""

    def run(j: int, k: int) -> tuple[bool, bool]:
        ledger = kind(2)
        first, second = Delivery(1), Delivery(2)
        ledger.add(first)
        ledger.add(second)
        event = WatchedEvent()
        seen_unsettled: list[bool] = []

        def worker() -> None:
            try:
                ledger.wait_settled(first, event)
                ledger.wait_settled(second, event)
                seen_unsettled.append(id(second) in ledger._unsettled)
            finally:
                with event.changed:
                    event.worker_done = True
                    event.changed.notify_all()

        waits = {WatchedEvent.wait.__code__}
        waiting = Stepper(worker, j, LEDGER, unlocked(ledger), waits).start()
        if not waiting.stopped:
            ledger.remove(first)
            ledger.remove(second)
            waiting.resume()
            return False, False
        remover = Stepper(lambda: ledger.remove(first), k, LEDGER, unlocked(ledger)).start()
        waiting.resume(wait=False)
        event.wait_until_asleep_or_done()
        remover.resume()
        event.wait_until_asleep_or_done()
        assert ledger.remove(second)
        waiting.resume()  # fails unless the worker returns now
        assert seen_unsettled == [False], f"stop points {j}, {k}: returned before its settle"
        return True, remover.stopped

    for j in range(1, 200):
        for k in range(1, 200):
            worker_stopped, remover_stopped = run(j, k)
            if not worker_stopped:
                assert j > 2
                return
            if not remover_stopped:
                break
    raise AssertionError("more stop points than expected")


@pytest.mark.parametrize("stepped_side", ["remove", "stop"])
def test_the_last_settle_and_stop_interleaved_anywhere_set_drained(kind, stepped_side):
    def run(k: int) -> bool:
        ledger = kind(1)
        delivery = Delivery("d")
        ledger.add(delivery)
        operations = {"remove": lambda: ledger.remove(delivery), "stop": ledger.stop}
        other_side = "stop" if stepped_side == "remove" else "remove"
        stepped = Stepper(operations[stepped_side], k, LEDGER, unlocked(ledger)).start()
        other = Other(operations[other_side]).start()
        assert other.join()
        stepped.resume()
        assert ledger.drained.is_set(), f"stop point {k}: drained never set"
        return stepped.stopped

    assert each_stop(run) > 2


def test_two_settles_interleaved_anywhere_settle_once(kind):
    def run(k: int) -> bool:
        ledger = kind(1)
        delivery = Delivery("d")
        ledger.add(delivery)
        stepped = Stepper(lambda: ledger.remove(delivery), k, LEDGER, unlocked(ledger)).start()
        other = Other(lambda: ledger.remove(delivery)).start()
        assert other.join()
        stepped.resume()
        assert [stepped.result, other.result].count(True) == 1
        assert len(ledger) == 0 and ledger.free() == 1
        return stepped.stopped

    assert each_stop(run) > 2


# -- many threads under forced preemption ---------------------------------------------


class ShutdownRace:
    """Eight direct-mode workers add, settle (themselves, or through a settler thread
    while they wait for it) until a shutdown stops the ledger; it counts how each
    delivery ended."""

    def __init__(self, kind: type[Ledger], seed: int) -> None:
        self.given_back: list[Any] = []
        self.ledger = kind(8, self.given_back.append)
        self.rng = random.Random(seed)
        self.outcomes: collections.Counter[int] = collections.Counter()
        self.lock = threading.Lock()
        self.to_settle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.made: list[Any] = []
        self.errors: list[BaseException] = []

    def note(self, delivery: Any) -> None:
        with self.lock:
            self.outcomes[id(delivery)] += 1

    def worker(self, seed: int) -> None:
        rng = random.Random(seed)
        ledger = self.ledger
        settled = threading.Event()
        try:
            while True:
                delivery = Delivery(seed)
                with self.lock:
                    self.made.append(delivery)
                if not ledger.add(delivery):
                    return
                if rng.random() < 0.5:
                    if ledger.remove(delivery):
                        self.note(delivery)
                else:
                    self.to_settle.put(delivery)
                ledger.wait_settled(delivery, settled)
        except BaseException as exc:
            self.errors.append(exc)

    def settler(self) -> None:
        while (delivery := self.to_settle.get()) is not None:
            if self.ledger.remove(delivery):
                self.note(delivery)

    def run(self) -> None:
        workers = [threading.Thread(target=self.worker, args=(i,), daemon=True) for i in range(8)]
        settler = threading.Thread(target=self.settler, daemon=True)
        with preempting():
            settler.start()
            for thread in workers:
                thread.start()
            # Not synchronisation: the random wait picks where in the stream the stop lands.
            threading.Event().wait(self.rng.uniform(0.0, 0.01))
            self.ledger.stop()
            self.ledger.drained.wait(self.rng.choice([0.0, 0.005, SETTLE_S]))
            for delivery in self.ledger.release_all():
                self.note(delivery)
            for thread in workers:
                thread.join(SETTLE_S)
            self.to_settle.put(None)
            settler.join(SETTLE_S)
        assert not self.errors, self.errors
        assert not any(t.is_alive() for t in [*workers, settler])
        for delivery in self.given_back:
            self.note(delivery)


def test_workers_racing_a_shutdown_handle_every_delivery_exactly_once(kind):
    """Each delivery ends exactly once: settled, given back by a refused add, or
    released; and the ledger ends empty and drained."""
    for seed in range(20):
        race = ShutdownRace(kind, seed)
        race.run()
        assert len(race.made) > 8
        assert [race.outcomes[id(d)] for d in race.made] == [1] * len(race.made)
        assert len(race.ledger) == 0 and race.ledger.drained.is_set()
