"""CSRF protection for the dashboard's forms: a double-submit token.

Each browser gets a random token in a cookie (``HttpOnly``, ``SameSite=Strict``, scoped to the
dashboard's path); every form carries the same token in a hidden field. A POST is accepted only
when the two match (compared in constant time) and, when the browser sends an ``Origin``, it is
the dashboard's own. Another site can make a browser send the cookie (SameSite aside) but can
neither read it nor guess it, so it cannot fill in the field.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["COOKIE", "remember", "token_for", "valid"]

COOKIE = "outbox_csrf"


def token_for(request: Request) -> str:
    """The browser's token: the cookie's, or a new one."""
    token = request.cookies.get(COOKIE, "")
    return token if len(token) >= 32 else secrets.token_urlsafe(32)


def remember(request: Request, response: Response, token: str) -> None:
    """Set the token's cookie on ``response`` unless the browser already holds it."""
    if request.cookies.get(COOKIE) != token:
        response.set_cookie(
            COOKIE, token, httponly=True, samesite="strict", path=_path(request),
            secure=request.url.scheme == "https",
        )  # fmt: skip


def valid(request: Request, submitted: Any) -> bool:
    """Whether a POST carries the browser's token and, if it says, comes from this origin."""
    cookie = request.cookies.get(COOKIE, "")
    if not isinstance(submitted, str) or len(cookie) < 32:
        return False
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        return False
    return hmac.compare_digest(submitted.encode(), cookie.encode())


def _path(request: Request) -> str:
    return str(request.scope.get("root_path") or "") + "/"
