"""Which extra a missing optional dependency belongs to, and the install command that fits
how onestep itself was installed; called where a lazily imported name fails (onestep,
onestep.compat, the process executor) and by the CLI, on the importing thread."""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path

#: top-level module -> (extra, what `pip install` takes to get the module alone)
_EXTRAS = {
    "pika": ("rabbitmq", "pika>=1.3"),
    "pymysql": ("mysql", "pymysql>=1.1"),
    "psycopg": ("postgres", "psycopg[binary]>=3.1 psycopg_pool>=3.2"),
    "psycopg_pool": ("postgres", "psycopg[binary]>=3.1 psycopg_pool>=3.2"),
    "redis": ("redis", "redis>=5 hiredis>=2"),
    "hiredis": ("redis", "redis>=5 hiredis>=2"),
    "thespian": ("thespian", "thespian>=3.10"),
}


def extra_for(module: str | None) -> str | None:
    """The extra that provides `module` (a dotted name counts by its top level)."""
    found = _EXTRAS.get(str(module).partition(".")[0])
    return found[0] if found else None


def _checkout() -> Path | None:
    """The source tree onestep runs from when it is a checkout (on the path, or an
    editable install of one); None for an installed wheel."""
    package = Path(__file__).resolve().parent
    if (package.parent / "setup.cfg").is_file() or (package.parent / "pyproject.toml").is_file():
        return package.parent
    try:
        text = metadata.distribution("onestep").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    if not text:
        return None
    try:
        info = json.loads(text)
    except ValueError:
        return None
    url = str(info.get("url", ""))
    if info.get("dir_info", {}).get("editable") and url.startswith("file://"):
        return Path(url.removeprefix("file://"))
    return None


def install_command(extra: str) -> str:
    """The command that installs `extra` as onestep was installed: `pip install -e
    '.[extra]'` in a checkout, else the package with the extra and its version pinned
    (the name `onestep` on the public index is another project, upstream onestep)."""
    tree = _checkout()
    if tree is not None:
        where = "." if Path(os.getcwd()).resolve() == tree.resolve() else str(tree)
        return f"pip install -e '{where}[{extra}]'"
    try:
        version = metadata.version("onestep")
    except metadata.PackageNotFoundError:
        return f"pip install 'onestep[{extra}]'"
    return f"pip install 'onestep[{extra}]=={version}'"


def missing_extra(what: str, exc: ModuleNotFoundError) -> ImportError:
    """The ImportError for `what` (e.g. `onestep.RabbitMQConnector`) whose import failed
    for want of module `exc.name`: it names the one extra and the command to install it.
    A module no extra provides gets `exc` itself back (a bug, not a missing extra)."""
    package = str(exc.name).partition(".")[0]
    found = _EXTRAS.get(package)
    if found is None:
        return exc
    extra, alone = found
    quoted = " ".join(f"'{requirement}'" for requirement in alone.split())
    error = MissingExtra(
        f"{what} needs the package {package!r} (onestep's {extra!r} extra): "
        f"{install_command(extra)}  (or only the dependency: pip install {quoted})"
    )
    error.extra = extra
    error.name = package
    return error


class MissingExtra(ImportError):
    """An optional dependency is not installed: a configuration error (the CLI exits 2,
    and a restart will not fix it). `extra` names the extra that provides it."""

    extra: str = ""
