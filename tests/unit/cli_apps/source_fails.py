"""An app whose source cannot open: `onestep run` must exit with code 1."""

from onestep import Delivery, OneStepApp, Source


class UnreachableSource(Source):
    name = "unreachable"

    def open(self):
        raise ConnectionError("broker at broker.invalid:5672 is unreachable")

    def fetch(self, limit):
        return []

    def ack(self, delivery: Delivery):
        pass

    def retry(self, delivery: Delivery, delay_s=None):
        pass

    def fail(self, delivery: Delivery, error=None):
        pass


app = OneStepApp("source-fails")


@app.task(source=UnreachableSource())
def work(ctx, item):
    return None
