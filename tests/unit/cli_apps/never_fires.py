"""A schedule on February 31st: refused when the module builds it."""

from onestep import CronSource, OneStepApp

app = OneStepApp("never-fires")


@app.task(source=CronSource("0 0 31 2 *"))
def leap(ctx, item):
    return None
