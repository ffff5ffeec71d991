"""The adapters package re-exports the webhook embedding helpers lazily, and onestep
re-exports the connectors lazily."""

from __future__ import annotations

import pytest

import adapters
import onestep


def test_webhook_helpers_are_reexported_from_the_adapters_package():
    from adapters import webhook

    assert adapters.mount is webhook.mount
    assert adapters.wsgi_middleware is webhook.wsgi_middleware
    assert adapters.BearerToken is webhook.BearerToken


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_helper"):
        adapters.no_such_helper  # noqa: B018


def test_onestep_reexports_every_connector():
    from adapters.mysql import MySQLConnector
    from adapters.rabbitmq import RabbitMQConnector
    from adapters.redis import RedisConnector
    from adapters.webhook import WebhookSource

    assert onestep.MySQLConnector is MySQLConnector
    assert onestep.RabbitMQConnector is RabbitMQConnector
    assert onestep.RedisConnector is RedisConnector
    assert onestep.WebhookSource is WebhookSource
    with pytest.raises(AttributeError, match="NoSuchConnector"):
        onestep.NoSuchConnector  # noqa: B018


def test_onestep_exports_the_errors_a_producer_raises():
    from actors import EncodeError
    from adapters.rabbitmq import PublishRefused

    assert onestep.EncodeError is EncodeError
    assert onestep.PublishRefused is PublishRefused
    assert "EncodeError" in onestep.__all__
    assert "PublishRefused" in dir(onestep)
