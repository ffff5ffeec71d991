"""Targets for the loader: an app, a factory, and things that are not apps."""

import sys

from onestep import MaxAttempts, MemoryQueue, OneStepApp

NOT_AN_APP = 42

app = OneStepApp("cli-graph", shutdown_timeout_s=5.0)
other_app = OneStepApp("cli-other")

incoming = MemoryQueue("incoming")
results = MemoryQueue("results")
failed = MemoryQueue("failed")


@app.task(
    source=incoming,
    emit=results,
    dead_letter=failed,
    retry=MaxAttempts(max_attempts=3, delay_s=0.5),
    timeout_s=2.0,
    concurrency=4,
)
def transform(ctx, item):
    return item


@app.task(source=results)
async def store(ctx, item):
    return None


def make_app():
    """A factory: `onestep run cli_apps.apps:make_app` calls it."""
    made = OneStepApp("cli-factory")

    @made.task(source=MemoryQueue("factory-in"))
    def handle(ctx, item):
        return None

    return made


def needs_arguments(name):
    return OneStepApp(name)


def broken_factory():
    raise RuntimeError("settings file is missing")


def returns_a_string():
    return "not an app"


def exits_factory():
    sys.exit("no config")
