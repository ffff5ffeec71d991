"""Helpers shared by the benchmarks: child processes, peak RSS, best-of-K or median, output.

Each measurement runs in a fresh child process (the benchmark script re-executed with
hidden `--child ...` arguments), so its peak RSS belongs to that measurement alone. The
child prints one JSON object as its last line of stdout; the parent collects them.

Nothing here asserts anything: benchmarks only report (DESIGN.md section 6).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# The keys of one `--json` line, in order.
JSON_KEYS = ("case", "onestep_rate", "baseline_rate", "ratio", "peak_rss_mb")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (2**20 bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def context_switches() -> int:
    """Voluntary plus involuntary context switches of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_nvcsw + usage.ru_nivcsw


def add_common_args(parser: argparse.ArgumentParser, *, messages: int) -> None:
    parser.add_argument(
        "--messages", type=int, default=messages, help=f"messages per case (default {messages})"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="run each case K times and keep the best (default 1)"
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
        metavar="NAME",
        help="run only this case (repeatable; default: all)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds a child may run (default 600)"
    )
    # Internal: what a child process measures.
    parser.add_argument("--child", nargs=2, metavar=("KIND", "CASE"), help=argparse.SUPPRESS)


def parse_common_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    cases: Sequence[str],
    check_case: Callable[[str], Any] | None = None,
) -> argparse.Namespace:
    """Parse, check `--messages` and `--repeat`, and check each `--case` (with
    `check_case`, which raises ValueError, or against `cases`); `args.cases` defaults to
    every case."""
    args = parser.parse_args(argv)
    if args.messages < 2:
        parser.error("--messages must be at least 2")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.cases = args.cases or list(cases)
    for case in args.cases:
        if check_case is not None:
            try:
                check_case(case)
            except ValueError as exc:
                parser.error(str(exc))
        elif case not in cases:
            parser.error(f"unknown case {case!r}; choose from {', '.join(cases)}")
    return args


def run_child(
    script: str, kind: str, case: str, args: Sequence[str], timeout_s: float
) -> dict[str, Any]:
    """Run `script --child KIND CASE ARGS...` in a fresh interpreter; return its JSON line.

    A child that fails, hangs or prints no JSON yields {"error": "..."} instead of raising.
    """
    command = [sys.executable, script, "--child", kind, case, *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"{kind} child timed out after {timeout_s:g} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"{kind} child exited with {done.returncode}: {tail}"}
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"error": f"{kind} child printed no JSON: {lines[-1][:200]}"}
    return result


def emit_child_result(**values: Any) -> None:
    """Called in a child: print its measurement, adding peak RSS and context switches."""
    values.setdefault("peak_rss_mb", round(peak_rss_mb(), 1))
    values.setdefault("context_switches", context_switches())
    print(json.dumps(values), flush=True)


@dataclass
class Trial:
    """The best (or, with `median`, the median) of K runs of one side (onestep or
    baseline) of one case."""

    rates: list[float] = field(default_factory=list)
    peaks: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)
    median: bool = False

    def add(self, result: dict[str, Any]) -> None:
        if "error" in result:
            self.errors.append(str(result["error"]))
            return
        self.rates.append(float(result["rate"]))
        self.peaks.append(float(result["peak_rss_mb"]))
        self.extra.append(result)

    @property
    def rate(self) -> float | None:
        """The best (highest) rate of the runs, or their median, msgs/s."""
        if not self.rates:
            return None
        return statistics.median(self.rates) if self.median else max(self.rates)

    def switches_per_message(self, messages: int) -> float | None:
        """Context switches of the child process per message (the median of the runs):
        the whole child, start-up and shutdown included."""
        counts = [run["context_switches"] for run in self.extra if "context_switches" in run]
        return statistics.median(counts) / messages if counts else None

    @property
    def peak_rss_mb(self) -> float | None:
        """The highest peak RSS of the runs: the conservative reading."""
        return max(self.peaks) if self.peaks else None


