"""The core API: the app, task registration, context, delivery, retry policies, events,
logging and the target loader. Imported by every other part of onestep; imports none."""
