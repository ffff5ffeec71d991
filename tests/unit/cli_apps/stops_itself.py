"""A factory whose app asks to stop as soon as it has started: `onestep run` exits 0."""

from onestep import MemoryQueue, OneStepApp


def make_app():
    app = OneStepApp("stops-itself")

    @app.task(source=MemoryQueue("jobs"))
    def work(ctx, item):
        return None

    @app.on_startup
    def stop_at_once(app):
        print("startup hook ran", flush=True)
        app.request_shutdown()

    return app
