"""Connectors to outside systems (RabbitMQ, MySQL, webhooks, schedules).

Each module implements `onestep.Source`/`onestep.Sink`; `onestep` re-exports their
public names lazily.
"""
