"""What the runner's services share: held jobs keyed by (id, attempt), renewal that pauses."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from outbox import HandlerMux, Job, JobState
from outbox.runner.state import Held, Lane, Shared


def held(shared: Shared, job_id: int, attempt: int) -> Held:
    mux = HandlerMux()
    mux.register("k", lambda job: None)
    now = datetime.now(timezone.utc)
    job = Job(
        id=job_id, kind="k", queue="default", payload=None, state=JobState.RUNNING,
        priority=0, attempts=attempt, max_attempts=5, run_at=now, created_at=now,
    )  # fmt: skip
    entry = Held(job, shared.lanes[0], mux.route("k"), (job.id, job.attempts))
    shared.lanes[0].busy += 1
    shared.held[entry.key] = entry
    return entry


async def test_an_old_attempts_clean_up_never_drops_the_new_attempts_lease():
    shared = Shared([Lane(None, 10)], batch_size=10)
    old = held(shared, 7, 1)
    new = held(shared, 7, 2)  # the lease was lost, and this runner leased the job again
    new.task = asyncio.create_task(asyncio.sleep(10))
    shared.forget(old)  # the old attempt's handler ends late
    assert list(shared.held) == [(7, 2)]
    assert shared.renewable(now=0.0, lease_seconds=30) == [(7, 2)]
    new.task.cancel()


async def test_leases_are_not_renewed_once_outcomes_have_failed_for_longer_than_a_lease():
    shared = Shared([Lane(None, 10)], batch_size=10)
    running = held(shared, 1, 1)
    running.task = asyncio.create_task(asyncio.sleep(10))
    waiting = held(shared, 2, 1)
    waiting.outcome_queued = True
    finished_unrecorded = held(shared, 3, 1)
    finished_unrecorded.task = asyncio.create_task(asyncio.sleep(0))
    await asyncio.sleep(0.01)
    assert sorted(shared.renewable(now=100.0, lease_seconds=30)) == [(1, 1), (2, 1)]
    shared.writes_failing_since = 100.0
    assert shared.renewable(now=129.0, lease_seconds=30) is not None  # within a lease: renew
    assert shared.renewable(now=131.0, lease_seconds=30) is None  # past it: let them expire
    running.task.cancel()
