"""How a CPU-bound sync handler scales with worker processes: `onestep run --processes N`
against one process with one thread, the same work on RabbitMQ in the same run.

Needs RabbitMQ at 127.0.0.1:5672 (guest/guest; or set ONESTEP_RABBITMQ_URL). Run from the
repository root:

    python benchmarks/cpu_scaling.py                    # every case, 400 messages
    python benchmarks/cpu_scaling.py --repeat 3 --json  # best of 3, one JSON object per case

Each message costs the handler about `--work-ms` (10) ms of pure-Python arithmetic (the
loop count is calibrated once at the start), so the GIL lets one process use one core.
Cases:
- `thread-c1`: `onestep run` in one process, `concurrency=1`: the baseline.
- `processes-N` for N = 2 up to the CPU count: `onestep run --processes N`, each worker
  with `concurrency=1`.
- `process-cN` for N = 1 up to the CPU count: one `onestep run` process whose task has
  `executor="process", concurrency=N` (the handler runs in N thespian worker processes).
- `process-noop`: `executor="process", concurrency=1` with a handler that does nothing,
  over 5x the messages: the executor's own per-message rate (its `speedup` only says how
  much cheaper a no-op is than the CPU-bound message of `thread-c1`).

Each run gets fresh queues (the results one not persistent: a result's confirm then
waits for no disk write, which would leave the CPU idle between messages). The app is
started and running (every worker) before the messages are published, so start-up is
not measured. Every result carries the time its handler finished, its worker's pid and
peak RSS; the rate is (messages - 1) / (last finish - first finish), and `peak_rss_mb`
sums the peak RSS of the workers (the parent is not counted). `speedup` is the rate over
the best `thread-c1` rate of the same run. The source has `prefetch=2`: the next message
waits in the worker while its handler runs (no broker round trip between messages), and
at the end at most one message waits behind a busy worker. For the process cases
`peak_rss_mb` also counts the app's process (where the connection and the task actors
live), read from /proc before it stops; thespian's admin and logger processes (about 25
MB together) are not counted. Cases run in turn K times (`--repeat K`) so drift hits all
alike; the best rate of each is kept, or the median with `--median`. On a shared
machine, `--wait-quiet PCT` starts each run only once the CPUs are less busy than that.
Nothing is asserted.

More cases plug in as entries of `cases()`: a name and a function taking the Settings and
returning a Measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import peak_rss_mb

URL = os.environ.get("ONESTEP_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.abspath(__file__)
DEFAULT_MESSAGES = 400
DEFAULT_WORK_MS = 10.0
JSON_KEYS = ("case", "onestep_rate", "speedup", "peak_rss_mb")


def burn(iterations: int) -> int:
    """The CPU-bound work: pure-Python arithmetic, holding the GIL throughout."""
    total = 0
    for i in range(iterations):
        total += i * i % 7
    return total


def calibrate(work_ms: float) -> int:
    """Iterations of burn() that take about `work_ms` on this machine (the fastest of a
    few tries, so a busy moment does not inflate the work)."""
    probe = 200_000
    best = min(_timed(probe) for _ in range(20))
    return max(1, int(probe * (work_ms / 1000.0) / best))


def _timed(iterations: int) -> float:
    started = time.perf_counter()
    burn(iterations)
    return time.perf_counter() - started


# -- the app the workers run (a target of `onestep run`) --------------------------------


def worker_app() -> Any:
    """The benchmark app, configured by BENCH_* environment variables."""
    from onestep import OneStepApp, RabbitMQConnector

    amqp = RabbitMQConnector(URL)
    app = OneStepApp("cpu-bench", shutdown_timeout_s=10.0)
    iterations = int(os.environ["BENCH_ITERATIONS"])

    @app.task(
        source=amqp.queue(os.environ["BENCH_JOBS"], prefetch=2),
        emit=amqp.queue(os.environ["BENCH_RESULTS"], persistent=False),
        concurrency=1,
    )
    def work(ctx: Any, item: Any) -> Any:
        burn(iterations)
        return {
            "id": item["id"],
            "done_at": time.time(),
            "pid": os.getpid(),
            "peak_rss_mb": peak_rss_mb(),
        }

    return app


def process_app() -> Any:
    """The same work with `executor="process"` and `BENCH_CONCURRENCY` worker processes
    (`BENCH_NOOP=1`: a handler that does nothing)."""
    from onestep import OneStepApp, RabbitMQConnector

    amqp = RabbitMQConnector(URL)
    app = OneStepApp("cpu-bench", shutdown_timeout_s=10.0)
    concurrency = int(os.environ["BENCH_CONCURRENCY"])
    app.task(
        source=amqp.queue(os.environ["BENCH_JOBS"], prefetch=2 * concurrency),
        emit=amqp.queue(os.environ["BENCH_RESULTS"], persistent=False),
        concurrency=concurrency,
        executor="process",
        name="work",
    )(process_noop if os.environ.get("BENCH_NOOP") else process_work)
    return app


def process_work(ctx: Any, item: Any) -> Any:
    """The handler of `process_app`: module level, so a worker process finds it."""
    burn(int(os.environ["BENCH_ITERATIONS"]))
    return {
        "id": item["id"],
        "done_at": time.time(),
        "pid": os.getpid(),
        "peak_rss_mb": peak_rss_mb(),
    }


def process_noop(ctx: Any, item: Any) -> Any:
    return {"id": item["id"], "done_at": time.time(), "pid": os.getpid(), "peak_rss_mb": 0.0}


# -- measuring ---------------------------------------------------------------------------


@dataclass
class Settings:
    messages: int
    iterations: int
    timeout_s: float


@dataclass
class Measurement:
    rate: float | None = None
    peak_rss_mb: float | None = None
    error: str | None = None


def _pika() -> Any:
    import pika  # type: ignore[import-untyped]

    return pika


class Queues:
    """Fresh jobs and results queues on one raw pika connection; deleted on close."""

    def __init__(self) -> None:
        pika = _pika()
        self.connection = pika.BlockingConnection(pika.URLParameters(URL))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        tag = uuid.uuid4().hex[:8]
        self.jobs, self.results = f"bench-cpu-jobs-{tag}", f"bench-cpu-results-{tag}"
        for name in (self.jobs, self.results):
            self.channel.queue_declare(name, durable=True)

    def publish(self, count: int) -> None:
        pika = _pika()
        properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
        for n in range(count):
            self.channel.basic_publish("", self.jobs, b'{"id":%d}' % n, properties)

    def collect(self, count: int, timeout_s: float) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while len(results) < count and time.monotonic() < deadline:
            method, _, body = self.channel.basic_get(self.results, auto_ack=True)
            if method is None:
                self.connection.process_data_events(time_limit=0.01)
                continue
            results.append(json.loads(body))
        return results

    def close(self) -> None:
        for name in (self.jobs, self.results):
            self.channel.queue_delete(name)
        self.connection.close()


def machine_busy_pct(seconds: float = 1.0) -> float | None:
    """How busy the machine's CPUs are over `seconds` (from /proc/stat; None where there
    is none): measured before each run, so the report shows the load of everything else."""
    try:
        before = _cpu_times()
        time.sleep(seconds)  # the sampling window itself
        after = _cpu_times()
    except OSError:
        return None
    busy, total = after[0] - before[0], after[1] - before[1]
    return 100.0 * busy / total if total else None


def wait_quiet(below_pct: float | None, limit_s: float = 120.0) -> float | None:
    """The CPUs' busy share over the last second, after waiting (at most `limit_s`) for it
    to fall under `below_pct` when that is given."""
    deadline = time.monotonic() + limit_s
    while True:
        busy = machine_busy_pct()
        if below_pct is None or busy is None or busy < below_pct:
            return busy
        if time.monotonic() >= deadline:
            return busy


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def run_onestep(
    processes: int,
    settings: Settings,
    *,
    app: str = "worker_app",
    env: dict[str, str] | None = None,
    messages: int | None = None,
) -> Measurement:
    """`onestep run APP --processes N` over fresh queues: publish once every worker runs,
    collect every result, stop it with SIGTERM."""
    queues = Queues()
    count = messages or settings.messages
    env = {
        **os.environ,
        **(env or {}),
        "BENCH_JOBS": queues.jobs,
        "BENCH_RESULTS": queues.results,
        "BENCH_ITERATIONS": str(settings.iterations),
    }
    command = [sys.executable, "-m", "onestep", "run", f"{SCRIPT}:{app}"]
    command += ["--processes", str(processes)]
    ready = f"all {processes} workers are running" if processes > 1 else "app 'cpu-bench' started"
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    log = _LogWatcher(process, ready)
    try:
        if not log.ready.wait(60):
            return Measurement(error=f"not running after 60 s: {log.tail()}")
        queues.publish(count)
        results = queues.collect(count, settings.timeout_s)
        if len(results) < count:
            return Measurement(error=f"{len(results)} of {count} results: {log.tail()}")
        measurement = _measure(results)
        if app != "worker_app" and measurement.peak_rss_mb is not None:
            measurement.peak_rss_mb = round(measurement.peak_rss_mb + _vm_hwm_mb(process.pid), 1)
        return measurement
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        queues.close()


def run_process_executor(concurrency: int, settings: Settings, noop: bool = False) -> Measurement:
    env = {"BENCH_CONCURRENCY": str(concurrency), "BENCH_NOOP": "1" if noop else ""}
    messages = 5 * settings.messages if noop else None
    return run_onestep(1, settings, app="process_app", env=env, messages=messages)


def _vm_hwm_mb(pid: int) -> float:
    """Peak RSS of a running process (VmHWM in /proc/PID/status), in MB; 0 if unknown."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class _LogWatcher:
    """Reads the command's stderr on a thread; `ready` is set at the line saying so."""

    def __init__(self, process: subprocess.Popen[str], text: str) -> None:
        self.ready = threading.Event()
        self.lines: list[str] = []
        self._text = text
        assert process.stderr is not None
        self._thread = threading.Thread(target=self._read, args=(process.stderr,), daemon=True)
        self._thread.start()

    def _read(self, pipe: Any) -> None:
        for line in pipe:
            self.lines.append(line.rstrip())
            if self._text in line:
                self.ready.set()

    def tail(self) -> str:
        return " | ".join(self.lines[-3:]) or "no output"


