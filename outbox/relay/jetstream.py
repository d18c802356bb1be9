"""The NATS JetStream destination: one connection per runner (nats-py reconnects on its own)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from outbox.errors import RetryableError
from outbox.relay import Message, Template, require
from outbox.safety import safe_failure_message

__all__ = ["NatsDestination"]


class NatsDestination:
    """Publishes to JetStream with ``Nats-Msg-Id``; done on the PubAck."""

    def __init__(self, servers: str | Sequence[str], *, subject: Template, timeout: float) -> None:
        require("nats", "NATS", "nats", timeout)
        self.template = subject
        self._servers = [servers] if isinstance(servers, str) else list(servers)
        self._timeout = timeout
        self._nc: Any = None
        self._js: Any = None
        self._lock = asyncio.Lock()

    async def _jetstream(self) -> Any:
        import nats

        async with self._lock:
            if self._nc is None or self._nc.is_closed:
                self._nc = await nats.connect(
                    servers=self._servers,
                    connect_timeout=self._timeout,
                    max_reconnect_attempts=-1,  # a broker restart is waited out
                    allow_reconnect=True,
                )
                self._js = self._nc.jetstream(timeout=self._timeout)
        return self._js

    async def publish(self, message: Message) -> None:
        """Publish and wait for the stream's acknowledgement."""
        from nats import errors as nats_errors
        from nats.js import errors as js_errors

        headers = {
            **message.headers,
            "Nats-Msg-Id": message.id,
            "Content-Type": message.content_type,
        }
        try:
            js = await self._jetstream()
            await js.publish(message.target, message.body, timeout=self._timeout, headers=headers)
        except (nats_errors.NoRespondersError, js_errors.NoStreamResponseError):
            raise RetryableError(
                f"no JetStream stream takes subject {message.target!r}: create one"
            ) from None
        except (nats_errors.Error, js_errors.Error, OSError, asyncio.TimeoutError) as exc:
            raise RetryableError(f"NATS publish failed: {safe_failure_message(exc)}") from None

    async def close(self) -> None:
        """Drain and close the connection."""
        if self._nc is not None and not self._nc.is_closed:
            nc, self._nc = self._nc, None
            await nc.close()
