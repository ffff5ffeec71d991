"""Two OS processes run the same app on one SQLite state file: each tick of an
IntervalSource fires once across both. Real processes, a real file, a 0.2 s interval.

Each replica is a child Python process running the script below. It says "ready" on
stdout once its app is built, starts the app when the test writes "go" to its stdin,
appends one line per run to a shared file (one `write` of a short line in append mode,
so lines from the two processes never interleave), and stops itself after a deadline
with `app.request_shutdown()` from a timer thread. The test waits on the children's
stdout lines (read by threads into queues), never on sleeps.

Two scenarios run at the same time, on separate files:
- "join": replica B starts once replica A has fired twice (a rolling deploy, a scale-up);
- "together": A and B start in the same instant on an empty state file (a fresh deploy).
"""

from __future__ import annotations

import itertools
import os
import queue
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pytest

INTERVAL_S = 0.2
RUN_S = 2.0
WAIT_S = 20.0  # generous bound on any one wait; the whole module takes about 3 s

REPLICA = textwrap.dedent(
    """
    import os
    import sys
    import threading

    from onestep import IntervalSource, OneStepApp, SQLiteStateStore

    db, out, interval_s, run_s = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    app = OneStepApp("replicated", state=SQLiteStateStore(db), shutdown_timeout_s=2.0)

    @app.task(source=IntervalSource.every(seconds=interval_s, name="beat"))
    def beat(ctx, item):
        meta = ctx.current.meta
        line = f"{meta['scheduled_at']} {meta['sequence']} {os.getpid()}\\n"
        with open(out, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
        print("fired", meta["scheduled_at"], flush=True)

    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit("expected 'go' on stdin")
    threading.Timer(run_s, app.request_shutdown).start()
    app.run()
    print("stopped", flush=True)
    """
)


@dataclass
class Run:
    scheduled_at: datetime
    sequence: int
    pid: int


class Replica:
    """One child process, its stdout lines in a queue."""

    def __init__(self, script: Path, db: Path, out: Path, stderr: Path, run_s: float) -> None:
        self._stderr_path = stderr
        self._stderr: IO[str] = stderr.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(db), str(out), str(INTERVAL_S), str(run_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)  # EOF

    def expect(self, prefix: str) -> str:
        """The next stdout line that starts with `prefix` (fails on EOF or timeout)."""
        while True:
            try:
                line = self.lines.get(timeout=WAIT_S)
            except queue.Empty:
                pytest.fail(f"replica {self.proc.pid}: no {prefix!r} within {WAIT_S} s")
            if line is None:
                pytest.fail(f"replica {self.proc.pid} ended before {prefix!r}: {self.stderr()}")
            if line.startswith(prefix):
                return line

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self) -> None:
        try:
            code = self.proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"replica {self.proc.pid} did not stop by itself: {self.stderr()}")
        finally:
            self._stderr.close()
            self._reader.join(WAIT_S)
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        assert code == 0, self.stderr()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stderr(self) -> str:
        return self._stderr_path.read_text()


def read_runs(out: Path) -> list[Run]:
    runs = []
    for line in out.read_text(encoding="utf-8").splitlines():
        scheduled_at, sequence, pid = line.split()
        runs.append(Run(datetime.fromisoformat(scheduled_at), int(sequence), int(pid)))
    return sorted(runs, key=lambda run: run.scheduled_at)


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory) -> dict[str, Any]:
    """Run both scenarios at once; returns {name: {"runs": [...], "pids": [...]}}."""
    tmp = tmp_path_factory.mktemp("replicas")
    script = tmp / "replica.py"
    script.write_text(REPLICA)

    def spawn(scenario: str, name: str, run_s: float) -> Replica:
        return Replica(
            script,
            tmp / f"{scenario}.db",
            tmp / f"{scenario}.runs",
            tmp / f"{scenario}-{name}.stderr",
            run_s,
        )

    replicas = {
        ("join", "a"): spawn("join", "a", RUN_S + 0.5),
        ("join", "b"): spawn("join", "b", RUN_S),
        ("together", "a"): spawn("together", "a", RUN_S),
        ("together", "b"): spawn("together", "b", RUN_S),
    }
    try:
        for replica in replicas.values():
            replica.expect("ready")
        # "together": both start in the same instant
        replicas["together", "a"].go()
        replicas["together", "b"].go()
        # "join": B starts after A has fired twice (and recorded its last tick)
        replicas["join", "a"].go()
        replicas["join", "a"].expect("fired")
        replicas["join", "a"].expect("fired")
        replicas["join", "b"].go()
        for replica in replicas.values():
            replica.finish()
    finally:
        for replica in replicas.values():
            replica.kill()
    return {
        scenario: {
            "runs": read_runs(tmp / f"{scenario}.runs"),
            "pids": {replicas[scenario, n].proc.pid for n in "ab"},
        }
        for scenario in ("join", "together")
    }


def assert_each_tick_once(runs: list[Run], pids: set[int]) -> None:
    ticks = [run.scheduled_at for run in runs]
    duplicates = sorted({tick for tick in ticks if ticks.count(tick) > 1})
    assert not duplicates, f"ticks fired twice: {duplicates}"
    assert len(runs) >= 5, runs
    assert {run.pid for run in runs} <= pids
    sequences = [run.sequence for run in runs]
    assert len(set(sequences)) == len(sequences), f"sequence numbers repeat: {sequences}"
    assert sequences == sorted(sequences), "sequence does not follow scheduled_at"


def assert_one_grid(runs: list[Run]) -> None:
    """Consecutive runs are whole intervals apart: one schedule, not one per replica."""
    interval = timedelta(seconds=INTERVAL_S)
    for earlier, later in itertools.pairwise(runs):
        steps = (later.scheduled_at - earlier.scheduled_at) / interval
        assert steps >= 0.99 and abs(steps - round(steps)) < 0.01, (
            f"runs {earlier} and {later} are {steps:.3f} intervals apart"
        )


def test_a_replica_that_joins_fires_no_tick_a_second_time(scenarios):
    runs, pids = scenarios["join"]["runs"], scenarios["join"]["pids"]
    assert_each_tick_once(runs, pids)
    assert_one_grid(runs)
    # A ran about 2.5 s at 0.2 s: about 12 ticks in all, not twice as many
    assert len(runs) <= (RUN_S + 0.5) / INTERVAL_S + 2


def test_replicas_started_together_fire_each_tick_once_on_one_grid(scenarios):
    runs, pids = scenarios["together"]["runs"], scenarios["together"]["pids"]
    assert_each_tick_once(runs, pids)
    # both replicas anchored at the same instant: not one grid per replica
    assert_one_grid(runs)
    assert len(runs) <= RUN_S / INTERVAL_S + 2


def test_the_replicas_really_were_separate_processes(scenarios):
    assert len(scenarios["join"]["pids"] | scenarios["together"]["pids"]) == 4
    assert os.getpid() not in scenarios["join"]["pids"]
