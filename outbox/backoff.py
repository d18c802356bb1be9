"""Retry delays: exponential backoff with full jitter.

The delay before retry ``n`` (the attempt that just failed was number ``n``) is drawn uniformly
from ``[0, min(cap, base * 2**n)]``: retries of many failing jobs spread out instead of
arriving together.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from outbox.errors import ConfigurationError

__all__ = ["Backoff"]

_MAX_EXPONENT = 62  # 2**62 seconds is far past any cap; stops the power from growing without end


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter; ``base`` and ``cap`` are seconds."""

    base: float = 1.0
    cap: float = 3600.0

    def __post_init__(self) -> None:
        if not (self.base > 0 and self.cap >= self.base):
            raise ConfigurationError(
                f"backoff needs base > 0 and cap >= base, got base={self.base}, cap={self.cap}"
            )

    def ceiling(self, attempt: int) -> float:
        """The largest delay after attempt number ``attempt`` (1-based) failed."""
        return min(self.cap, self.base * 2.0 ** min(max(attempt, 0), _MAX_EXPONENT))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """A delay in seconds before retrying after attempt ``attempt`` failed."""
        return (rng or random).uniform(0.0, self.ceiling(attempt))