@dataclass
class CaseResult:
    case: str
    onestep: Trial
    baseline: Trial

    @property
    def ratio(self) -> float | None:
        a, b = self.onestep.rate, self.baseline.rate
        return None if a is None or not b else a / b

    def as_json(self) -> dict[str, Any]:
        def rounded(value: float | None, digits: int) -> float | None:
            return None if value is None else round(value, digits)

        return {
            "case": self.case,
            "onestep_rate": rounded(self.onestep.rate, 1),
            "baseline_rate": rounded(self.baseline.rate, 1),
            "ratio": rounded(self.ratio, 4),
            "peak_rss_mb": rounded(self.onestep.peak_rss_mb, 1),
        }


def run_cases(
    script: str,
    cases: Sequence[str],
    *,
    repeat: int,
    child_args: Sequence[str],
    timeout_s: float,
    baseline_case: Any = None,
    median: bool = False,
) -> list[CaseResult]:
    """Measure each case `repeat` times, alternating onestep and baseline children so
    drift (thermal, other load) hits both sides alike. `baseline_case(case)` names the
    baseline measured beside `case` (default: the case itself). With `median` each side
    reports the median of its runs instead of the best."""
    results = []
    for case in cases:
        result = CaseResult(case, Trial(median=median), Trial(median=median))
        base = case if baseline_case is None else baseline_case(case)
        for _ in range(max(1, repeat)):
            result.onestep.add(run_child(script, "onestep", case, child_args, timeout_s))
            result.baseline.add(run_child(script, "baseline", base, child_args, timeout_s))
        results.append(result)
    return results


def print_results(
    results: Sequence[CaseResult], *, as_json: bool, title: str, messages: int | None = None
) -> None:
    """Print a table, or one JSON line per case. With `messages`, also the onestep
    child's context switches per message (`cs/msg`, JSON key `context_switches_per_msg`)."""

    def switches(r: CaseResult) -> float | None:
        return None if messages is None else r.onestep.switches_per_message(messages)

    if as_json:
        for result in results:
            line = result.as_json()
            if messages is not None:
                per_message = switches(result)
                line["context_switches_per_msg"] = (
                    None if per_message is None else round(per_message, 4)
                )
            print(json.dumps(line), flush=True)
        return
    print(title)
    header = (
        f"{'case':<10} {'onestep msg/s':>14} {'baseline msg/s':>15} {'ratio':>7} "
        f"{'peak RSS MB':>12} {'baseline RSS MB':>16}"
    )
    if messages is not None:
        header += f" {'cs/msg':>7}"
    print(header)
    print("-" * len(header))

    def fmt(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    for r in results:
        row = (
            f"{r.case:<10} {fmt(r.onestep.rate, ',.0f'):>14} {fmt(r.baseline.rate, ',.0f'):>15} "
            f"{fmt(r.ratio, '.3f'):>7} {fmt(r.onestep.peak_rss_mb, '.1f'):>12} "
            f"{fmt(r.baseline.peak_rss_mb, '.1f'):>16}"
        )
        if messages is not None:
            row += f" {fmt(switches(r), '.3f'):>7}"
        print(row)
    for r in results:
        for side, trial in (("onestep", r.onestep), ("baseline", r.baseline)):
            for error in trial.errors:
                print(f"{r.case} {side}: {error}")


class CountingEvent:
    """Counts calls to `hit()` from any thread; records when the first and the `n`-th
    happened and sets `done` at the `n`-th. Costs one C-level `next()` per hit."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._count = itertools.count(1)
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.done = threading.Event()

    def hit(self) -> None:
        seen = next(self._count)  # atomic under the GIL
        if seen == self.n:
            self.last_at = time.perf_counter()
            self.done.set()
        elif seen == 1:
            self.first_at = time.perf_counter()

    def rate(self) -> float | None:
        """Messages per second from the first hit to the n-th (n - 1 intervals)."""
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return None
        return (self.n - 1) / (self.last_at - self.first_at)
