"""WebhookSource over real HTTP (waitress on a free loopback port), embedded in falcon and
behind the WSGI middleware: statuses, auth, both respond modes, shutdown and load."""

from __future__ import annotations

import collections
import http.client
import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import falcon
import falcon.testing
import pytest
import waitress

from adapters.webhook import BearerToken, HmacSignature, WebhookSource, mount, wsgi_middleware
from onestep import MaxAttempts, MemoryQueue, OneStepApp
from tests.helpers import running

TIMEOUT = 5.0


class Client:
    """One keep-alive HTTP connection to a source's server."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT)

    def request(
        self,
        path: str,
        body: bytes | str | None = b"{}",
        *,
        method: str = "POST",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, http.client.HTTPResponse, Any]:
        all_headers = {"Content-Type": content_type, **(headers or {})}
        self.conn.request(method, path, body=body, headers=all_headers)
        response = self.conn.getresponse()
        raw = response.read()
        return response.status, response, json.loads(raw) if raw else None

    def close(self) -> None:
        self.conn.close()


def client_for(source: WebhookSource) -> Client:
    assert source.url is not None
    return Client(source.url)


@pytest.fixture
def collected() -> Iterator[queue.Queue[Any]]:
    yield queue.Queue()


def collecting_app(source: WebhookSource, items: queue.Queue[Any]) -> OneStepApp:
    app = OneStepApp("hooks")

    @app.task(source=source)
    def record(ctx, item):
        items.put((ctx.current.meta["webhook_id"], item))

    return app


# -- arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"path": "hook"}, "path"),
        ({"methods": ()}, "methods"),
        ({"methods": ("FETCH",)}, "methods"),
        ({"methods": "POST"}, "methods"),
        ({"host": ""}, "host"),
        ({"port": 70000}, "port"),
        ({"port": "80"}, "port"),
        ({"auth": "s3cret"}, "auth"),
        ({"max_body_bytes": 0}, "max_body_bytes"),
        ({"queue_maxsize": 0}, "queue_maxsize"),
        ({"respond": "later"}, "respond"),
        ({"reply_timeout_s": 0}, "reply_timeout_s"),
        ({"name": ""}, "name"),
        ({"forward_headers": "Cookie"}, "forward_headers"),
        ({"forward_headers": [""]}, "forward_headers"),
        ({"max_json_depth": 0}, "max_json_depth"),
        ({"connection_limit": 0}, "connection_limit"),
        ({"idle_timeout_s": 0}, "idle_timeout_s"),
        ({"read_timeout_s": float("nan")}, "read_timeout_s"),
        ({"reply_timeout_s": 40 * 86_400}, "reply_timeout_s"),
        ({"server_threads": 1}, "server_threads"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs: dict[str, Any], param: str) -> None:
    args = {"path": "/hook", **kwargs}
    path = args.pop("path")
    with pytest.raises(ValueError, match=param):
        WebhookSource(path, **args)


def test_webhook_source_is_exported_lazily_from_onestep() -> None:
    import onestep

    assert onestep.WebhookSource is WebhookSource


# -- statuses -------------------------------------------------------------------------------


def test_accepted_request_reaches_the_task_with_the_documented_payload(collected) -> None:
    source = WebhookSource("/hook", port=0)
    with running(collecting_app(source, collected)):
        assert source.url is not None and source.url.endswith("/hook")
        client = client_for(source)
        status, _, answer = client.request(
            "/hook?a=1&a=2&b=x", '{"n": 1}', headers={"X-Event": "push"}
        )
        client.close()
        webhook_id, item = collected.get(timeout=TIMEOUT)
    assert status == 202
    assert answer == {"accepted": True, "id": webhook_id}
    assert set(item) == {"body", "headers", "query", "method", "path", "client", "received_at"}
    assert item["body"] == {"n": 1}
    assert item["headers"]["x-event"] == "push"
    assert item["query"] == {"a": ["1", "2"], "b": "x"}
    assert (item["method"], item["path"], item["client"]) == ("POST", "/hook", "127.0.0.1")
    assert abs(item["received_at"] - time.time()) < 60
    assert source.url is None  # closed with the app


def test_bodies_are_parsed_by_content_type(collected) -> None:
    source = WebhookSource("/hook", port=0)
    cases = [
        ("application/json; charset=utf-8", '{"a": [1, 2]}', {"a": [1, 2]}),
        ("application/vnd.api+json", "[1]", [1]),
        (
            "application/x-www-form-urlencoded",
            "a=1&b=2&b=3&c=",
            {"a": "1", "b": ["2", "3"], "c": ""},
        ),
        ("text/plain; charset=latin-1", "caf\xe9".encode("latin-1"), "caf\xe9"),
        ("application/octet-stream", b"\x00\xff", b"\x00\xff"),
    ]
    with running(collecting_app(source, collected)):
        client = client_for(source)
        for content_type, body, _ in cases:
            assert client.request("/hook", body, content_type=content_type)[0] == 202
        client.close()
        bodies = [collected.get(timeout=TIMEOUT)[1]["body"] for _ in cases]
    assert bodies == [expected for _, _, expected in cases]


def test_error_statuses_come_from_falcon_error_classes(collected) -> None:
    source = WebhookSource("/hook", port=0, max_body_bytes=10)
    with running(collecting_app(source, collected)):
        client = client_for(source)
        status, _, answer = client.request("/hook", "{not json")
        assert status == 400 and answer["title"] == "Malformed json body"
        status, _, answer = client.request(
            "/hook", "\xff\xfe", content_type="text/plain; charset=ascii"
        )
        assert status == 400
        assert client.request("/elsewhere")[0] == 404
        status, response, answer = client.request("/hook", None, method="GET")
        assert status == 405 and response.getheader("Allow") == "POST"
        assert set(answer) == {"title", "description"}
        status, _, answer = client.request("/hook", b"x" * 11, content_type="text/plain")
        assert status == 413 and "10 bytes" in answer["description"]
        client.close()
    assert collected.empty()


def test_body_larger_than_the_limit_without_content_length_is_refused() -> None:
    """The bytes actually read count, not only the Content-Length header."""
    source = WebhookSource("/hook", max_body_bytes=10, serve=False)
    host = falcon.App()
    host.add_route("/hook", source.falcon_resource())
    source.open()
    try:
        environ = falcon.testing.create_environ(
            "/hook", method="POST", body=b"y" * 50, headers={"Content-Type": "text/plain"}
        )
        del environ["CONTENT_LENGTH"]
        req = falcon.Request(environ)
        with pytest.raises(falcon.HTTPContentTooLarge):
            source.handle(req, falcon.Response())
    finally:
        source.close()


def test_a_body_shorter_than_its_content_length_is_refused() -> None:
    """A client that went away mid-body (seen under servers that hand the app a short
    body) gets 400, never a truncated payload."""
    source = WebhookSource("/hook", serve=False)
    source.falcon_resource()
    source.open()
    try:
        environ = falcon.testing.create_environ(
            "/hook", method="POST", body=b'{"a": 1}', headers={"Content-Type": "application/json"}
        )
        environ["CONTENT_LENGTH"] = "100"
        with pytest.raises(falcon.HTTPBadRequest) as refused:
            source.handle(falcon.Request(environ), falcon.Response())
        assert refused.value.title == "Incomplete body"
    finally:
        source.close()
    assert source.empty()


def test_a_body_the_server_refused_unread_is_never_taken_for_empty() -> None:
    """The route changed between the headers (body refused, not read) and the app: the
    client is asked to retry instead of the request being queued with an empty body."""
    from onestep.kit import BODY_REFUSED

    source = WebhookSource("/hook", serve=False)
    source.falcon_resource()
    source.open()
    try:
        environ = falcon.testing.create_environ(
            "/hook", method="POST", body=b"", headers={"Content-Type": "application/json"}
        )
        environ["CONTENT_LENGTH"] = "2"
        environ[BODY_REFUSED] = True
        with pytest.raises(falcon.HTTPServiceUnavailable) as refused:
            source.handle(falcon.Request(environ), falcon.Response())
        assert refused.value.headers is not None and "Retry-After" in refused.value.headers
    finally:
        source.close()
    assert source.empty()


# -- strict JSON ----------------------------------------------------------------------------


def test_json_nested_too_deep_or_holding_nan_is_400_without_a_traceback(caplog, collected) -> None:
    source = WebhookSource("/hook", port=0, max_json_depth=64)
    refused = [
        b"[" * 1000 + b"]" * 1000,  # deeper than the interpreter's recursion limit
        b"[" * 65 + b"]" * 65,
        b'{"a": ' * 65 + b"1" + b"}" * 65,
        b"NaN",
        b'{"x": Infinity}',
        b"[-Infinity]",
    ]
    kept = [
        b"[" * 64 + b"]" * 64,
        b'["' + b"[" * 1000 + b'"]',  # brackets in a string do not nest
        b'["\\\\", {"a": [1]}]',
        # An unterminated string full of escaped quotes: malformed, and scanned in linear
        # time (a scan that retried at every quote would take minutes here).
        b'"' + b'\\"[' * 20_000,
    ]
    with caplog.at_level(logging.DEBUG), running(collecting_app(source, collected)):
        client = client_for(source)
        answers = [client.request("/hook", body) for body in refused + kept]
        client.close()
        received = [collected.get(timeout=TIMEOUT)[1]["body"] for _ in range(3)]
    assert [status for status, _, _ in answers] == [400] * 6 + [202, 202, 202, 400]
    assert "nesting deeper than 64 levels" in answers[0][2]["description"]
    assert "NaN is not valid JSON" in answers[3][2]["description"]
    assert json.dumps(received[0], separators=(",", ":")) == "[" * 64 + "]" * 64
    assert received[1:] == [["[" * 1000], ["\\", {"a": [1]}]]
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    lines = [r.getMessage() for r in caplog.records if "400 for a body" in r.getMessage()]
    assert len(lines) == 7 and all("\n" not in line for line in lines)


def test_a_depth_limit_above_the_recursion_limit_still_answers_400() -> None:
    from adapters.webhook._body import _parse_body

    deep = b"[" * 5000 + b"]" * 5000
    with pytest.raises(falcon.HTTPBadRequest) as refused:
        _parse_body("application/json", deep, 10_000)
    assert "nesting deeper than the JSON parser can follow" in str(refused.value.description)


# -- no secrets in messages ------------------------------------------------------------------


def test_credentials_never_reach_the_payload_nor_the_dead_letter() -> None:
    source = WebhookSource("/hook", port=0, auth=BearerToken("s3cret-token"))
    dead = MemoryQueue("dead")
    app = OneStepApp("secrets")

    @app.task(source=source, dead_letter=dead)
    def fails(ctx, item):
        raise ValueError(f"saw {sorted(item['headers'])}")

    with running(app):
        client = client_for(source)
        headers = {
            "Authorization": "Bearer s3cret-token",
            "Cookie": "session=s3cret-cookie",
            "Proxy-Authorization": "Basic s3cret-proxy",
            "X-Event": "push",
        }
        assert client.request("/hook", headers=headers)[0] == 202
        client.close()
        letter = dead.get(timeout=TIMEOUT)
    headers_seen = letter["payload"]["headers"]
    assert headers_seen["x-event"] == "push"
    assert {"authorization", "cookie", "proxy-authorization"}.isdisjoint(headers_seen)
    assert "s3cret" not in json.dumps(letter, default=repr)


def test_forward_headers_keeps_named_credentials_and_hmac_signatures_are_dropped(
    collected,
) -> None:
    auth = HmacSignature("k3y", header="X-Hub-Signature-256")
    source = WebhookSource("/hook", port=0, auth=auth, forward_headers=["cookie"])
    body = b'{"n": 1}'
    with running(collecting_app(source, collected)):
        client = client_for(source)
        headers = {"X-Hub-Signature-256": auth.sign(body), "Cookie": "a=1", "Authorization": "x"}
        assert client.request("/hook", body, headers=headers)[0] == 202
        client.close()
        item = collected.get(timeout=TIMEOUT)[1]
    assert item["headers"]["cookie"] == "a=1"
    assert "x-hub-signature-256" not in item["headers"]
    assert "authorization" not in item["headers"]


def test_full_queue_answers_503_with_retry_after() -> None:
    source = WebhookSource("/hook", port=0, queue_maxsize=1)
    app = OneStepApp("hooks")
    started, release = threading.Event(), threading.Event()
    done: queue.Queue[Any] = queue.Queue()

    @app.task(source=source)
    def slow(ctx, item):
        started.set()
        release.wait(TIMEOUT)
        done.put(item["body"])

    with running(app):
        client = client_for(source)
        assert client.request("/hook", "1")[0] == 202
        assert started.wait(TIMEOUT)  # the worker holds the first request...
        assert client.request("/hook", "2")[0] == 202  # ...the second fills the queue
        status, response, answer = client.request("/hook", "3")
        release.set()
        client.close()
        assert sorted([done.get(timeout=TIMEOUT), done.get(timeout=TIMEOUT)]) == [1, 2]
    assert status == 503
    assert response.getheader("Retry-After") == "1"
    assert answer["title"] == "Queue full"


def test_requests_are_refused_with_503_once_the_app_is_shutting_down(collected) -> None:
    source = WebhookSource("/hook", port=0)
    app = collecting_app(source, collected)
    with running(app):
        client = client_for(source)
        assert client.request("/hook")[0] == 202
        collected.get(timeout=TIMEOUT)
        app.request_shutdown()
        status, response, _ = client.request("/hook")
        client.close()
    assert status == 503 and response.getheader("Retry-After") is not None
    assert collected.empty() and source.empty()


# -- auth -----------------------------------------------------------------------------------


def test_bearer_token(collected) -> None:
    source = WebhookSource("/hook", port=0, auth=BearerToken("s3cret"))
    with running(collecting_app(source, collected)):
        client = client_for(source)
        status, response, answer = client.request("/hook")
        assert status == 401 and response.getheader("WWW-Authenticate", "").startswith("Bearer")
        assert answer["title"] == "Unauthorized"
        assert client.request("/hook", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert client.request("/hook", headers={"Authorization": "Bearer s3cret"})[0] == 202
        client.close()
        collected.get(timeout=TIMEOUT)
    assert collected.empty()


def test_hmac_signature_over_the_body(collected) -> None:
    auth = HmacSignature("k3y", header="X-Hub-Signature-256")
    source = WebhookSource("/hook", port=0, auth=auth)
    body = b'{"action": "opened"}'
    with running(collecting_app(source, collected)):
        client = client_for(source)
        status, response, _ = client.request("/hook", body)
        assert status == 401 and "HMAC-SHA256" in response.getheader("WWW-Authenticate", "")
        forged = {"X-Hub-Signature-256": auth.sign(b'{"action": "closed"}')}
        assert client.request("/hook", body, headers=forged)[0] == 401
        signed = {"X-Hub-Signature-256": auth.sign(body)}
        assert client.request("/hook", body, headers=signed)[0] == 202
        client.close()
        assert collected.get(timeout=TIMEOUT)[1]["body"] == {"action": "opened"}
    assert collected.empty()


# -- respond="result" -----------------------------------------------------------------------


def test_result_mode_answers_with_the_handlers_return_value_or_an_error(caplog) -> None:
    source = WebhookSource("/calc", port=0, respond="result", reply_timeout_s=0.3)
    app = OneStepApp("calc")
    release = threading.Event()

    @app.task(source=source, concurrency=2)
    def calc(ctx, item):
        body = item["body"]
        if body.get("boom"):
            raise ValueError("boom")
        if body.get("hang"):
            release.wait(TIMEOUT)
        return {"double": body["n"] * 2}

    with caplog.at_level(logging.ERROR, logger="onestep.webhook"), running(app):
        client = client_for(source)
        ok = client.request("/calc", '{"n": 21}')
        failed = client.request("/calc", '{"boom": true}')
        timed_out = client.request("/calc", '{"hang": true, "n": 0}')
        release.set()
        client.close()
    assert ok[0] == 200 and ok[2] == {"double": 42}
    assert failed[0] == 500 and failed[2]["title"] == "Handler failed"
    error_id = failed[2]["description"].removeprefix("error id ")
    assert len(error_id) == 8
    assert any(error_id in record.getMessage() for record in caplog.records)
    assert timed_out[0] == 504


@pytest.mark.parametrize(
    ("result", "reason"),
    [(float("nan"), "Out of range float"), (object(), "not JSON serializable")],
)
def test_a_result_json_cannot_encode_is_500_and_a_dead_letter_of_kind_encode(
    result: Any, reason: str, caplog
) -> None:
    source = WebhookSource("/calc", port=0, respond="result")
    dead = MemoryQueue("dead")
    app = OneStepApp("encode")
    calls: list[Any] = []

    @app.task(source=source, dead_letter=dead, retry=MaxAttempts(3))
    def calc(ctx, item):
        calls.append(item["body"])
        return result

    with caplog.at_level(logging.ERROR, logger="onestep.webhook"), running(app):
        client = client_for(source)
        status, response, answer = client.request("/calc", "7")
        client.close()
        letter = dead.get(timeout=TIMEOUT)
    assert status == 500 and answer["title"] == "Handler failed"
    assert response.getheader("Content-Type") == "application/json"
    error_id = answer["description"].removeprefix("error id ")
    assert any(error_id in record.getMessage() for record in caplog.records)
    assert letter["failure"]["kind"] == "encode"
    assert letter["failure"]["exception_type"] == "EncodeError"
    assert reason in letter["failure"]["message"]
    assert letter["payload"]["body"] == 7
    assert calls == [7]  # an encode failure is never retried


# -- sharing a server -----------------------------------------------------------------------


def test_two_sources_share_one_server_routed_by_path_and_method() -> None:
    app = OneStepApp("shared")
    seen: queue.Queue[tuple[str, Any]] = queue.Queue()
    orders = WebhookSource("/orders", port=0)
    updates = WebhookSource("/orders", port=0, methods=("PUT", "PATCH"), name="order-updates")
    users = WebhookSource("/users", port=0, respond="result")

    @app.task(source=orders)
    def create(ctx, item):
        seen.put(("create", item["body"]))

    @app.task(source=updates)
    def update(ctx, item):
        seen.put(("update", item["body"]))

    @app.task(source=users)
    def user(ctx, item):
        return {"user": item["body"]}

    with running(app):
        assert orders.url is not None and updates.url is not None and users.url is not None
        assert urlsplit(orders.url).port == urlsplit(users.url).port == urlsplit(updates.url).port
        servers = [t for t in threading.enumerate() if t.name.startswith("onestep-webhook-")]
        assert len(servers) == 1
        client = client_for(orders)
        assert client.request("/orders", "1")[0] == 202
        assert client.request("/orders", "2", method="PUT")[0] == 202
        assert client.request("/users", '"ann"')[2] == {"user": "ann"}
        status, response, _ = client.request("/orders", method="DELETE")
        assert status == 405 and response.getheader("Allow") == "PATCH, POST, PUT"
        client.close()
        got = {seen.get(timeout=TIMEOUT), seen.get(timeout=TIMEOUT)}
    assert got == {("create", 1), ("update", 2)}


def test_a_path_and_method_served_twice_on_one_server_is_refused_at_open() -> None:
    # Opened by hand: through app.start() the StartupError is raised as well, but the
    # engine then leaves the direct-mode worker threads waiting (reported to the lead).
    first = WebhookSource("/hook", port=0)
    second = WebhookSource("/hook", port=0, name="other")
    first.open()
    try:
        with pytest.raises(ValueError, match="served by both"):
            second.open()
        assert second.url is None
    finally:
        first.close()


# -- embedding ------------------------------------------------------------------------------


class Health:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


def test_mount_on_a_falcon_app_keeps_its_own_routes(collected) -> None:
    source = WebhookSource("/hook")
    app = collecting_app(source, collected)
    host = falcon.App()
    host.add_route("/health", Health())
    assert mount(host, app) == [source]
    assert source.serve is False
    client = falcon.testing.TestClient(host)
    with running(app):
        assert not [t for t in threading.enumerate() if t.name.startswith("onestep-webhook")]
        result = client.simulate_post("/hook", json={"x": 1})
        assert result.status_code == 202
        assert collected.get(timeout=TIMEOUT)[1]["body"] == {"x": 1}
        assert client.simulate_get("/health").json == {"status": "ok"}
        assert client.simulate_get("/hook").status_code == 405
    assert source.url is None
    assert client.simulate_post("/hook", json={}).status_code == 503  # app stopped


def host_wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"host app: {environ['PATH_INFO']}".encode()]


@pytest.fixture
def serve_wsgi() -> Iterator[Any]:
    """Serve a WSGI app with waitress on a free port; stops it after the test."""
    servers: list[tuple[Any, threading.Thread]] = []

    def serve(wsgi_app: Any) -> str:
        server = waitress.create_server(wsgi_app, host="127.0.0.1", port=0, threads=4)
        thread = threading.Thread(target=server.run, name="test-waitress", daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.effective_port}"

    yield serve
    for server, thread in servers:
        server.close()
        thread.join(TIMEOUT)


def test_wsgi_middleware_routes_webhooks_and_passes_the_rest_through(collected, serve_wsgi) -> None:
    source = WebhookSource("/hook", auth=BearerToken("t"))
    app = collecting_app(source, collected)
    base = serve_wsgi(wsgi_middleware(host_wsgi_app, app))
    client = Client(base)
    with running(app):
        assert source.url is None  # the host's server serves it
        assert client.request("/hook", '{"y": 2}', headers={"Authorization": "Bearer t"})[0] == 202
        assert client.request("/hook")[0] == 401
        assert collected.get(timeout=TIMEOUT)[1]["body"] == {"y": 2}
        client.conn.request("GET", "/index")
        response = client.conn.getresponse()
        assert (response.status, response.read()) == (200, b"host app: /index")
    client.close()


# -- shutdown and load ----------------------------------------------------------------------


def run_clients(
    url: str,
    clients: int,
    total: int,
    stop: threading.Event | None = None,
    got_503: threading.Event | None = None,
) -> tuple[list[str], collections.Counter[Any]]:
    """`clients` threads with a keep-alive connection each post `total` requests between
    them (or until `stop`); returns the ids answered 202 and a count of every outcome.
    `got_503` is set at the first 503."""
    accepted: list[str] = []
    outcomes: collections.Counter[Any] = collections.Counter()
    lock = threading.Lock()
    remaining = iter(range(total))

    def post_until_done() -> None:
        client = Client(url)
        path = urlsplit(url).path
        try:
            for n in remaining:  # next() on a shared iterator is atomic under the GIL
                if stop is not None and stop.is_set():
                    return
                try:
                    status, _, answer = client.request(path, str(n))
                except (OSError, http.client.HTTPException):
                    with lock:
                        outcomes["connection error"] += 1
                    client.close()
                    client = Client(url)
                    continue
                with lock:
                    outcomes[status] += 1
                    if status == 202:
                        accepted.append(answer["id"])
                if status == 503 and got_503 is not None:
                    got_503.set()
        finally:
            client.close()

    threads = [threading.Thread(target=post_until_done) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return accepted, outcomes


class ProcessedCounter:
    """Records each processed webhook id; `wait_for(n)` waits until n were processed."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.changed = threading.Condition()

    def add(self, webhook_id: str) -> None:
        with self.changed:
            self.ids.append(webhook_id)
            self.changed.notify_all()

    def wait_for(self, count: int, timeout: float = 15.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.ids) >= count, timeout)


