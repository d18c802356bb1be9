"""What a runner says about itself to probes: alive (its services run) and ready (its database).

``Runner.health()`` builds a :class:`Health`; ``outbox run --health-port`` serves it as
``/livez`` and ``/readyz``. Alive means every service is running or being restarted and the
event loop answers; ready means, in addition, that the database answers and its schema is the
one this version of outbox needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["LOOP_ANSWER_SECONDS", "READY_CHECK_SECONDS", "Health"]

LOOP_ANSWER_SECONDS = 5.0
"""How long the event loop may take to answer a probe before the runner counts as not alive."""

READY_CHECK_SECONDS = 5.0
"""How long the readiness check waits for the database."""


@dataclass(frozen=True)
class Health:
    """A runner's answer to a probe. ``checks`` maps each check to "ok" or what is wrong."""

    live: bool
    ready: bool
    checks: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The JSON body of a probe's answer."""
        return {"live": self.live, "ready": self.ready, "checks": dict(self.checks)}

    @classmethod
    def stopped(cls, why: str) -> Health:
        """The health of a runner that is not running."""
        return cls(live=False, ready=False, checks={"runner": why})
