"""app.dead_letters(task): list, replay and discard on MemoryQueues (in-process) and on a
custom sink implementing the browse/remove protocol, and their errors."""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import pytest

from onestep import (
    DeadLetter,
    DeadLetterEntry,
    Delivery,
    MaxAttempts,
    MemoryQueue,
    NotBrowsable,
    NotReplayable,
    OneStepApp,
    Sink,
    Source,
)
from onestep.kit import DeadLetterClaim
from onestep.ops import _dead_letters as dead_letters_module
from onestep.ops._dead_letter_store import MemoryDeadLetters
from onestep.testing import run_until_idle
from tests.helpers import ListSource


class BrowsableSink(Sink):
    """A dead-letter sink that keeps entries in a list and implements browse/remove;
    `fail_removals` makes that many remove() calls raise first (a crash mid-replay)."""

    def __init__(self, name: str = "kept") -> None:
        self.name = name
        self.entries: list[DeadLetterEntry] = []
        self.fail_removals = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def publish(self, body: Any, meta: dict[str, Any] | None = None) -> None:
        with self._lock:
            self.entries.append(DeadLetterEntry(next(self._ids), body, dict(meta or {})))

    def browse(
        self, limit: int | None = None, match: Callable[[DeadLetterEntry], bool] | None = None
    ) -> list[DeadLetterEntry]:
        found = [e for e in self.entries if match is None or match(e)]
        return found if limit is None else found[:limit]

    def remove(self, ids: Iterable[Hashable]) -> int:
        if self.fail_removals:
            self.fail_removals -= 1
            raise ConnectionError("the dead-letter store went away")
        wanted = set(ids)
        before = len(self.entries)
        self.entries = [e for e in self.entries if e.id not in wanted]
        return before - len(self.entries)


def failing_app(
    dead: Any, *, name: str = "shop", retry: Any = None
) -> tuple[OneStepApp, MemoryQueue, MemoryQueue, dict[str, bool]]:
    """An app whose task `check` fails odd numbers while `broken["on"]`, and passes the
    rest on to `done`; returns (app, orders, done, broken)."""
    app = OneStepApp(name)
    orders, done = MemoryQueue("orders"), MemoryQueue("done")
    broken = {"on": True}

    @app.task(source=orders, emit=done, dead_letter=dead, retry=retry or MaxAttempts(2))
    def check(ctx, item):
        if broken["on"] and item % 2:
            raise ValueError(f"odd {item}")
        return {"item": item, "attempts": ctx.current.attempts, "meta": ctx.current.meta}

    return app, orders, done, broken


def put_orders(orders: MemoryQueue, numbers: Iterable[int]) -> None:
    for number in numbers:
        orders.put(number, {"trace": f"t{number}"})


def test_list_shows_payload_failure_meta_and_attempts_without_consuming() -> None:
    dead = MemoryQueue("dead")
    app, orders, _, _ = failing_app(dead)
    put_orders(orders, range(4))
    assert run_until_idle(app)["check"]["dead_lettered"] == 2

    letters = app.dead_letters("check").list()

    assert [letter.payload for letter in letters] == [1, 3]
    first = letters[0]
    assert isinstance(first, DeadLetter)
    assert first.meta == {"trace": "t1"}
    assert first.attempts == 2
    assert first.failure["kind"] == "error"
    assert first.failure["exception_type"] == "ValueError"
    assert first.failure["message"] == "odd 1"
    assert first.task == "check"
    assert first.source == "orders"
    assert re.fullmatch(r"[0-9a-f]{32}", str(first.id))
    assert set(first.as_dict()) >= {"id", "payload", "failure", "meta"}
    assert dead.qsize() == 2  # nothing consumed
    assert [letter.id for letter in app.dead_letters("check").list()] == [
        letter.id for letter in letters
    ]


def test_list_limit_counts_only_this_tasks_dead_letters() -> None:
    dead = MemoryQueue("dead")
    app, orders, _, _ = failing_app(dead)
    other_source = MemoryQueue("other")

    @app.task(source=other_source, dead_letter=dead)
    def other(ctx, item):
        raise RuntimeError("always")

    other_source.put("x")
    put_orders(orders, [1, 2, 3, 5])
    dead.put({"payload": 9, "failure": {}}, {"app": "another-app", "task": "check"})
    dead.put("not a dead letter")
    run_until_idle(app)

    letters = app.dead_letters("check")
    assert [letter.payload for letter in letters.list()] == [1, 3, 5]
    assert [letter.payload for letter in letters.list(limit=2)] == [1, 3]
    assert letters.list(limit=0) == []
    assert [letter.payload for letter in app.dead_letters("other").list()] == ["x"]
    with pytest.raises(ValueError, match="limit must be an int >= 0"):
        letters.list(limit=-1)


