"""The RabbitMQ destination: a robust connection per runner, publisher confirms, mandatory."""

from __future__ import annotations

import asyncio
from typing import Any

from outbox.errors import RetryableError
from outbox.relay import Message, Template, require
from outbox.safety import safe_failure_message

__all__ = ["RabbitDestination"]


class RabbitDestination:
    """Publishes persistent messages with ``message_id``; done on the broker's confirm."""

    def __init__(self, url: str, *, routing_key: Template, exchange: str, timeout: float) -> None:
        require("aio_pika", "RabbitMQ", "rabbitmq", timeout)
        self.template = routing_key
        self._url = url
        self._exchange_name = exchange
        self._timeout = timeout
        self._connection: Any = None
        self._exchange: Any = None
        self._lock = asyncio.Lock()

    async def _target(self) -> Any:
        import aio_pika

        async with self._lock:
            if self._connection is None or self._connection.is_closed:
                self._connection = await aio_pika.connect_robust(self._url, timeout=self._timeout)
                channel = await self._connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
                self._exchange = (
                    channel.default_exchange
                    if not self._exchange_name
                    else await channel.get_exchange(self._exchange_name, ensure=True)
                )
        return self._exchange

    async def publish(self, message: Message) -> None:
        """Publish with ``mandatory`` and wait for the confirm; unroutable is a failure."""
        import aio_pika
        from aio_pika import exceptions as pika_errors

        body = aio_pika.Message(
            message.body,
            message_id=message.id,
            content_type=message.content_type,
            headers=dict(message.headers),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            timestamp=message.time,
        )
        try:
            exchange = await self._target()
            await exchange.publish(
                body, routing_key=message.target, mandatory=True, timeout=self._timeout
            )
        except pika_errors.DeliveryError as exc:
            raise RetryableError(
                f"RabbitMQ returned the message (no queue takes routing key "
                f"{message.target!r}): {safe_failure_message(exc)}"
            ) from None
        except (pika_errors.AMQPError, OSError, asyncio.TimeoutError, RuntimeError) as exc:
            raise RetryableError(f"RabbitMQ publish failed: {safe_failure_message(exc)}") from None

    async def close(self) -> None:
        """Close the connection."""
        if self._connection is not None and not self._connection.is_closed:
            connection, self._connection = self._connection, None
            await connection.close()
