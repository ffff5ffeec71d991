"""Turns a CLI target (`module:attr` or `path/to/file.py[:attr]`) into a OneStepApp.

Called by `onestep run` and `onestep check`; every failure is a TargetError whose
message says what was wrong, so the CLI can print it and exit with code 2. That includes
a target whose import (or factory) calls `sys.exit()`; a KeyboardInterrupt (Ctrl-C while
a slow import runs) is the user stopping the command and passes through.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import reprlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from ._app import AppCore

DEFAULT_ATTR = "app"


#: The name prefix of a file target imported under a private module name (see `_import_file`).
TARGET_MODULE_PREFIX = "_onestep_target_"


class TargetError(ValueError):
    """The target names no importable module or file, or no OneStepApp in it."""


def load_app(target: str) -> AppCore:
    """Import `target` and return the OneStepApp it names.

    `target` is `module:attr` or `path/to/file.py[:attr]`; `attr` defaults to `app`
    and may be dotted. A zero-argument callable (a factory) is called. The current
    directory is put on `sys.path` first, so `onestep run myproject.app` works from the
    project root; a file's own directory is put there too, as `python file.py` does.
    """
    if not isinstance(target, str) or not target.strip():
        raise TargetError("target must be 'module:attr' or 'path/to/file.py[:attr]'")
    location, attr = split_target(target.strip())
    _put_on_sys_path(os.getcwd())
    if _is_file_path(location):
        module = _import_file(location)
        label = f"file {location!r}"
    else:
        module = _import_module(location)
        label = f"module {location!r}"
    obj = _get_attr(module, label, attr)
    return _as_app(obj, f"{location}:{attr}")


def split_target(target: str) -> tuple[str, str]:
    """`"pkg.mod:make"` -> `("pkg.mod", "make")`; `"file.py"` -> `("file.py", "app")`."""
    location, sep, attr = target.rpartition(":")
    if not sep:
        return target, DEFAULT_ATTR
    if not location:
        raise TargetError(f"target {target!r} names no module or file before ':'")
    if not attr:
        raise TargetError(f"target {target!r} names no attribute after ':'")
    if not all(part.isidentifier() for part in attr.split(".")):
        raise TargetError(f"{attr!r} in target {target!r} is not a Python attribute name")
    return location, attr


def _is_file_path(location: str) -> bool:
    return location.endswith(".py") or os.sep in location or "/" in location


def _put_on_sys_path(directory: str) -> None:
    if directory not in sys.path:
        sys.path.insert(0, directory)


def _import_module(name: str) -> ModuleType:
    if not all(part.isidentifier() for part in name.split(".")):
        raise TargetError(
            f"{name!r} is not a module name (dotted identifiers) nor a path to a .py file"
        )
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise TargetError(
                f"module {name!r} not found (searched sys.path, current directory included)"
            ) from exc
        raise TargetError(f"importing module {name!r} failed: {_describe(exc)}") from exc
    except SystemExit as exc:
        raise TargetError(f"importing module {name!r} {_exited(exc)}") from exc
    except Exception as exc:
        raise TargetError(f"importing module {name!r} failed: {_describe(exc)}") from exc


def _import_file(location: str) -> ModuleType:
    path = Path(location).expanduser()
    if not path.exists():
        hint = ""
        if not path.suffix and path.with_suffix(".py").is_file():
            hint = f"; did you mean {location}.py?"
        raise TargetError(f"file {location!r} not found{hint}")
    if not path.is_file():
        raise TargetError(f"{location!r} is not a file")
    path = path.resolve()
    module_name = path.stem
    # A file called json.py must not replace the json module for everyone else.
    if not module_name.isidentifier() or module_name in sys.modules:
        module_name = f"{TARGET_MODULE_PREFIX}{abs(hash(str(path))):x}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise TargetError(f"file {location!r} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    _put_on_sys_path(str(path.parent))
    # Registered before it runs, as an import would, so dataclasses and pickle find it.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(module_name, None)
        if isinstance(exc, SystemExit):
            raise TargetError(f"importing file {location!r} {_exited(exc)}") from exc
        if isinstance(exc, Exception):
            raise TargetError(f"importing file {location!r} failed: {_describe(exc)}") from exc
        raise
    return module


def _get_attr(module: ModuleType, label: str, attr: str) -> Any:
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TargetError(f"{label} has no attribute {attr!r}; {_apps_in(module)}") from None
    return obj


def _apps_in(module: ModuleType) -> str:
    apps = sorted(name for name, value in vars(module).items() if isinstance(value, AppCore))
    if not apps:
        return "it defines no OneStepApp"
    return f"its OneStepApp attributes: {', '.join(apps)}"


def _as_app(obj: Any, where: str) -> AppCore:
    if isinstance(obj, AppCore):
        return obj
    if not callable(obj):
        raise TargetError(f"{where} is not a OneStepApp: it is {_show(obj)}")
    try:
        inspect.signature(obj).bind()
    except TypeError:
        raise TargetError(
            f"{where} is not a OneStepApp: it is {_show(obj)}, a {_kind(obj)} that needs "
            "arguments (a factory of a OneStepApp must take none)"
        ) from None
    except ValueError:
        pass  # a builtin without a signature: try calling it
    try:
        app = obj()
    except SystemExit as exc:
        raise TargetError(f"factory {where} {_exited(exc)}") from exc
    except Exception as exc:
        raise TargetError(f"factory {where} raised {_describe(exc)}") from exc
    if not isinstance(app, AppCore):
        raise TargetError(
            f"{where} is not a OneStepApp: it is a factory that returned {_show(app)}"
        )
    return app


def _kind(obj: Any) -> str:
    if inspect.isclass(obj):
        return f"class ({obj.__name__})"
    return type(obj).__name__


def _show(obj: Any) -> str:
    if inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isclass(obj):
        return f"{obj.__qualname__} (type {type(obj).__name__})"
    return f"{reprlib.repr(obj)} (type {type(obj).__name__})"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _exited(exc: SystemExit) -> str:
    """`called sys.exit(3)`: a target must define an app, not end the process."""
    return f"called sys.exit({exc.code!r}) instead of defining an app"
