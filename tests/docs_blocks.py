"""The code blocks of the documentation, for the tests that run them: tests/unit/test_docs.py
(blocks that need no server) and tests/integration/test_docs_blocks.py (blocks marked
`# needs: rabbitmq`, `# needs: mysql`, `# needs: postgres` or `# needs: redis`).

A fenced ```python block in docs/**/*.md is run in a fresh subprocess as `__main__`, in a
temporary directory that holds the page's titled blocks (```python title="tasks.py"```) as
files, so one block can import another; a block titled `test_*.py` is run with pytest.
docs/contributing.md describes the markers:

- `# fragment: <why>` on the first line: a piece of a larger program, not run (the reason
  is required; the build hook docs/_hooks.py hides the line from readers);
- `# needs: rabbitmq` / `mysql` / `postgres` / `redis` on the first line: run by the
  integration tests against the real server (skipped with the reason without it,
  failing under CI).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
RUNNER = Path(__file__).resolve().parent / "docs_runner.py"
SERVERS = frozenset({"rabbitmq", "mysql", "postgres", "redis"})
#: Seconds a block may run: each must end on its own (request_shutdown, a bounded feed).
BLOCK_TIMEOUT_S = 45.0

_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)(?P<info>[^`]*)$")
_TITLE = re.compile(r'title="(?P<title>[^"]+)"')


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language, its title (a file name) and code."""

    path: Path
    line: int
    lang: str
    title: str | None
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"

    @property
    def first_line(self) -> str:
        return self.code.split("\n", 1)[0].strip()

    @property
    def fragment_reason(self) -> str | None:
        """The reason after `# fragment:`, or None for a block that runs."""
        if self.first_line.startswith("# fragment:"):
            return self.first_line.removeprefix("# fragment:").strip()
        return None

    @property
    def needs(self) -> frozenset[str]:
        """The servers named by `# needs: a, b` on the first line."""
        if not self.first_line.startswith("# needs:"):
            return frozenset()
        names = self.first_line.removeprefix("# needs:").replace(",", " ").split()
        return frozenset(names)


def doc_files() -> list[Path]:
    """Every Markdown file of the docs, and the README."""
    return [*sorted(DOCS.rglob("*.md")), REPO / "README.md"]


def parse_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of one Markdown file, in order."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None or not match["lang"]:
            i += 1
            continue
        indent = len(match["indent"])
        title = _TITLE.search(match["info"])
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:])
            i += 1
        blocks.append(
            Block(
                path,
                start + 1,
                match["lang"],
                title["title"] if title else None,
                "\n".join(body) + "\n",
            )
        )
        i += 1
    return blocks


def python_blocks() -> list[Block]:
    return [b for f in doc_files() for b in parse_blocks(f) if b.lang == "python"]


def runnable_blocks(*, needing: frozenset[str] = frozenset()) -> list[Block]:
    """The Python blocks that run: not fragments, and needing exactly `needing` or, with
    the empty default, no server."""
    return [
        b
        for b in python_blocks()
        if b.fragment_reason is None and (b.needs & needing if needing else not b.needs)
    ]


def page_files(path: Path) -> dict[str, str]:
    """The titled Python blocks of a page: file name -> code."""
    return {b.title: b.code for b in parse_blocks(path) if b.lang == "python" and b.title}


def run_block(
    block: Block, workdir: Path, substitutions: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `block` as `__main__` in a subprocess in `workdir` (holding its page's titled
    blocks as files), each `old -> new` of `substitutions` applied to every file first.
    The runner fails the block if it left an onestep thread or a pykka actor behind."""

    def substituted(code: str) -> str:
        for old, new in (substitutions or {}).items():
            code = code.replace(old, new)
        return code

    for name, code in page_files(block.path).items():
        target = workdir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(substituted(code), encoding="utf-8")
    script = workdir / f"_block_{block.line}.py"
    script.write_text(substituted(block.code), encoding="utf-8")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    with_pytest = ["--pytest"] if block.title and Path(block.title).name.startswith("test_") else []
    return subprocess.run(
        [sys.executable, str(RUNNER), *with_pytest, str(script)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
        check=False,
    )


def explain(block: Block, completed: subprocess.CompletedProcess[str]) -> str:
    return (
        f"{block.id} exited {completed.returncode}\n--- stdout\n{completed.stdout[-3000:]}"
        f"\n--- stderr\n{completed.stderr[-5000:]}"
    )
