"""The rough edges a first-time user hit, each fixed: the missing-extra message names the
one extra and the command that fits the install, a missing optional dependency exits 2
(run and check alike), `@app.task` without parentheses says to add them, and
`from onestep import *` brings the lazy names without failing on a missing extra."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from onestep import OneStepApp, _extras

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def test_the_missing_extra_is_named_alone_with_the_checkout_command() -> None:
    result = _python(
        """
        import sys
        sys.modules["pika"] = None  # as if the rabbitmq extra were not installed
        import onestep
        try:
            onestep.RabbitMQConnector
        except ImportError as exc:
            print(type(exc).__name__, exc)
        """
    )
    out = result.stdout
    assert out.startswith("MissingExtra onestep.RabbitMQConnector needs the package 'pika'")
    assert "'rabbitmq' extra" in out and "mysql" not in out and "redis" not in out
    assert "pip install -e '.[rabbitmq]'" in out  # run from the checkout's root
    assert "pip install 'pika>=1.3'" in out


def test_an_installed_wheel_gets_the_pinned_package_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_extras, "_checkout", lambda: None)
    monkeypatch.setattr(_extras.metadata, "version", lambda name: "0.1.0")
    assert _extras.install_command("redis") == "pip install 'onestep[redis]==0.1.0'"


def test_a_module_no_extra_provides_is_not_called_missing_extra() -> None:
    exc = ModuleNotFoundError("No module named 'nope'", name="nope")
    assert _extras.missing_extra("x", exc) is exc


APP = """
from onestep import MemoryQueue, OneStepApp

app = OneStepApp("proc")


@app.task(source=MemoryQueue("q"), executor="process")
def handle(ctx, item):
    return None
"""

WITHOUT_THESPIAN = """
import runpy, sys
sys.modules["thespian"] = None  # as if the thespian extra were not installed
sys.argv = ["onestep", *sys.argv[1:]]
runpy.run_module("onestep", run_name="__main__")
"""


@pytest.mark.parametrize("command", ["run", "check"])
def test_a_missing_optional_dependency_exits_2_for_run_and_check(
    tmp_path: Path, command: str
) -> None:
    (tmp_path / "proc_app.py").write_text(APP)
    result = _python(WITHOUT_THESPIAN, command, "proc_app.py", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "executor='process' needs the package 'thespian'" in result.stderr
    assert "'thespian' extra" in result.stderr


def test_app_task_without_parentheses_says_to_add_them() -> None:
    app = OneStepApp("newcomer")
    with pytest.raises(TypeError, match=r"needs parentheses.*@app\.task\(source=\.\.\.\)"):

        @app.task  # type: ignore[arg-type]
        def handle(ctx: object, item: object) -> None:
            pass


def test_import_star_brings_the_lazy_names_and_survives_a_missing_extra() -> None:
    result = _python(
        """
        from onestep import *
        print(RabbitMQConnector.__name__, WebhookSource.__name__, MySQLConnector.__name__)
        """
    )
    assert result.stdout.split() == ["RabbitMQConnector", "WebhookSource", "MySQLConnector"]
    result = _python(
        """
        import sys
        sys.modules["pika"] = None
        from onestep import *
        print("RabbitMQConnector" in dir(), "MySQLConnector" in dir())
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("kind", ["rabbitmq", "mysql", "postgres", "redis"])
def test_a_refused_connection_names_host_port_and_reason(kind: str) -> None:
    from onestep import MySQLConnector, PostgresConnector, RabbitMQConnector, RedisConnector

    port = _closed_port()
    connect = {
        "rabbitmq": lambda: RabbitMQConnector(f"amqp://guest:pw@127.0.0.1:{port}/").connect(),
        "mysql": lambda: MySQLConnector(f"mysql://root:pw@127.0.0.1:{port}/db").connect(),
        "postgres": lambda: PostgresConnector(f"postgresql://u:pw@127.0.0.1:{port}/db").connect(),
        "redis": lambda: RedisConnector(f"redis://:pw@127.0.0.1:{port}/0").ping(),
    }[kind]
    with pytest.raises(ConnectionError) as raised:
        connect()
    text = str(raised.value)
    assert f"127.0.0.1:{port}" in text or ("127.0.0.1" in text and str(port) in text)
    assert "refused" in text.lower()
    assert "pw" not in text.replace("password", "")
