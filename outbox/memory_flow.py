"""The lease's flow rules (migration 0005's ``lease_fair``) in Python, for ``InMemoryStore``.

The same rules, step for step: kinds at their limit offer nothing; each group (a tenant, or the
jobs of no tenant) offers its next runnable jobs, only the head of each ordering key among
them; a job's round is its rank in its group over the group's weight; the lease takes rounds in
order, the oldest first within a round, within each kind's room; each start under a rate limit
spends a token.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from outbox.limits import ALL_TENANTS
from outbox.models import JobState

__all__ = ["Buckets", "fair_pick", "needs_flow", "refilled"]

Job = dict[str, Any]
Limits = Mapping[tuple[str, str], Mapping[str, Any]]
Buckets = dict[tuple[str, str], tuple[float, datetime]]


def needs_flow(jobs: Collection[Job], limits: Limits) -> bool:
    """Whether the fair lease applies: a limit is set, or a pending job has a tenant or key."""
    return bool(limits) or any(
        j["state"] == JobState.PENDING and (j["tenant"] or j["ordering_key"]) for j in jobs
    )


def refilled(
    limit: Mapping[str, Any], bucket: tuple[float, datetime] | None, now: datetime
) -> float | None:
    """Tokens a rate limit has now (None: no rate limit)."""
    rate, per = limit["rate"], limit["per_seconds"]
    if rate is None:
        return None
    if bucket is None:
        return float(rate)
    tokens, at = bucket
    return float(min(rate, tokens + (now - at).total_seconds() * rate / per))


def _room(limit: Mapping[str, Any] | None, running: int, tokens: float | None) -> int | None:
    if limit is None:
        return None
    bounds = [] if tokens is None else [math.floor(tokens)]
    if limit["max_running"] is not None:
        bounds.append(limit["max_running"] - running)
    return min(bounds) if bounds else None


def _lease_order(job: Job) -> tuple[int, datetime, int]:
    return (-job["priority"], job["run_at"], job["id"])


def fair_pick(
    jobs: Collection[Job],
    limits: Limits,
    buckets: Buckets,
    *,
    kinds: Sequence[str],
    queues: Sequence[str] | None,
    limit: int,
    now: datetime,
    cursor: str,
) -> tuple[list[Job], str]:
    """The jobs a fair lease takes, in lease order, and the tenant cursor for the next lease.

    Spends the leased jobs' tokens from ``buckets``.
    """
    running = [j for j in jobs if j["state"] == JobState.RUNNING]
    pending = [j for j in jobs if j["state"] == JobState.PENDING]
    kind_room: dict[str, int] = {}
    for (scope, name), lim in limits.items():
        if scope == "kind" and name in kinds:
            tokens = refilled(lim, buckets.get((scope, name)), now)
            room = _room(lim, sum(j["kind"] == name for j in running), tokens)
            if room is not None:
                kind_room[name] = room
    heads: dict[str, int] = {}
    for j in (*running, *pending):
        key = j["ordering_key"]
        if key is not None and (key not in heads or j["id"] < heads[key]):
            heads[key] = j["id"]

    def tenant_limit(tenant: str) -> Mapping[str, Any] | None:
        # Field by field, as the SQL coalesces: the tenant's own bound, else the "*" one.
        own, every = limits.get(("tenant", tenant)), limits.get(("tenant", ALL_TENANTS))
        if own is None or every is None:
            return own or every
        return {f: every[f] if own[f] is None else own[f] for f in own}

    tenant_running = Counter(j["tenant"] for j in running if j["tenant"] is not None)
    names = sorted({j["tenant"] for j in pending if j["tenant"] is not None})
    visit = 2 * limit + 10
    after = [t for t in names if t > cursor][:visit]
    wrapped = [t for t in names if t <= cursor][: visit - len(after)]
    position: dict[str | None, float] = {t: n for n, t in enumerate([*after, *wrapped], start=1)}
    if len(after) < visit and any(j["tenant"] is None for j in pending):
        position[None] = len(after) + 0.5  # the jobs of no tenant: met at the wrap
    groups: dict[str | None, tuple[int, int | None]] = {}  # tenant: (weight, room)
    for tenant in position:
        rule = None if tenant is None else tenant_limit(tenant)
        tokens = (
            None if rule is None else refilled(rule, buckets.get(("tenant", tenant or "")), now)
        )
        groups[tenant] = (
            1 if rule is None else rule["weight"],
            _room(rule, tenant_running[tenant], tokens),
        )
    groups = {t: g for t, g in groups.items() if g[1] is None or g[1] > 0}
    total_weight = sum(weight for weight, _ in groups.values())

    runnable: dict[str | None, list[Job]] = defaultdict(list)
    for j in pending:
        if (
            j["run_at"] <= now
            and j["kind"] in kinds
            and kind_room.get(j["kind"], 1) > 0
            and (queues is None or j["queue"] in queues)
            and (j["ordering_key"] is None or heads[j["ordering_key"]] == j["id"])
        ):
            runnable[j["tenant"]].append(j)
    offered: list[tuple[int, float, Job]] = []
    for tenant, (weight, room) in groups.items():
        share = max(1, math.ceil(2 * limit * weight / total_weight))
        share = min(share, limit, room if room is not None else limit)
        for rank, j in enumerate(sorted(runnable[tenant], key=_lease_order)[:share], start=1):
            offered.append((math.ceil(rank / weight), position[tenant], j))
    offered.sort(key=lambda o: (o[0], o[1], *_lease_order(o[2])))
    taken_per_kind: Counter[str] = Counter()
    picked: list[Job] = []
    for _, _, j in offered:
        taken_per_kind[j["kind"]] += 1
        if j["kind"] in kind_room and taken_per_kind[j["kind"]] > kind_room[j["kind"]]:
            continue
        picked.append(j)
        if len(picked) == limit:
            break
    for key, taken in [
        *((("kind", k), n) for k, n in Counter(j["kind"] for j in picked).items()),
        *((("tenant", t), n) for t, n in Counter(j["tenant"] for j in picked).items() if t),
    ]:
        rule = limits.get(key) if key[0] == "kind" else tenant_limit(key[1])
        tokens = None if rule is None else refilled(rule, buckets.get(key), now)
        if tokens is not None:
            buckets[key] = (tokens - taken, now)
    if len(picked) >= limit:  # the next lease starts after the last tenant served...
        cursor = picked[-1]["tenant"] or ""
    elif after or wrapped:  # ...or after the last one visited, when none was cut off
        cursor = [*after, *wrapped][-1]
    return picked, cursor