def _measure(results: list[dict[str, Any]]) -> Measurement:
    finished = [float(r["done_at"]) for r in results]
    span = max(finished) - min(finished)
    peaks: dict[int, float] = {}
    for r in results:
        peaks[r["pid"]] = max(peaks.get(r["pid"], 0.0), float(r["peak_rss_mb"]))
    rate = (len(results) - 1) / span if span > 0 else None
    return Measurement(rate=rate, peak_rss_mb=round(sum(peaks.values()), 1))


Case = Callable[[Settings], Measurement]


def cases(cpus: int) -> dict[str, Case]:
    """The cases by name, the baseline first."""
    table: dict[str, Case] = {"thread-c1": lambda s: run_onestep(1, s)}
    for n in range(2, max(2, cpus) + 1):
        table[f"processes-{n}"] = lambda s, n=n: run_onestep(n, s)
    for n in range(1, max(2, cpus) + 1):
        table[f"process-c{n}"] = lambda s, n=n: run_process_executor(n, s)
    table["process-noop"] = lambda s: run_process_executor(1, s, noop=True)
    return table


@dataclass
class Trial:
    rates: list[float] = field(default_factory=list)
    peaks: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, m: Measurement) -> None:
        if m.error is not None or m.rate is None:
            self.errors.append(m.error or "no rate")
            return
        self.rates.append(m.rate)
        if m.peak_rss_mb is not None:
            self.peaks.append(m.peak_rss_mb)

    median = False

    @property
    def rate(self) -> float | None:
        if not self.rates:
            return None
        return statistics.median(self.rates) if self.median else max(self.rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="A CPU-bound handler on RabbitMQ: one process and one thread against "
        "`onestep run --processes N`."
    )
    parser.add_argument("--messages", type=int, default=DEFAULT_MESSAGES)
    parser.add_argument("--work-ms", type=float, default=DEFAULT_WORK_MS)
    parser.add_argument("--repeat", type=int, default=1, help="keep the best of K runs")
    parser.add_argument(
        "--median", action="store_true", help="report the median of the --repeat runs"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per case")
    parser.add_argument("--case", action="append", dest="cases", metavar="NAME")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument(
        "--iterations",
        type=int,
        help="loop count of the handler's work (default: calibrated to --work-ms); fix it "
        "to compare separate invocations",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        metavar="PCT",
        help="before each run, wait (up to 120 s) until the CPUs are less than PCT%% busy "
        "over a second: other work on a shared machine skews the speedup",
    )
    args = parser.parse_args(argv)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    table = cases(cpus or 1)
    chosen = args.cases or list(table)
    unknown = [name for name in chosen if name not in table]
    if unknown or args.messages < 2 or args.repeat < 1:
        parser.error(
            f"unknown case(s) {unknown}; choose from {', '.join(table)}"
            if unknown
            else "--messages must be >= 2 and --repeat >= 1"
        )
    if "thread-c1" not in chosen:
        chosen.insert(0, "thread-c1")  # the baseline of every speedup
    iterations = args.iterations or calibrate(args.work_ms)
    settings = Settings(args.messages, iterations, args.timeout)
    load_before = os.getloadavg()
    Trial.median = args.median
    trials = {name: Trial() for name in chosen}
    for round_ in range(args.repeat):
        for name in chosen:
            busy = wait_quiet(args.wait_quiet)
            measurement = table[name](settings)
            trials[name].add(measurement)
            shown = "n/a" if measurement.rate is None else f"{measurement.rate:.1f} msg/s"
            load = "?" if busy is None else f"{busy:.0f}%"
            print(f"{name} run {round_ + 1}: {shown} (CPUs {load} busy before)", file=sys.stderr)
    load_after = os.getloadavg()
    baseline = trials["thread-c1"].rate
    rows = []
    for name in chosen:
        trial = trials[name]
        rate = trial.rate
        rows.append(
            {
                "case": name,
                "onestep_rate": None if rate is None else round(rate, 1),
                "speedup": None if rate is None or not baseline else round(rate / baseline, 3),
                "peak_rss_mb": max(trial.peaks) if trial.peaks else None,
            }
        )
    work = (
        f"{iterations} iterations, fixed"
        if args.iterations
        else f"{iterations} iterations, calibrated to ~{args.work_ms:g} ms"
    )
    context = (
        f"{args.messages} messages, a handler loop of {work}, "
        f"{'median' if args.median else 'best'} of {args.repeat}, "
        f"{cpus} CPU(s), Python {sys.version.split()[0]}, "
        f"load average {load_before[0]:.2f} before / {load_after[0]:.2f} after"
    )
    if args.json:
        print(context, file=sys.stderr)
        for row in rows:
            print(json.dumps(row), flush=True)
    else:
        print(f"CPU scaling on RabbitMQ: {context}")
        print(f"{'case':<14} {'msg/s':>8} {'speedup':>8} {'peak RSS MB':>12}")
        for row in rows:
            print(
                f"{row['case']:<14} {_fmt(row['onestep_rate'], '.1f'):>8} "
                f"{_fmt(row['speedup'], '.2f'):>8} {_fmt(row['peak_rss_mb'], '.1f'):>12}"
            )
    for name in chosen:
        for error in trials[name].errors:
            print(f"{name}: {error}", file=sys.stderr)
    return 0


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


if __name__ == "__main__":
    sys.exit(main())
