"""An app that stops with AppFailed, as after an actor failed past its restart limit."""

from onestep import AppFailed, MemoryQueue, OneStepApp


class FailingApp(OneStepApp):
    def run(self):
        raise AppFailed("source 'jobs' failed 6 times within 60.0s\nstopping the app")


app = FailingApp("app-failed")


@app.task(source=MemoryQueue("jobs"))
def work(ctx, item):
    return None
