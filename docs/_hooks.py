"""MkDocs build hook (mkdocs.yml `hooks:`): drops the `# fragment: <why>` marker line that
opens a Python block which tests/unit/test_docs.py deliberately does not run, so readers
see the code without the note meant for the test. Called by MkDocs once per page."""

from __future__ import annotations

import re
from typing import Any

_FRAGMENT_MARKER = re.compile(r"^(```python[^\n]*\n)# fragment:[^\n]*\n", re.MULTILINE)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return _FRAGMENT_MARKER.sub(r"\1", markdown)
