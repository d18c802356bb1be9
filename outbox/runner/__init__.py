"""The runner's wing: ``Runner`` and the services it supervises.

Layout (each module one service or one shared part; services never import each other):
``runner`` (configuration, public API), ``lifecycle`` (start-up, wiring, ordered stop),
``supervisor`` (watch and restart), ``state`` (what services share), ``dispatcher`` (lease),
``executor`` (run one job), ``completer`` (record outcomes), ``heartbeat`` (renew leases),
``maintenance`` (rescue, prune), ``scheduler`` (periodic jobs), ``listener`` (LISTEN),
``events`` (logs and observer), ``health`` (probe answers).
"""

from __future__ import annotations

from outbox.runner.events import RunSummary
from outbox.runner.health import Health
from outbox.runner.runner import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_WAIT_FOR_DB,
    Runner,
)

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "DEFAULT_WAIT_FOR_DB",
    "Health",
    "RunSummary",
    "Runner",
]
