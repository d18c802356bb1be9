"""Operator actions on jobs: plans that change a job's state from outside the runner."""

from __future__ import annotations

from outbox import queries
from outbox.db import Plan, Statement

__all__ = ["PRUNE_BATCH", "cancel_plan", "prune_plan"]

PRUNE_BATCH = 1000
"""Finished jobs deleted per statement: small, so pruning never holds long locks."""


def cancel_plan(schema: str, job_id: int) -> Plan[bool]:
    """Cancel a pending or running job; False when it had already finished (or never existed)."""
    rows = yield Statement(queries.query("cancel", schema), (job_id,))
    return bool(rows)


def prune_plan(schema: str, older_than: float, batch: int = PRUNE_BATCH) -> Plan[int]:
    """Delete finished jobs older than ``older_than`` seconds, a batch per statement."""
    total = 0
    while True:
        rows = yield Statement(
            queries.query("prune", schema), {"older_than": older_than, "limit": batch}
        )
        total += len(rows)
        if len(rows) < batch:
            return total