def test_shutdown_with_requests_in_flight_loses_nothing_answered_202() -> None:
    source = WebhookSource("/hook", port=0, queue_maxsize=200)
    app = OneStepApp("shutdown", shutdown_timeout_s=5)
    processed = ProcessedCounter()

    @app.task(source=source, concurrency=2)
    def handle(ctx, item):
        time.sleep(0.001)  # a slowish handler, so the queue is not empty at shutdown
        processed.add(ctx.current.meta["webhook_id"])

    stop_clients = threading.Event()
    result: list[Any] = []
    app.start()
    try:
        assert source.url is not None
        url = source.url
        clients = threading.Thread(
            target=lambda: result.extend(run_clients(url, 8, 100_000, stop_clients))
        )
        clients.start()
        assert processed.wait_for(50)
    finally:
        app.stop()  # while the clients keep posting
    stop_clients.set()
    clients.join(30)
    accepted, outcomes = result
    left_in_queue = source.qsize()
    print(
        f"\nshutdown: {dict(outcomes)}, {len(processed.ids)} processed before stop, "
        f"{left_in_queue} kept in the queue"
    )
    with running(app):  # the queued requests are handled after a restart
        assert processed.wait_for(len(accepted))
    assert sorted(processed.ids) == sorted(accepted)
    assert outcomes[503] > 0 or outcomes["connection error"] > 0


