"""Fire lateness of an IntervalSource: handler start time minus `scheduled_at`, in ms.

Run from the repository root:

    python benchmarks/schedule_lateness.py                       # 60 ticks of 1 s per case
    python benchmarks/schedule_lateness.py --json                # one JSON object per case
    python benchmarks/schedule_lateness.py --ticks 10 --interval 0.2
    python benchmarks/schedule_lateness.py --case cpu-busy --store memory

Cases:
- `idle`: the app has one task, `probe`, fed by `IntervalSource.every(seconds=INTERVAL)`.
- `cpu-busy`: the same app with a second sync task whose handler (fed one message before
  the app starts) spins in a pure-Python loop for the whole measurement, so the probe's
  timer, source actor, task actor and worker compete with it for the GIL on every tick.

How a case is measured: each case runs in a fresh child process. The probe's handler
reads the wall clock (`time.time()`, the clock schedules use) as its first statement
and subtracts the run's `scheduled_at`; the first run is one interval after start
(`immediate=False`), so start-up is not measured. After `--ticks` runs the child stops
the app and prints the samples' median, 95th percentile (nearest rank) and worst.
By default the app's state store is a `SQLiteStateStore` in a temporary directory (the
embedded durable default: every tick claims its key and records its last tick in it);
`--store memory` uses the InMemoryStateStore instead.

It never asserts anything: it only reports (DESIGN.md section 6).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import emit_child_result

CASES = ("idle", "cpu-busy")
JSON_KEYS = ("case", "ticks", "median_ms", "p95_ms", "worst_ms")


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(case: str, lateness_ms: list[float]) -> dict[str, Any]:
    ordered = sorted(lateness_ms)
    return {
        "case": case,
        "ticks": len(ordered),
        "median_ms": round(statistics.median(ordered), 3),
        "p95_ms": round(percentile(ordered, 0.95), 3),
        "worst_ms": round(ordered[-1], 3),
        "best_ms": round(ordered[0], 3),
    }


# -- child -----------------------------------------------------------------------------


def measure(case: str, ticks: int, interval_s: float, store: str) -> dict[str, Any]:
    """Runs in a fresh child process: one case."""
    from onestep import IntervalSource, MemoryQueue, OneStepApp, SQLiteStateStore

    with tempfile.TemporaryDirectory(prefix="onestep-lateness-") as tmp:
        state = SQLiteStateStore(os.path.join(tmp, "state.db")) if store == "sqlite" else None
        app = OneStepApp("lateness", state=state, shutdown_timeout_s=10.0)
        lateness_ms: list[float] = []
        done = threading.Event()
        stop_spinning = threading.Event()
        spinning = threading.Event()
        spins = [0]

        @app.task(source=IntervalSource.every(seconds=interval_s, name="probe"))
        def probe(ctx: Any, item: Any) -> None:
            started = time.time()
            scheduled = datetime.fromisoformat(ctx.current.meta["scheduled_at"]).timestamp()
            if len(lateness_ms) < ticks:
                lateness_ms.append((started - scheduled) * 1000.0)
                if len(lateness_ms) == ticks:
                    done.set()

        if case == "cpu-busy":
            busy_input = MemoryQueue("busy-input")
            busy_input.put("spin")

            @app.task(source=busy_input)
            def busy(ctx: Any, item: Any) -> None:
                spinning.set()
                is_set = stop_spinning.is_set
                n = 0
                while not is_set():  # pure Python: holds the GIL until forced to switch
                    for _ in range(10_000):
                        n += 1
                spins[0] = n

        app.start()
        try:
            if case == "cpu-busy" and not spinning.wait(10.0):
                return {"error": "the busy task did not start"}
            finished = done.wait(ticks * interval_s + 30.0)
        finally:
            stop_spinning.set()
            app.stop()
            if state is not None:
                state.close()
    if not finished:
        return {"error": f"only {len(lateness_ms)} of {ticks} ticks in time"}
    result = summarize(case, lateness_ms)
    result.update(
        interval_s=interval_s,
        store=store,
        spins=spins[0],
        switch_interval_ms=sys.getswitchinterval() * 1000.0,
        lateness_ms=[round(x, 3) for x in lateness_ms],
    )
    return result


# -- parent ----------------------------------------------------------------------------


def run_case(case: str, child_args: list[str], timeout_s: float) -> dict[str, Any]:
    """Run `--child CASE` in a fresh interpreter; its last stdout line is JSON. A child
    that fails, hangs or prints no JSON yields {"case": ..., "error": ...}."""
    command = [sys.executable, os.path.abspath(__file__), "--child", case, *child_args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"case": case, "error": f"child timed out after {timeout_s:g} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"case": case, "error": f"child exited with {done.returncode}: {tail}"}
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"case": case, "error": f"child printed no JSON: {lines[-1][:200]}"}
    result.setdefault("case", case)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Fire lateness (handler start - scheduled_at) of IntervalSource, with "
        "the app idle and with another task keeping a CPU busy; each case in its own "
        "child process."
    )
    parser.add_argument("--ticks", type=int, default=60, help="ticks per case (default 60)")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between ticks (default 1.0)"
    )
    parser.add_argument(
        "--store",
        choices=("sqlite", "memory"),
        default="sqlite",
        help="the app's state store (default sqlite, in a temporary directory)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help=f"print one JSON object per case with the keys {', '.join(JSON_KEYS)}",
    )
    parser.add_argument(
        "--case",
        action="append",
        dest="cases",
        choices=CASES,
        help="run only this case (repeatable; default: all)",
    )
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ticks < 1:
        parser.error("--ticks must be at least 1")
    if not args.interval > 0:
        parser.error("--interval must be > 0")

    if args.child:
        emit_child_result(**measure(args.child, args.ticks, args.interval, args.store))
        return 0

    child_args = ["--ticks", str(args.ticks), "--interval", str(args.interval)]
    child_args += ["--store", args.store]
    timeout_s = args.ticks * args.interval + 90.0
    results = [run_case(case, child_args, timeout_s) for case in args.cases or CASES]

    if args.json:
        for result in results:
            if "error" in result:
                print(json.dumps({"case": result["case"], "error": result["error"]}))
            else:
                print(json.dumps({key: result[key] for key in JSON_KEYS}), flush=True)
        return 0
    print(
        f"IntervalSource fire lateness, {args.ticks} ticks of {args.interval:g} s, "
        f"store {args.store}, Python {sys.version.split()[0]}, {os.cpu_count()} CPU(s)"
    )
    header = f"{'case':<10} {'ticks':>6} {'median ms':>10} {'p95 ms':>9} {'worst ms':>9}"
    print(header)
    print("-" * len(header))
    for result in results:
        if "error" in result:
            print(f"{result['case']:<10} error: {result['error']}")
            continue
        print(
            f"{result['case']:<10} {result['ticks']:>6} {result['median_ms']:>10.2f} "
            f"{result['p95_ms']:>9.2f} {result['worst_ms']:>9.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
