"""`onestep graph` targets: a shop pipeline of four tasks with queues shared between them,
a dead-letter sink shared by two tasks, and names that Mermaid and DOT must escape."""

from __future__ import annotations

from typing import Any

from onestep import MaxAttempts, MemoryQueue, OneStepApp

#: Names that break a naive Mermaid or DOT writer: quotes, brackets, `#`, `<`, a
#: backslash, a newline, `end` (a Mermaid keyword) and non-ASCII text.
ODD_TASK = 'bill "fast" [v2] #1 <b>'
ODD_QUEUE = "checked\\orders\nend"
UNICODE_QUEUE = "factures ✓ 請求"

app = OneStepApp('shop "main"')
orders = MemoryQueue("orders")
checked = MemoryQueue(ODD_QUEUE)
invoices = MemoryQueue(UNICODE_QUEUE)
dead = MemoryQueue("orders.dead")
audits = MemoryQueue("audit")


@app.task(source=orders, emit=checked, retry=MaxAttempts(2), dead_letter=dead, concurrency=4)
def check(ctx: Any, order: Any) -> Any:
    return order


@app.task(source=checked, emit=[invoices, audits], dead_letter=dead, name=ODD_TASK)
def bill(ctx: Any, order: Any) -> Any:
    return order


@app.task(source=invoices)
def archive(ctx: Any, invoice: Any) -> None:
    return None


@app.task(source=audits)
def audit(ctx: Any, record: Any) -> None:
    return None