def test_replay_puts_payload_and_meta_back_with_attempts_from_zero() -> None:
    dead = MemoryQueue("dead")
    app, orders, done, broken = failing_app(dead)
    put_orders(orders, range(4))
    run_until_idle(app)
    done.drain()
    broken["on"] = False

    assert app.dead_letters("check").replay() == 2

    assert dead.qsize() == 0
    counts = run_until_idle(app)
    assert counts["check"]["succeeded"] == 2
    results = sorted(done.drain(), key=lambda r: r["item"])
    assert results == [
        {"item": 1, "attempts": 0, "meta": {"trace": "t1"}},
        {"item": 3, "attempts": 0, "meta": {"trace": "t3"}},
    ]


def test_replay_keep_attempts_and_limit() -> None:
    dead = MemoryQueue("dead")
    app, orders, done, broken = failing_app(dead, retry=MaxAttempts(3))
    put_orders(orders, [1, 3, 5])
    run_until_idle(app)
    broken["on"] = False

    letters = app.dead_letters("check")
    assert letters.replay(limit=1, keep_attempts=True) == 1
    assert [letter.payload for letter in letters.list()] == [3, 5]
    assert letters.replay(limit=1) == 1
    run_until_idle(app)
    assert sorted((r["item"], r["attempts"]) for r in done.drain()) == [(1, 3), (3, 0)]
    assert [letter.payload for letter in letters.list()] == [5]


def test_discard_removes_only_what_it_is_asked_to() -> None:
    dead = MemoryQueue("dead")
    app, orders, _, _ = failing_app(dead)
    put_orders(orders, [1, 3, 5])
    run_until_idle(app)
    dead.put("unrelated")

    letters = app.dead_letters("check")
    assert letters.discard(limit=2) == 2
    assert [letter.payload for letter in letters.list()] == [5]
    assert letters.discard() == 1
    assert letters.list() == []
    assert dead.drain() == ["unrelated"]


def test_a_replay_that_fails_after_the_put_duplicates_and_never_loses() -> None:
    kept = BrowsableSink()
    app, orders, done, broken = failing_app(kept)
    put_orders(orders, [1, 3, 5])
    run_until_idle(app)
    broken["on"] = False
    letters = app.dead_letters("check")
    assert letters.process_local is False

    kept.fail_removals = 1
    with pytest.raises(ConnectionError, match="went away"):
        letters.replay()

    # every payload is back on the source, and every dead letter is still kept
    assert [letter.payload for letter in letters.list()] == [1, 3, 5]
    assert orders.qsize() == 3
    assert letters.replay() == 3  # the second try removes them
    assert kept.entries == []
    run_until_idle(app)
    assert sorted(r["item"] for r in done.drain()) == [1, 1, 3, 3, 5, 5]


def test_a_replay_removes_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    kept = BrowsableSink()
    app, orders, _, _ = failing_app(kept)
    put_orders(orders, [1, 3, 5, 7, 9])
    run_until_idle(app)
    monkeypatch.setattr(dead_letters_module, "REPLAY_CHUNK", 2)
    removals: list[int] = []
    remove = kept.remove

    def counting_remove(ids: Iterable[Hashable]) -> int:
        ids = list(ids)
        removals.append(len(ids))
        if len(removals) == 2:
            raise ConnectionError("lost after the second chunk was put back")
        return remove(ids)

    kept.remove = counting_remove  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        app.dead_letters("check").replay()
    # the first chunk was removed; the second was put back and not removed; the last
    # dead letter was never touched
    assert removals == [2, 2]
    assert [e.body["payload"] for e in kept.entries] == [5, 7, 9]
    assert sorted(orders.drain()) == [1, 3, 5, 7]


def test_dead_letters_errors_name_the_problem() -> None:
    app = OneStepApp("errors")
    plain, first, second = MemoryQueue("plain"), MemoryQueue("first"), MemoryQueue("second")

    @app.task(source=plain)
    def no_dead_letter(ctx, item):
        return None

    @app.task(source=MemoryQueue("in"), dead_letter=[first, second])
    def two_sinks(ctx, item):
        return None

    with pytest.raises(ValueError, match=r"has no task 'nope'.*'no_dead_letter', 'two_sinks'"):
        app.dead_letters("nope")
    with pytest.raises(ValueError, match="task 'no_dead_letter' has no dead_letter sink"):
        app.dead_letters("no_dead_letter")
    with pytest.raises(ValueError, match="2 dead_letter sinks \\('first', 'second'\\)"):
        app.dead_letters("two_sinks")
    assert app.dead_letters("two_sinks", sink="second").sink is second
    assert app.dead_letters("two_sinks", sink=first).sink is first
    with pytest.raises(ValueError, match="no dead_letter sink 'third'"):
        app.dead_letters("two_sinks", sink="third")


