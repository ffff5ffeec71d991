"""Small apps that tests/unit/test_cli.py loads as `onestep run`/`check` targets."""

from onestep import Delivery, Source


class NullSource(Source):
    """A source that never has a message: subclasses add what a test needs."""

    name = "null"

    def fetch(self, limit):
        return []

    def ack(self, delivery: Delivery):
        pass

    def retry(self, delivery: Delivery, delay_s=None):
        pass

    def fail(self, delivery: Delivery, error=None):
        pass
