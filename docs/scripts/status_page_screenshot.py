"""Make docs/img/status-page.png: the status page of a small app, in headless Chromium.

    python docs/scripts/status_page_screenshot.py [OUTPUT.png]

Runs a three-task app on memory queues (one task fails some messages into a dead-letter
queue) fed by a producer thread whose rate rises and falls, serves its operations
endpoints with `app.serve_http` on a free port, waits until the page shows rates over the
last minute, queue depths and sparklines, and has Debian's `chromium` render `/` to a PNG
while the app runs; then stops it. The sparklines hold 24 samples a second apart here (90
samples 10 s apart in a real run), so that they have a shape after seconds, not minutes.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from onestep import MaxAttempts, MemoryQueue, OneStepApp
from onestep.ops._sparkline import RateHistory

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "img" / "status-page.png"
#: Points each sparkline has before the picture is taken, and how often they are sampled.
SPARK_POINTS, SPARK_INTERVAL_S = 24, 1.0


def build() -> tuple[OneStepApp, MemoryQueue]:
    app = OneStepApp("shop")
    orders, checked, invoices, dead = (
        MemoryQueue("orders"),
        MemoryQueue("checked"),
        MemoryQueue("invoices"),
        MemoryQueue("orders.dead"),
    )

    @app.task(source=orders, emit=checked, retry=MaxAttempts(2), dead_letter=dead, concurrency=4)
    def check(ctx, order):
        if order % 40 == 7:
            raise ValueError(f"order {order}: no such customer")
        return order

    @app.task(source=checked, emit=invoices, concurrency=2)
    def bill(ctx, order):
        return {"order": order, "total": order * 3}

    @app.task(source=invoices)
    def archive(ctx, invoice):
        time.sleep(0.02)  # a slow archive: its queue has a depth to show
        ctx.state.incr("archived")

    return app, orders


def produce(orders: MemoryQueue, stop: threading.Event) -> None:
    """About 50 to 350 orders a second, in waves of a few seconds."""
    n = 0
    while not stop.wait(0.01):
        batch = round(2 + 1.5 * math.sin(n / 600))
        orders.put_many(range(n, n + batch))
        n += max(batch, 1)


def wait_for_page(url: str, timeout_s: float) -> bool:
    """Until the page shows a rate ("/s"), a queue depth of at least one digit and
    sparklines of SPARK_POINTS points."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        page = urllib.request.urlopen(url, timeout=5).read().decode()
        sparks = re.findall(r'class="spark" points="([^"]*)"', page)
        if (
            "/s</td>" in page
            and "<td class=n>-</td></tr>" not in page
            and sparks
            and min(len(points.split()) for points in sparks) >= SPARK_POINTS
        ):
            return True
        time.sleep(0.2)
    return False


def main() -> int:
    output = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("headless Chromium is not installed (Debian package `chromium`)", file=sys.stderr)
        return 2
    app, orders = build()
    stop = threading.Event()
    producer = threading.Thread(target=produce, args=(orders, stop), daemon=True)
    with app.serve_http("127.0.0.1", 0) as server:
        server.monitor.history = RateHistory(SPARK_INTERVAL_S, SPARK_POINTS)
        app.start()
        producer.start()
        try:
            if not wait_for_page(server.url, 60):
                print("the page showed no rate, depth or sparkline within 60 s", file=sys.stderr)
                return 1
            output.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [
                    browser,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--hide-scrollbars",
                    "--window-size=1240,560",
                    f"--screenshot={output}",
                    server.url,
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
        finally:
            stop.set()
            producer.join()
            app.stop()
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
