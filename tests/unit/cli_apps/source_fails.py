"""An app whose source cannot open: `onestep run` must exit with code 1."""

from cli_apps import NullSource
from onestep import OneStepApp


class UnreachableSource(NullSource):
    name = "unreachable"

    def open(self):
        raise ConnectionError("broker at broker.invalid:5672 is unreachable")


app = OneStepApp("source-fails")


@app.task(source=UnreachableSource())
def work(ctx, item):
    return None
