"""The ledger of unsettled deliveries: credits, settling once, and no delivery slipping
in after a stop (it would be neither run to the end nor released)."""

from __future__ import annotations

import threading

from actors._ledger import Ledger
from onestep import Delivery


def test_free_credits_are_concurrency_minus_unsettled():
    ledger = Ledger(3)
    first, second = Delivery(1), Delivery(2)
    assert ledger.add(first) and ledger.add(second)
    assert ledger.free() == 1
    assert ledger.remove(first)
    assert ledger.free() == 2


def test_a_delivery_is_settled_once():
    ledger = Ledger(1)
    delivery = Delivery(1)
    ledger.add(delivery)
    assert ledger.remove(delivery) is True
    assert ledger.remove(delivery) is False


def test_nothing_is_added_after_stop_so_the_caller_gives_it_back():
    ledger = Ledger(1)
    ledger.stop()
    assert ledger.drained.is_set()
    assert ledger.add(Delivery(1)) is False
    assert len(ledger) == 0


def test_drained_is_set_when_the_last_unsettled_delivery_settles_after_stop():
    ledger = Ledger(2)
    delivery = Delivery(1)
    ledger.add(delivery)
    ledger.stop()
    assert not ledger.drained.is_set()
    ledger.remove(delivery)
    assert ledger.drained.is_set()


def test_release_all_hands_back_the_unsettled_and_wakes_waiting_workers():
    ledger = Ledger(1)
    delivery = Delivery(1)
    ledger.add(delivery)
    woke = threading.Event()
    waiter = threading.Thread(
        target=lambda: (ledger.wait_settled(delivery, threading.Event()), woke.set())
    )
    waiter.start()
    assert ledger.release_all() == [delivery]
    assert woke.wait(5)
    waiter.join(5)
    assert ledger.remove(delivery) is False  # a late settle finds nothing to do
