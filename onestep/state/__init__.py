"""State stores: the StateStore protocol, the in-memory store, the task views and the
SQLite store. Imported by the core (the app's default store) and the schedules."""