class WriteOnlySink(Sink):
    def publish(self, body: Any, meta: dict[str, Any] | None = None) -> None:
        return None


class NoPutSource(Source):
    name = "no-put"

    def fetch(self, limit: int) -> list[Delivery]:
        return []

    def ack(self, delivery: Delivery) -> None: ...

    def retry(self, delivery: Delivery, delay_s: float | None = None) -> None: ...

    def fail(self, delivery: Delivery, error: BaseException | None = None) -> None: ...


def test_a_sink_without_browse_and_a_source_without_put_are_refused() -> None:
    app = OneStepApp("refusals")
    kept = BrowsableSink()
    kept.publish({"payload": 1, "failure": {}}, {"app": "refusals", "task": "no_put"})
    kept.publish({"payload": 2, "failure": {}}, {"app": "refusals", "task": "plain_put"})

    @app.task(source=MemoryQueue("a"), dead_letter=WriteOnlySink())
    def write_only(ctx, item):
        return None

    @app.task(source=NoPutSource(), dead_letter=kept)
    def no_put(ctx, item):
        return None

    list_source = ListSource("list")

    @app.task(source=list_source, dead_letter=kept)
    def plain_put(ctx, item):
        return None

    with pytest.raises(NotBrowsable, match="WriteOnlySink\\) cannot list its dead letters"):
        app.dead_letters("write_only")
    with pytest.raises(NotReplayable, match="NoPutSource 'no-put' has no put\\(\\)"):
        app.dead_letters("no_put").replay()
    # a put without attempts= replays, but cannot keep the attempts
    with pytest.raises(NotReplayable, match="cannot take a message with its attempt count"):
        app.dead_letters("plain_put").replay(keep_attempts=True)
    assert len(kept.entries) == 2  # nothing was touched
    assert app.dead_letters("plain_put").replay() == 1
    assert [d.payload for d in list_source.items] == [2]


def test_a_memory_queue_dead_letter_is_process_local() -> None:
    dead = MemoryQueue("dead")
    app, _, _, _ = failing_app(dead)
    letters = app.dead_letters("check")
    assert letters.process_local is True
    assert letters.process_local_source is True


class FlakyPutSource(ListSource):
    """A ListSource whose put raises from the `fail_at`-th call on (a broker gone)."""

    def __init__(self, fail_at: int) -> None:
        super().__init__("flaky-put")
        self.fail_at = fail_at
        self.puts = 0

    def put(self, item: Any, meta: dict[str, Any] | None = None) -> None:
        self.puts += 1
        if self.puts >= self.fail_at:
            raise ConnectionError("the source went away")
        super().put(item, meta)


def test_a_replay_whose_put_fails_removes_exactly_what_was_put_back() -> None:
    kept = BrowsableSink()
    for number in (1, 2, 3):
        kept.publish({"payload": number, "failure": {}}, {"app": "flaky", "task": "work"})
    app = OneStepApp("flaky")
    source = FlakyPutSource(fail_at=3)

    @app.task(source=source, dead_letter=kept)
    def work(ctx, item):
        return None

    with pytest.raises(ConnectionError, match="source went away"):
        app.dead_letters("work").replay()
    assert [d.payload for d in source.items] == [1, 2]
    assert [e.body["payload"] for e in kept.entries] == [3]


# -- claims: replays at once never put a dead letter back twice ---------------------------


def planted(app: OneStepApp, dead: Any, task: str, count: int) -> None:
    """`count` dead letters of `task`, payloads 0..count-1, as the dead-letter path
    writes them."""
    for n in range(count):
        dead.put(
            {"payload": n, "failure": {"kind": "error"}},
            {"app": app.name, "task": task, "dead_letter_id": f"id-{n}", "original_meta": {}},
        )


class GatedSource(ListSource):
    """A ListSource whose first put on each thread waits until `parties` threads made
    theirs: the replays calling it all hold their first claim at once."""

    def __init__(self, parties: int) -> None:
        super().__init__("gated")
        self.barrier = threading.Barrier(parties, timeout=10)
        self.local = threading.local()

    def put(self, item: Any, meta: dict[str, Any] | None = None) -> None:
        if not getattr(self.local, "passed", False):
            self.local.passed = True
            self.barrier.wait()
        super().put(item, meta)


