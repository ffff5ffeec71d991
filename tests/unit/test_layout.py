"""The layout rules CI holds besides the import contracts (.importlinter): no source
file over 400 lines, and connectors import onestep only through its public modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 400
SOURCE_PACKAGES = ("onestep", "actors", "adapters")

#: The onestep modules a connector may import.
PUBLIC_MODULES = frozenset({"onestep", "onestep.kit", "onestep.testing", "onestep.http"})


def _sources() -> list[Path]:
    return sorted(p for pkg in SOURCE_PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _too_long() -> dict[str, int]:
    lengths = {}
    for path in _sources():
        count = len(path.read_text(encoding="utf-8").splitlines())
        if count > MAX_LINES:
            lengths[path.relative_to(ROOT).as_posix()] = count
    return lengths


def _report(lengths: dict[str, int]) -> str:
    return "\n".join(f"  {name}: {count} lines" for name, count in sorted(lengths.items()))


def test_no_source_file_is_over_400_lines() -> None:
    too_long = _too_long()
    assert not too_long, f"over {MAX_LINES} lines (split by responsibility):\n{_report(too_long)}"


def _onestep_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a onestep module in `path`, TYPE_CHECKING and
    function-level ones included; `from onestep import x` counts as `onestep.x` too
    when x is a submodule (or a private name)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            if node.module == "onestep":
                found += [
                    (node.lineno, f"onestep.{a.name}")
                    for a in node.names
                    if a.name.startswith("_") or _is_submodule(a.name)
                ]
    return [(line, m) for line, m in found if m == "onestep" or m.startswith("onestep.")]


def _is_submodule(name: str) -> bool:
    package = ROOT / "onestep"
    return (package / f"{name}.py").exists() or (package / name / "__init__.py").exists()


def _is_private(module: str) -> bool:
    """A onestep module a connector must not import: a private one, or one outside the
    public modules (`onestep.testing.conformance` is public, being under onestep.testing)."""
    parts = module.split(".")
    if any(part.startswith("_") for part in parts[1:]):
        return True
    return module != "onestep" and ".".join(parts[:2]) not in PUBLIC_MODULES


def _private_onestep_imports() -> list[str]:
    bad = []
    for path in sorted((ROOT / "adapters").rglob("*.py")):
        for line, module in _onestep_imports(path):
            if _is_private(module):
                bad.append(f"  {path.relative_to(ROOT).as_posix()}:{line}: {module}")
    return bad


def test_connectors_import_only_public_onestep_modules() -> None:
    bad = _private_onestep_imports()
    assert not bad, "adapters/ imports private onestep modules:\n" + "\n".join(bad)


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    """The checks above can fail: a private import and a public one are told apart."""
    module = tmp_path / "connector.py"
    module.write_text(
        "from onestep import Delivery, _values, kit, ops\nimport onestep.core._app\n"
        "from onestep.kit import Source\nfrom onestep.testing import run_until_idle\n"
    )
    assert sorted(m for _, m in _onestep_imports(module)) == [
        "onestep",
        "onestep._values",
        "onestep.core._app",
        "onestep.kit",
        "onestep.kit",
        "onestep.ops",
        "onestep.testing",
    ]
    private = {m for _, m in _onestep_imports(module) if _is_private(m)}
    assert private == {"onestep._values", "onestep.core._app", "onestep.ops"}
    assert not _is_private("onestep.testing.conformance")


def test_no_two_test_modules_share_a_name() -> None:
    """tests/unit, tests/integration and tests/faults are not packages: pytest imports
    their modules by file name, and two files of one name fail the whole run's collection
    (each passes when its folder runs alone)."""
    seen: dict[str, list[str]] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        seen.setdefault(path.name, []).append(path.relative_to(ROOT).as_posix())
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, f"test modules sharing a name: {clashes}"
