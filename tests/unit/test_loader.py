"""load_app: module and file targets, factories, and the TargetError for each mistake."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from onestep import OneStepApp
from onestep.core._loader import TargetError, load_app, split_target

UNIT_DIR = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def isolated_imports(monkeypatch):
    """Run from tests/unit (so `cli_apps` imports) and forget what the test imported."""
    monkeypatch.chdir(UNIT_DIR)
    saved_path = sys.path[:]
    saved_modules = set(sys.modules)
    yield
    sys.path[:] = saved_path
    for name in set(sys.modules) - saved_modules:
        del sys.modules[name]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("pkg.mod", ("pkg.mod", "app")),
        ("pkg.mod:make_app", ("pkg.mod", "make_app")),
        ("pkg.mod:apps.main", ("pkg.mod", "apps.main")),
        ("path/to/file.py", ("path/to/file.py", "app")),
        ("path/to/file.py:other", ("path/to/file.py", "other")),
    ],
)
def test_split_target(target, expected):
    assert split_target(target) == expected


def test_module_target_defaults_to_app():
    app = load_app("cli_apps.apps")
    assert isinstance(app, OneStepApp)
    assert app.name == "cli-graph"


def test_module_target_with_attribute():
    assert load_app("cli_apps.apps:other_app").name == "cli-other"


def test_the_current_directory_is_put_on_sys_path(monkeypatch):
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(UNIT_DIR))])
    assert load_app("cli_apps.apps").name == "cli-graph"
    assert str(UNIT_DIR) in sys.path


def test_file_target(tmp_path):
    (tmp_path / "helper_for_target.py").write_text("NAME = 'from-a-sibling'\n")
    (tmp_path / "my_app.py").write_text(
        "from helper_for_target import NAME\n"
        "from onestep import OneStepApp\n"
        "app = OneStepApp(NAME)\n"
        "second = OneStepApp('second')\n"
    )
    assert load_app(str(tmp_path / "my_app.py")).name == "from-a-sibling"
    assert load_app(f"{tmp_path / 'my_app.py'}:second").name == "second"


def test_a_file_named_like_a_stdlib_module_does_not_replace_it(tmp_path):
    import json

    (tmp_path / "json.py").write_text("from onestep import OneStepApp\napp = OneStepApp('j')\n")
    assert load_app(str(tmp_path / "json.py")).name == "j"
    assert sys.modules["json"] is json


def test_factory_is_called():
    app = load_app("cli_apps.apps:make_app")
    assert app.name == "cli-factory"
    assert list(app.tasks) == ["handle"]


def test_target_error_is_a_value_error():
    assert issubclass(TargetError, ValueError)


@pytest.mark.parametrize(
    ("target", "fragments"),
    [
        ("no_such_module_xyz", ["module 'no_such_module_xyz' not found"]),
        ("cli_apps.no_such_module", ["module 'cli_apps.no_such_module' not found"]),
        (
            "cli_apps.imports_missing",
            [
                "importing module 'cli_apps.imports_missing' failed",
                "No module named 'onestep_missing_dependency_xyz'",
            ],
        ),
        ("cli_apps/no_such_file.py", ["file 'cli_apps/no_such_file.py' not found"]),
        ("cli_apps/apps", ["not found", "did you mean cli_apps/apps.py?"]),
        ("cli_apps/", ["'cli_apps/' is not a file"]),
        (
            "cli_apps.apps:missing",
            ["has no attribute 'missing'", "its OneStepApp attributes: app, other_app"],
        ),
        ("cli_apps:app", ["has no attribute 'app'", "it defines no OneStepApp"]),
        ("cli_apps.apps:NOT_AN_APP", ["is not a OneStepApp", "42 (type int)"]),
        (
            "cli_apps.apps:needs_arguments",
            ["is not a OneStepApp", "a function that needs arguments", "must take none"],
        ),
        (
            "cli_apps/flask_target.py",
            ["is not a OneStepApp", "(type Flask)", "needs arguments"],
        ),
        ("cli_apps.apps:transform", ["is not a OneStepApp", "transform", "needs arguments"]),
        (
            "cli_apps.apps:broken_factory",
            ["factory cli_apps.apps:broken_factory raised", "settings file is missing"],
        ),
        (
            "cli_apps.apps:returns_a_string",
            ["is not a OneStepApp", "returned 'not an app' (type str)"],
        ),
        ("cli_apps.apps:", ["names no attribute"]),
        (":app", ["names no module or file"]),
        ("cli_apps.apps:not-valid", ["is not a Python attribute name"]),
        ("not a module", ["is not a module name"]),
        ("", ["target must be"]),
    ],
)
def test_target_errors_say_what_is_wrong(target, fragments):
    with pytest.raises(TargetError) as raised:
        load_app(target)
    for fragment in fragments:
        assert fragment in str(raised.value)


def test_a_module_raising_at_import_is_a_target_error(tmp_path):
    (tmp_path / "raises_at_import.py").write_text("raise RuntimeError('config is invalid')\n")
    with pytest.raises(TargetError, match="RuntimeError: config is invalid"):
        load_app(str(tmp_path / "raises_at_import.py"))
    assert "raises_at_import" not in sys.modules