def test_two_replays_at_once_put_each_memory_dead_letter_back_once() -> None:
    dead = MemoryQueue("dead")
    source = GatedSource(parties=2)
    app = OneStepApp("claims")

    @app.task(source=source, dead_letter=dead)
    def work(ctx, item):
        return None

    planted(app, dead, "work", 200)
    dead.put("not a dead letter")  # passed over by both claims, and kept
    counts: list[int] = []

    def replay() -> None:
        counts.append(app.dead_letters("work").replay(limit=150))

    threads = [threading.Thread(target=replay) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(counts) == 200 and len(counts) == 2, counts
    assert sorted(d.payload for d in source.items) == list(range(200))
    assert dead.drain() == ["not a dead letter"]


def test_an_unsettled_claim_gives_its_dead_letters_back_in_order() -> None:
    dead = MemoryQueue("dead")
    app, _, _, _ = failing_app(dead)
    planted(app, dead, "check", 5)
    letters = app.dead_letters("check")
    with MemoryDeadLetters(dead).take(3, letters._matches) as claim:
        assert [entry.body["payload"] for entry in claim.entries] == [0, 1, 2]
        assert [letter.payload for letter in letters.list()] == [3, 4]  # held by the claim
    assert [letter.payload for letter in letters.list()] == [0, 1, 2, 3, 4]
    with MemoryDeadLetters(dead).take(3, letters._matches) as claim:
        assert claim.settle(["id-1"]) == 1
        with pytest.raises(RuntimeError, match="has ended"):
            claim.settle(["id-0"])
    assert [letter.payload for letter in letters.list()] == [0, 2, 3, 4]


class RefailingSource(ListSource):
    """A source whose every put fails again at once: the message is dead-lettered anew
    (a fresh dead letter at the back of the sink), as while the bug is not fixed."""

    def __init__(self, app: OneStepApp, dead: MemoryQueue) -> None:
        super().__init__("refailing")
        self.app, self.dead, self.puts = app, dead, 0

    def put(self, item: Any, meta: dict[str, Any] | None = None) -> None:
        self.puts += 1
        if self.puts > 1000:
            raise AssertionError("the replay goes round and round")
        self.dead.put(
            {"payload": item, "failure": {"kind": "error"}},
            {"app": self.app.name, "task": "work", "dead_letter_id": f"again-{self.puts}"},
        )


def test_replaying_all_replays_what_was_there_when_it_began() -> None:
    dead = MemoryQueue("dead")
    app = OneStepApp("refail")
    source = RefailingSource(app, dead)

    @app.task(source=source, dead_letter=dead)
    def work(ctx, item):
        return None

    planted(app, dead, "work", 250)
    assert app.dead_letters("work").replay() == 250  # ends, though 250 new ones came
    assert source.puts == 250
    assert dead.qsize() == 250


class ClaimingSink(BrowsableSink):
    """A third-party sink that also implements `take` with the kit's DeadLetterClaim."""

    def __init__(self) -> None:
        super().__init__()
        self.held: set[Hashable] = set()
        self.settled: list[list[Hashable]] = []

    def take(self, limit: int, match: Any) -> DeadLetterClaim:
        sink = self
        free = [e for e in self.entries if e.id not in self.held and (match is None or match(e))]
        taken = free[:limit]
        self.held.update(e.id for e in taken)

        class Claim(DeadLetterClaim):
            def _settle(self, ids: list[Hashable]) -> int:
                sink.settled.append(ids)
                removed = sink.remove(ids)
                self._release()
                return removed

            def _release(self) -> None:
                sink.held.difference_update(e.id for e in self.entries)

        return Claim(taken)


def test_a_replay_whose_put_fails_settles_exactly_what_was_put_back() -> None:
    kept = ClaimingSink()
    for number in (1, 2, 3):
        kept.publish({"payload": number, "failure": {}}, {"app": "flaky", "task": "work"})
    app = OneStepApp("flaky")
    source = FlakyPutSource(fail_at=3)

    @app.task(source=source, dead_letter=kept)
    def work(ctx, item):
        return None

    with pytest.raises(ConnectionError, match="source went away"):
        app.dead_letters("work").replay()
    assert kept.settled == [[1, 2]]  # the entries' ids: what the source accepted
    assert [d.payload for d in source.items] == [1, 2]
    assert [e.body["payload"] for e in kept.entries] == [3]
    assert kept.held == set()  # the third was given back
