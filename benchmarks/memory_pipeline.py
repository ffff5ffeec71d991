"""Throughput and peak memory of MemoryQueue -> no-op task -> MemoryQueue.

Run from the repository root:

    python benchmarks/memory_pipeline.py                 # all cases, 100,000 messages
    python benchmarks/memory_pipeline.py --repeat 3      # best of 3
    python benchmarks/memory_pipeline.py --repeat 3 --median   # median of 3
    python benchmarks/memory_pipeline.py --json          # one JSON object per case
    python benchmarks/memory_pipeline.py --case sync-c1 --messages 20000
    python benchmarks/memory_pipeline.py --tracing       # + OneStepApp(tracing=True)
    python benchmarks/memory_pipeline.py --flow          # + flow-control options

Cases: `sync-c1`, `sync-c8`, `async-c1`, `async-c8` (a `def` or `async def` handler that
returns its item, with concurrency 1 or 8). Beside every case the same run measures a raw
baseline: one thread doing `queue.Queue.get` -> no-op call -> `queue.Queue.put` over the
same number of preloaded messages. Each side of each case runs in its own fresh child
process, so the peak RSS (`ru_maxrss`) is that side's alone.

How a onestep child measures: it preloads the input MemoryQueue with N int payloads
(preloading keeps a producer thread out of the measurement), starts the app, and waits
on an Event that the output queue sets when it accepts the N-th message. The rate is
(N - 1) / (time of the N-th output - time of the first output): steady-state processing,
without actor start-up or shutdown. The output queue is a MemoryQueue subclass whose
`offer` also counts (one `next()` on an itertools.count and a compare per message). The
baseline is timed the same way, from its first `put` to its N-th. Beside each rate it
prints the onestep child's context switches per message (`cs/msg`): a lock convoy
between the workers shows as one or more per message.

With `--tracing` each case also runs with `OneStepApp(tracing=True)`, the OpenTelemetry
SDK's TracerProvider and a BatchSpanProcessor whose exporter drops the spans (a span per
message is made, ended and handed to the processor), and prints its rate against the same
case without tracing, from the same run. With `--flow`, each case
again with each flow-control option that never binds, against the case without it.

It never asserts anything: it only reports (DESIGN.md section 6). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    CaseResult,
    CountingEvent,
    Trial,
    add_common_args,
    emit_child_result,
    parse_common_args,
    peak_rss_mb,
    print_results,
    run_cases,
    run_child,
)

CASES = ("sync-c1", "sync-c8", "async-c1", "async-c8")
DEFAULT_MESSAGES = 100_000


METRICS_SUFFIX = "+metrics"

#: `--flow`: each case again with one flow-control option that never binds (issue 21):
#: a rate limit far above the rate, a per-key limit over 1,000 distinct keys, a dedup key
#: that differs for every message; all on the default in-memory state store.
FLOW_SUFFIXES: dict[str, dict[str, Any]] = {
    "+rate": {"rate_limit": "1000000/s"},
    "+keys": {"concurrency_key": lambda item: item % 1000, "max_per_key": 1},
    "+dedup": {"dedup_key": lambda item: item},
}


TRACING_SUFFIX = "+tracing"


def split_case(case: str) -> tuple[str, str]:
    """'sync-c1+rate' -> ('sync-c1', '+rate')."""
    for suffix in (METRICS_SUFFIX, TRACING_SUFFIX, *FLOW_SUFFIXES):
        if case.endswith(suffix):
            return case.removesuffix(suffix), suffix
    return case, ""


def parse_case(case: str) -> tuple[bool, int]:
    """'async-c8' -> (True, 8); 'sync-c1+metrics' -> (False, 1)."""
    kind, _, concurrency = split_case(case)[0].partition("-c")
    if kind not in ("sync", "async") or not concurrency.isdigit() or int(concurrency) < 1:
        raise ValueError(f"bad case {case!r}: expected sync-cN or async-cN")
    return kind == "async", int(concurrency)


# -- children --------------------------------------------------------------------------


def measure_onestep(
    case: str, messages: int, wait_s: float, trace_ratio: float = 1.0
) -> dict[str, Any]:
    """Runs in a fresh child process: the onestep pipeline."""
    from onestep import MemoryQueue, OneStepApp

    is_async, concurrency = parse_case(case)
    counter = CountingEvent(messages)
    hit = counter.hit

    class CountingQueue(MemoryQueue):
        """The output queue: counts what the runtime publishes to it (the runtime
        calls `offer`; `publish`, the sink actor's path, calls `offer` too)."""

        def offer(self, body: Any, meta: dict[str, Any] | None = None) -> bool:
            accepted = MemoryQueue.offer(self, body, meta)
            if accepted:
                hit()
            return accepted

    source = MemoryQueue("bench-in")
    sink = CountingQueue("bench-out")
    for i in range(messages):
        source.put(i)
    rss_preloaded = peak_rss_mb()

    variant = split_case(case)[1]
    tracing = variant == TRACING_SUFFIX
    if tracing:
        _trace_to_nowhere(trace_ratio)
    app = OneStepApp("bench", shutdown_timeout_s=5.0, tracing=tracing)
    flow = FLOW_SUFFIXES.get(variant, {})
    if is_async:

        @app.task(source=source, emit=sink, concurrency=concurrency, name="noop", **flow)
        async def noop_async(ctx: Any, item: Any) -> Any:
            return item

    else:

        @app.task(source=source, emit=sink, concurrency=concurrency, name="noop", **flow)
        def noop(ctx: Any, item: Any) -> Any:
            return item

    server = None
    if case.endswith(METRICS_SUFFIX):
        # what `onestep run --http` sets up: counters, the collector, an idle server
        server = app.serve_http("127.0.0.1", 0)
    app.start()
    try:
        finished = counter.done.wait(wait_s)
        scraped = None if server is None else _scrape_succeeded(server.url)
    finally:
        app.stop()
        if server is not None:
            server.stop()
    if not finished:
        return {"error": f"only {sink.qsize()} of {messages} messages arrived in {wait_s:g} s"}
    result = {
        "rate": counter.rate(),
        "delivered": sink.qsize(),
        "rss_preloaded_mb": round(rss_preloaded, 1),
    }
    if server is not None and scraped != messages:
        return {"error": f"/metrics counted {scraped} successes of {messages}"}
    return result


def _scrape_succeeded(url: str) -> float | None:
    """The succeeded count that /metrics shows for the benchmark task: the metrics
    measured are the metrics that work."""
    import urllib.request

    with urllib.request.urlopen(url + "metrics", timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("onestep_messages_total{") and 'outcome="succeeded"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def _trace_to_nowhere(ratio: float) -> None:
    """The SDK with a batch processor whose exporter drops every span; `ratio` of the
    traces are sampled (1.0: every message's span is recorded and exported)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Nowhere(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
    provider.add_span_processor(BatchSpanProcessor(Nowhere()))
    trace.set_tracer_provider(provider)


def measure_baseline(case: str, messages: int, wait_s: float) -> dict[str, Any]:
    """Runs in a fresh child process: one thread, queue.Queue -> no-op -> queue.Queue."""
    import queue
    import threading
    import time

    source: queue.Queue[Any] = queue.Queue()
    sink: queue.Queue[Any] = queue.Queue()
    for i in range(messages):
        source.put(i)
    rss_preloaded = peak_rss_mb()
    times: list[float] = []

    def noop(item: Any) -> Any:
        return item

    def run() -> None:
        get, put, clock = source.get, sink.put, time.perf_counter
        put(noop(get()))
        first = clock()
        for _ in range(messages - 1):
            put(noop(get()))
        times.extend((first, clock()))

    thread = threading.Thread(target=run, name="baseline", daemon=True)
    thread.start()
    thread.join(wait_s)
    if not times:
        return {"error": f"baseline did not finish in {wait_s:g} s"}
    first, last = times
    return {
        "rate": (messages - 1) / (last - first),
        "delivered": sink.qsize(),
        "rss_preloaded_mb": round(rss_preloaded, 1),
    }


# -- parent ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="MemoryQueue -> no-op task -> MemoryQueue: onestep against a raw "
        "queue.Queue baseline; each side of each case in its own child process."
    )
    add_common_args(parser, messages=DEFAULT_MESSAGES)
    parser.add_argument(
        "--median",
        action="store_true",
        help="report the median of the --repeat runs instead of the best",
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="also run each case with metrics on (app.serve_http, as `onestep run --http` "
        "does) and print its rate against the same case without them",
    )
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="also run each case with OneStepApp(tracing=True), the OpenTelemetry SDK and "
        "an exporter that drops the spans, and print its rate against the same case "
        "without tracing",
    )
    parser.add_argument(
        "--trace-ratio",
        type=float,
        default=1.0,
        help="with --tracing: the fraction of traces the SDK samples (default 1.0, all)",
    )
    parser.add_argument(
        "--flow",
        action="store_true",
        help="also run each case with a rate limit, a per-key limit and a dedup key that "
        "never bind, and print each rate against the same case without them",
    )
    args = parse_common_args(parser, argv, CASES, check_case=parse_case)

    if args.child:
        kind, case = args.child
        if kind == "onestep":
            result = measure_onestep(case, args.messages, args.timeout, args.trace_ratio)
        else:
            result = measure_baseline(case, args.messages, args.timeout)
        emit_child_result(**result)
        return 0

    child_args = ["--messages", str(args.messages), "--timeout", str(args.timeout)]
    child_args += ["--trace-ratio", str(args.trace_ratio)]
    # a child gets a little longer than its own wait, to start and to stop
    timeout_s = args.timeout + 60.0
    variant_sets = {
        "metrics": [METRICS_SUFFIX] if args.metrics else [],
        "tracing": [TRACING_SUFFIX] if args.tracing else [],
        "flow": list(FLOW_SUFFIXES) if args.flow else [],
    }
    suffixes = [suffix for group in variant_sets.values() for suffix in group]
    what = "/".join(name for name, group in variant_sets.items() if group)
    if suffixes:
        results = run_with_variants(
            args.cases, suffixes, args.repeat, child_args, timeout_s, args.median
        )
    else:
        results = run_cases(
            os.path.abspath(__file__),
            args.cases,
            repeat=args.repeat,
            child_args=child_args,
            timeout_s=timeout_s,
            baseline_case=lambda case: "raw-1-thread",
            median=args.median,
        )
    summary = "median" if args.median else "best"
    title = (
        f"MemoryQueue -> no-op -> MemoryQueue, {args.messages:,} messages, "
        f"{summary} of {args.repeat}, Python {sys.version.split()[0]}, {os.cpu_count()} CPU(s)"
    )
    print_results(results, as_json=args.json, title=title, messages=args.messages)
    if suffixes:
        print_variant_cost(results, as_json=args.json, what=what)
    return 0


def run_with_variants(
    cases: list[str],
    suffixes: list[str],
    repeat: int,
    child_args: list[str],
    timeout_s: float,
    median: bool,
) -> list[CaseResult]:
    """Each case without and with each variant (metrics, or each flow option), and the
    baseline, one child after the other in every repeat, so that drift on the machine
    hits them alike."""
    script = os.path.abspath(__file__)
    results = []
    for case in cases:
        plain = CaseResult(case, Trial(median=median), Trial(median=median))
        variants = [
            CaseResult(case + suffix, Trial(median=median), plain.baseline) for suffix in suffixes
        ]
        for _ in range(max(1, repeat)):
            plain.onestep.add(run_child(script, "onestep", case, child_args, timeout_s))
            for variant in variants:
                variant.onestep.add(
                    run_child(script, "onestep", variant.case, child_args, timeout_s)
                )
            plain.baseline.add(run_child(script, "baseline", "raw-1-thread", child_args, timeout_s))
        results += [plain, *variants]
    return results


def print_variant_cost(results: list[Any], *, as_json: bool, what: str) -> None:
    """Each variant's rate against the same case's rate without it, from the same run."""
    rates = {result.case: result.onestep.rate for result in results}
    rows = []
    for case, rate in rates.items():
        base, suffix = split_case(case)
        if suffix:
            plain = rates.get(base)
            ratio = rate / plain if rate and plain else None
            rows.append((base, suffix, plain, rate, ratio))
    if as_json:
        for base, suffix, plain, rate, ratio in rows:
            print(
                json.dumps(
                    {
                        "case": base,
                        "variant": suffix.lstrip("+"),
                        "rate_without": plain,
                        "rate_with": rate,
                        f"{what}_ratio": None if ratio is None else round(ratio, 3),
                    }
                )
            )
        return
    print()
    print(f"{what} cost (rate with the option / rate without, same run)")
    print(f"{'case':<10} {'option':<9} {'without msg/s':>14} {'with msg/s':>14} {'ratio':>7}")
    for base, suffix, plain, rate, ratio in rows:

        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:,.0f}"

        shown = "-" if ratio is None else f"{ratio:.3f}"
        print(f"{base:<10} {suffix:<9} {fmt(plain):>14} {fmt(rate):>14} {shown:>7}")


if __name__ == "__main__":
    sys.exit(main())
