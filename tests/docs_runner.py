"""Runs one code block of the docs as `__main__` (with `--pytest`: runs the tests in it
with pytest) and then fails (exit 3) if it left an onestep thread or a pykka actor
running. Started in a subprocess by tests/docs_blocks.py, in the block's directory."""

from __future__ import annotations

import os
import runpy
import sys
import threading
import time


def leftovers() -> list[str]:
    import pykka

    threads = [
        t.name
        for t in threading.enumerate()
        if t.is_alive() and (t.name.startswith("onestep-") or "Actor-" in t.name)
    ]
    return threads + [repr(ref) for ref in pykka.ActorRegistry.get_all()]


def main() -> None:
    with_pytest = sys.argv[1] == "--pytest"
    script = sys.argv[-1]
    # as `python script.py` does: the script's directory first, so it imports its siblings
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    if with_pytest:
        import pytest

        code = pytest.main(["-q", "-p", "no:cacheprovider", script])
        if code != 0:
            sys.exit(int(code))
    else:
        runpy.run_path(script, run_name="__main__")
    deadline = time.monotonic() + 2.0
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.01)  # threads that are stopping get a moment to finish
    left = leftovers()
    if left:
        print(f"the block left these running: {left}", file=sys.stderr, flush=True)
        os._exit(3)


if __name__ == "__main__":
    main()