def test_load_50_clients_5000_requests_each_202_processed_exactly_once() -> None:
    source = WebhookSource("/hook", port=0, queue_maxsize=20)
    app = OneStepApp("load")
    processed = ProcessedCounter()
    got_503 = threading.Event()

    @app.task(source=source, concurrency=2)
    def handle(ctx, item):
        got_503.wait(TIMEOUT)  # hold the workers until the small queue has overflowed
        time.sleep(0.0002)  # slowish, so that it overflows again now and then
        processed.add(ctx.current.meta["webhook_id"])

    with running(app):
        assert source.url is not None
        started = time.perf_counter()
        accepted, outcomes = run_clients(source.url, 50, 5000, got_503=got_503)
        elapsed = time.perf_counter() - started
        assert processed.wait_for(len(accepted))
    print(
        f"\nload: {outcomes[202]} answered 202, {outcomes[503]} answered 503, "
        f"{sum(outcomes.values())} requests in {elapsed:.2f} s"
    )
    assert sum(outcomes.values()) == 5000
    assert set(outcomes) <= {202, 503}
    assert outcomes[503] > 0
    assert len(processed.ids) == len(set(processed.ids)) == len(accepted)
    assert set(processed.ids) == set(accepted)


# -- examples -------------------------------------------------------------------------------


@pytest.mark.parametrize("launcher", ["python", "onestep run"])
@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ("webhook_standalone.py", ["shutdown: total 17", "(401,", "'price': 12"]),
        (
            "webhook_in_falcon_app.py",
            ["'status': 'ok'", "POST /events -> (202,", "(405,", "host server closed"],
        ),
    ],
)
def test_webhook_examples_stop_by_themselves(
    launcher: str, example: str, expected: list[str]
) -> None:
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    command = [sys.executable] if launcher == "python" else [sys.executable, "-m", "onestep", "run"]
    completed = subprocess.run(
        [*command, f"examples/{example}"], cwd=repo, capture_output=True, text=True, timeout=30
    )
    assert completed.returncode == 0, completed.stderr
    for text in expected:
        assert text in completed.stdout
    assert "(503," not in completed.stdout  # the demo waits until the webhook accepts
