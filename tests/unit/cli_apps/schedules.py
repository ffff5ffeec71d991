"""Schedule apps for `--processes`: one on the default in-memory state store (refused),
one on a SQLiteStateStore (allowed), and a webhook app (its port is shared)."""

import os
import tempfile

from onestep import IntervalSource, OneStepApp, SQLiteStateStore, WebhookSource

in_memory = OneStepApp("beats-in-memory")
shared = OneStepApp(
    "beats-shared", state=SQLiteStateStore(os.path.join(tempfile.gettempdir(), "cli-beats.db"))
)
hooks = OneStepApp("hooks")

for app in (in_memory, shared):

    @app.task(source=IntervalSource.every(minutes=5, name="beat"))
    def beat(ctx, item):
        return None


@hooks.task(source=WebhookSource("/in", port=0))
def take(ctx, item):
    return None
