"""The webhook destination: Standard Webhooks over httpx, one client per runner."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import time
from datetime import timezone
from typing import Any

from outbox.errors import ConfigurationError, PermanentError, RetryableError
from outbox.relay import Message, Template, require
from outbox.safety import safe_failure_message

__all__ = ["MAX_RETRY_AFTER", "WebhookDestination", "retry_after", "sign"]

MAX_RETRY_AFTER = 86_400.0
"""The longest Retry-After honoured (a day): a larger one is cut to it."""

RETRYABLE_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))


def _key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except ValueError:
            raise ConfigurationError("a whsec_ secret must be base64 after its prefix") from None
    return secret.encode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks signature: ``v1,`` + base64(HMAC-SHA256(id.timestamp.body))."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (seconds or an HTTP date), bounded; or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now_ts = time.time() if now is None else now
    return min(max(0.0, when.timestamp() - now_ts), MAX_RETRY_AFTER)


class WebhookDestination:
    """POSTs each message to the rendered URL."""

    def __init__(
        self, template: Template, *, secret: str | None, timeout: float, headers: dict[str, str]
    ) -> None:
        require("httpx", "webhook", "webhooks", timeout)
        if not template.text.startswith(("http://", "https://")):
            raise ConfigurationError("a webhook URL must start with http:// or https://")
        if secret is not None:
            _key(secret)  # a bad secret is refused now, not at the first job
        self.template = template
        self._secret = secret
        self._timeout = timeout
        self._headers = headers
        self._client: Any = None

    async def publish(self, message: Message) -> None:
        """POST, and judge the answer."""
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False)
        stamp = int(time.time())
        headers = {
            **self._headers, **message.headers, "content-type": message.content_type,
            "webhook-id": message.id, "webhook-timestamp": str(stamp),
        }  # fmt: skip
        if self._secret is not None:
            headers["webhook-signature"] = sign(self._secret, message.id, stamp, message.body)
        try:
            response = await self._client.post(
                message.target, content=message.body, headers=headers
            )
        except httpx.HTTPError as exc:
            raise RetryableError(f"webhook unreachable: {safe_failure_message(exc)}") from None
        status = response.status_code
        if 200 <= status < 300:
            return
        body = safe_failure_message(response.text, limit=200)
        if status in RETRYABLE_STATUS:
            raise RetryableError(
                f"webhook answered {status}: {body}",
                retry_after=retry_after(response.headers.get("retry-after")),
            )
        raise PermanentError(f"webhook answered {status}: {body}")

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
