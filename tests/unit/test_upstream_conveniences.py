"""Upstream onestep's small conveniences, each working as upstream code spells it: hooks
without an argument, `event.kind.value`, `MemoryQueue(poll_interval_s=)`,
`WebhookResponse` with `WebhookSource(response=)`, `parser=`, `BearerAuth`."""

from __future__ import annotations

import http.client
import json
import threading
from typing import Any
from urllib.parse import urlsplit

import pytest

from onestep import (
    BearerAuth,
    BearerToken,
    MemoryQueue,
    OneStepApp,
    TaskEvent,
    TaskEventKind,
    WebhookResponse,
    WebhookSource,
)
from tests.helpers import running

TIMEOUT = 5.0


def test_an_app_with_zero_argument_hooks_poll_interval_and_kind_value_runs() -> None:
    source = MemoryQueue("in", poll_interval_s=0.01, batch_size=10)
    calls: list[str] = []
    kinds: list[tuple[str, bool]] = []
    done = threading.Event()
    app = OneStepApp("conveniences")

    @app.on_startup
    def started() -> None:
        calls.append("startup")

    @app.on_startup
    async def started_async() -> None:
        calls.append("startup async")

    @app.on_shutdown
    def stopped(app_: OneStepApp) -> None:  # the app argument still works
        calls.append(f"shutdown {app_.name}")

    @app.on_event
    def on_event(event: TaskEvent) -> None:
        kinds.append((event.kind.value, event.kind == "succeeded"))
        if event.kind is TaskEventKind.SUCCEEDED:
            done.set()

    @app.task(source=source)
    def handle(ctx: Any, item: Any) -> None:
        calls.append(f"item {item}")

    source.put(1)
    with running(app):
        assert done.wait(TIMEOUT)
    assert calls == ["startup", "startup async", "item 1", "shutdown conveniences"]
    assert ("succeeded", True) in kinds
    assert ("started", False) in kinds


def test_event_kind_is_a_string_everywhere() -> None:
    kind = TaskEventKind("dead_lettered")
    assert kind == "dead_lettered" and kind.value == "dead_lettered"
    assert str(kind) == "dead_lettered" and f"{kind}" == "dead_lettered"
    assert json.dumps({"kind": kind}) == '{"kind": "dead_lettered"}'


def test_memory_queue_checks_upstream_keywords() -> None:
    with pytest.raises(ValueError, match="poll_interval_s"):
        MemoryQueue("q", poll_interval_s=-1)
    with pytest.raises(ValueError, match="batch_size"):
        MemoryQueue("q", batch_size=0)


def _post(source: WebhookSource, body: bytes, content_type: str, **headers: str) -> Any:
    assert source.url is not None
    parts = urlsplit(source.url)
    assert parts.hostname is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT)
    try:
        conn.request(
            "POST", parts.path, body=body, headers={"Content-Type": content_type, **headers}
        )
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        conn.close()


def test_webhook_response_parser_and_bearer_auth() -> None:
    assert BearerAuth is BearerToken
    hook = WebhookSource(
        "/hook",
        port=0,
        response=WebhookResponse(status_code=200, body={"ok": True}, headers={"X-Id": "1"}),
        parser="text",
        auth=BearerAuth("s3cret"),
    )
    got: list[Any] = []
    seen = threading.Event()
    app = OneStepApp("hooks")

    @app.task(source=hook)
    def handle(ctx: Any, item: Any) -> None:
        got.append(item["body"])
        seen.set()

    with running(app):
        assert _post(hook, b"{}", "application/json")[0] == 401
        status, content_type, body = _post(
            hook, b'{"a": 1}', "application/json", Authorization="Bearer s3cret"
        )
        assert seen.wait(TIMEOUT)
    assert (status, content_type, json.loads(body)) == (200, "application/json", {"ok": True})
    assert got == ['{"a": 1}']  # parser="text": the JSON body as text


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"parser": "xml"}, "parser"),
        ({"response": {"status_code": 200}}, "response"),
        ({"response": WebhookResponse(), "respond": "result"}, "response"),
    ],
)
def test_webhook_options_are_checked(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(ValueError, match=param):
        WebhookSource("/x", **kwargs)


def test_webhook_response_checks_its_values() -> None:
    with pytest.raises(ValueError, match="status_code"):
        WebhookResponse(status_code=500)
    with pytest.raises(ValueError, match="body"):
        WebhookResponse(body=object())
    assert WebhookResponse(body=None).content == b""
    assert WebhookResponse(body="hi").content_type == "text/plain; charset=utf-8"


def test_json_log_formatter_attach() -> None:
    import logging

    from onestep import JsonFormatter, JsonLogFormatter

    handler = JsonLogFormatter.attach(logging.StreamHandler())
    assert isinstance(handler.formatter, JsonFormatter)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hi %s", ("there",), None)
    assert json.loads(handler.format(record))["message"] == "hi there"
