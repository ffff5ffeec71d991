"""An app whose startup hook raises: `onestep run` must exit with code 1."""

from onestep import MemoryQueue, OneStepApp

app = OneStepApp("startup-fails")


@app.on_startup
def connect(app):
    raise ConnectionRefusedError("database at db.invalid:5432 refused the connection")


@app.task(source=MemoryQueue("jobs"))
def work(ctx, item):
    return None
