"""Flow limits per kind and per tenant, and the ordering keys that wait: plans and their shapes.

Limits live in the database (``<schema>.limits``), so every runner's lease obeys the same ones,
whatever code it runs. A kind's limit bounds the jobs of that kind running at once across
every runner (``max_running``) and the jobs it starts per period (``rate`` per ``per``
seconds, a token bucket that holds at most ``rate`` tokens). A tenant's limit does the same for
that tenant's jobs, and its ``weight`` is its share of each lease; the tenant ``"*"`` stands for
every tenant without a limit of its own. Slots are counted from the jobs that are running, so a
crashed runner's slots come back when the rescuer ends its expired leases.
"""

from __future__ import annotations

import numbers
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from outbox import queries
from outbox.db import Plan, Statement
from outbox.enqueuing import TENANT_MAX_BYTES, check_label
from outbox.errors import InvalidOptionError
from outbox.safety import sanitize_kind

__all__ = [
    "ALL_TENANTS",
    "BlockedKey",
    "Limit",
    "blocked_keys_plan",
    "limit_row",
    "limit_target",
    "limits_plan",
    "remove_limit_plan",
    "set_limit_plan",
]

ALL_TENANTS = "*"
"""The tenant name of the limit that applies to each tenant without a limit of its own."""

MAX_PER_SECONDS = 86_400.0
"""Longest rate period: a day."""

Scope = Literal["kind", "tenant"]


class Limit(BaseModel):
    """One limit, with what it holds back now."""

    model_config = ConfigDict(frozen=True)

    scope: Scope
    name: str
    """The kind, or the tenant (``"*"``: every tenant without a limit of its own)."""
    max_running: int | None
    """At most this many jobs running at once, across every runner; None: no bound."""
    rate: int | None
    """At most this many starts per ``per_seconds``; None: no bound."""
    per_seconds: float | None
    weight: int
    """A tenant's share of each lease, against the other tenants' (1 unless set)."""
    running: int
    """Jobs running now under this limit."""
    tokens: int | None
    """Starts the rate limit allows right now (None: no rate limit, or ``"*"``)."""
    waiting: int
    """Runnable jobs pending under this limit: when it is reached, they are what it holds back."""


class BlockedKey(BaseModel):
    """An ordering key whose oldest unfinished job failed an attempt and waits for its retry."""

    model_config = ConfigDict(frozen=True)

    ordering_key: str
    head_id: int
    """The job the key waits for: cancel it (or let it fail) to let the key move on."""
    kind: str
    tenant: str | None
    state: str
    attempts: int
    run_at: datetime
    """When the head's next attempt is due."""
    last_error: str | None
    waiting: int
    """Jobs of the key waiting behind the head."""


def limit_target(kind: str | None, tenant: str | None) -> tuple[Scope, str]:
    """The (scope, name) of a limit: exactly one of ``kind`` and ``tenant``."""
    if (kind is None) == (tenant is None):
        raise InvalidOptionError("give kind or tenant (exactly one) to name a limit")
    if kind is not None:
        return "kind", sanitize_kind(kind)
    assert tenant is not None
    if tenant != ALL_TENANTS:
        check_label("tenant", tenant, TENANT_MAX_BYTES)
    return "tenant", tenant


def _count(name: str, value: int | None, high: int) -> int | None:
    if value is None:
        return None
    if not (type(value) is int and 1 <= value <= high):
        raise InvalidOptionError(f"{name} must be an int from 1 to {high}, got {value!r}")
    return value


def _seconds(per: timedelta | float) -> float:
    seconds = per.total_seconds() if isinstance(per, timedelta) else per
    if not (
        isinstance(seconds, numbers.Real)
        and not isinstance(seconds, bool)
        and 0 < seconds <= MAX_PER_SECONDS
    ):
        raise InvalidOptionError(
            f"per must be a timedelta or seconds, more than 0 and at most a day, got {per!r}"
        )
    return float(seconds)


def limit_row(
    *,
    kind: str | None,
    tenant: str | None,
    max_running: int | None,
    rate: int | None,
    per: timedelta | float,
    weight: int | None,
) -> dict[str, Any]:
    """Validate a limit; return its row of ``<schema>.limits`` (scope, name and the bounds)."""
    scope, name = limit_target(kind, tenant)
    if weight is not None and scope == "kind":
        raise InvalidOptionError("weight is a tenant's share of a lease: give it with tenant=")
    if max_running is None and rate is None and weight is None:
        raise InvalidOptionError("give max_running, rate or weight (remove_limit removes a limit)")
    return {
        "scope": scope,
        "name": name,
        "max_running": _count("max_running", max_running, 2**31 - 1),
        "rate": _count("rate", rate, 2**31 - 1),
        "per_seconds": None if rate is None else _seconds(per),
        "weight": _count("weight", weight, 1000) or 1,
    }


def set_limit_plan(schema: str, row: dict[str, Any]) -> Plan[None]:
    """Replace the limit of a kind or tenant (a ``limit_row``): what it lacks is unlimited."""
    yield Statement(queries.query("set_limit", schema), row)


def remove_limit_plan(schema: str, *, kind: str | None, tenant: str | None) -> Plan[bool]:
    """Remove the limit of a kind or tenant; False when it had none."""
    scope, name = limit_target(kind, tenant)
    rows = yield Statement(queries.query("remove_limit", schema), {"scope": scope, "name": name})
    return bool(rows[0][0])


def limits_plan(schema: str) -> Plan[list[Limit]]:
    """Every limit, with the jobs running and waiting under it."""
    rows = yield Statement(queries.query("list_limits", schema))
    fields = list(Limit.model_fields)
    return [Limit.model_validate(dict(zip(fields, row, strict=True))) for row in rows]


def blocked_keys_plan(schema: str, limit: int = 100) -> Plan[list[BlockedKey]]:
    """Ordering keys held by a head that waits for a retry, the longest-waiting first."""
    rows = yield Statement(queries.query("blocked_keys", schema), {"limit": limit})
    fields = list(BlockedKey.model_fields)
    return [BlockedKey.model_validate(dict(zip(fields, row, strict=True))) for row in rows]
