"""Bounds on everything outbox stores or exports: kinds, error messages, metric labels.

Job data is user data. Whatever of it reaches a database column, a log line or a metric label
passes through one of these helpers first, so none of them can grow without bound.
"""

from __future__ import annotations

import functools
import re
from typing import Final

from outbox.errors import InvalidKindError, UnknownQueueError

__all__ = [
    "ERROR_HISTORY_LIMIT",
    "FAILURE_MESSAGE_LIMIT",
    "KIND_MAX_LENGTH",
    "LABEL_FALLBACK",
    "LABEL_MAX_LENGTH",
    "MAX_PAYLOAD_BYTES",
    "safe_failure_message",
    "safe_label",
    "sanitize_kind",
    "sanitize_queue",
]

KIND_MAX_LENGTH: Final = 64
"""Longest kind or queue name; long enough for dotted names, short enough for a metric label."""

MAX_PAYLOAD_BYTES: Final = 1024 * 1024
"""Default payload limit: jobs carry references to large data, not the data itself."""

FAILURE_MESSAGE_LIMIT: Final = 2048
"""Default byte limit of a stored error message: enough for a message, not for a traceback dump."""

ERROR_HISTORY_LIMIT: Final = 10
"""How many past errors a job keeps (the last ones)."""

LABEL_MAX_LENGTH: Final = 64
"""Longest metric label or log field value built from job data."""

LABEL_FALLBACK: Final = "unknown"
"""The label used when nothing of the value survives sanitizing."""

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_LABEL_DISALLOWED = re.compile(r"[^a-z0-9_.-]+")
# C0 and C1 controls, DEL, Unicode line and paragraph separators: nothing that forges a log line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_URL_SECRET = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)(?!\*\*\*@)[^\s@]+@")
"""The secret of ``scheme://user:secret@host`` (left as ``user:***@``)."""
_CONNINFO_QUOTE = re.compile(
    r"((?:invalid percent-encoded token|invalid connection option|missing \"=\" after|"
    r"unterminated quoted string in connection info string|invalid URI query parameter|"
    r"unexpected spaces found in)[^\"]*)\"[^\"]*\""
)
"""libpq's DSN parse errors quote a piece of the DSN, which may hold the password."""
_PASSWORD_SETTING = re.compile(
    r"(\bpassword\s*=\s*)(?!\*\*\*(?:\s|$))(?:'[^']*'|\S+)", re.IGNORECASE
)
"""A libpq ``password=…`` setting."""


def sanitize_kind(kind: str) -> str:
    """Return the canonical form of a job kind: trimmed and lowercased.

    Raises InvalidKindError when the result is empty, longer than KIND_MAX_LENGTH, or has a
    character outside ``a-z 0-9 . _ -`` (or starts with ``. _ -``).
    """
    if not isinstance(kind, str):
        raise InvalidKindError(f"a job kind must be a str, got {type(kind).__name__}")
    canonical = kind.strip().lower()
    if not _NAME.fullmatch(canonical):
        raise InvalidKindError(
            f"invalid job kind {safe_failure_message(kind, limit=80)!r}: use 1 to "
            f"{KIND_MAX_LENGTH} characters of a-z 0-9 . _ - starting with a letter or digit"
        )
    return canonical


def sanitize_queue(queue: str, declared: frozenset[str] | None = None) -> str:
    """Return the canonical form of a queue name (same rules as kinds).

    When ``declared`` is given, a queue outside it raises UnknownQueueError.
    """
    try:
        canonical = sanitize_kind(queue)
    except InvalidKindError as exc:
        raise UnknownQueueError(str(exc).replace("job kind", "queue name")) from None
    if declared is not None and canonical not in declared:
        raise UnknownQueueError(
            f"unknown queue {canonical!r}: declared queues are {sorted(declared)}"
        )
    return canonical


def _cut_utf8(text: str, limit: int) -> str:
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    # errors="ignore" drops only the partial character at the cut.
    return data[:limit].decode("utf-8", "ignore")


def safe_failure_message(error: BaseException | str, *, limit: int = FAILURE_MESSAGE_LIMIT) -> str:
    """Return what may be stored of an error: ``Type: message``, one line, at most ``limit`` bytes.

    Control characters become spaces, credentials in URLs (``scheme://user:secret@``) and in
    ``password=…`` settings become ``***``, and the cut never splits a UTF-8 character.
    Applying it to its own result changes nothing.
    """
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if isinstance(error, BaseException):
        try:
            message = str(error)
        except Exception:
            message = "<unprintable>"
        name = type(error).__name__
        text = f"{name}: {message}" if message else name
    else:
        text = error
    # Lone surrogates cannot be stored as UTF-8; replace them before measuring.
    text = text.encode("utf-8", "replace").decode("utf-8")
    text = _CONTROL.sub(" ", text).strip()
    text = _URL_SECRET.sub(r"\1***@", text)
    text = _CONNINFO_QUOTE.sub(r'\1"…"', text)
    text = _PASSWORD_SETTING.sub(r"\1***", text)
    return _cut_utf8(text, limit).rstrip()


def safe_label(value: object) -> str:
    """Return a bounded, low-cardinality label for metrics and logs.

    Lowercase ``a-z 0-9 _ . -`` only (other runs become ``_``), at most LABEL_MAX_LENGTH
    characters, and LABEL_FALLBACK when nothing is left.
    """
    if isinstance(value, str):
        return _label(value)
    return _label(str(value) if value is not None else "")


@functools.lru_cache(maxsize=4096)
def _label(text: str) -> str:
    # Cached: the runner labels every job's kind and queue, and those are few.
    label = _LABEL_DISALLOWED.sub("_", text.strip().lower())[:LABEL_MAX_LENGTH].strip("_")
    return label or LABEL_FALLBACK
