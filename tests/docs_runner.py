"""Runs one code block of the docs as `__main__` and then fails (exit 3) if it left an
onestep thread or a pykka actor running. Started in a subprocess by tests/docs_blocks.py,
with the block's directory as the working directory."""

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
    script = sys.argv[1]
    # as `python script.py` does: the script's directory first, so it imports its siblings
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
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
