"""Testing without a database: ``InMemoryStore``, and ``StoreContract``, the rules of a store.

Unit-test handlers with the real runner and no Postgres::

    store = InMemoryStore()
    job_id = store.enqueue("emails.welcome", {"to": "ada@example.com"})
    await drain(mux, store)
    assert store.get_job(job_id).state == "succeeded"

``StoreContract`` is the test suite every store passes (PgStore and InMemoryStore do, in
outbox's own tests). Subclass it with ``open_store``, ``add`` and ``get``; its tests are plain
methods that run their own event loop, so any test runner collects them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from outbox import tracing
from outbox.client import Outbox
from outbox.clock import SYSTEM_CLOCK, Clock
from outbox.enqueuing import IfExists, prepare
from outbox.errors import DuplicateJobError
from outbox.limits import limit_row, limit_target
from outbox.memory_flow import Buckets, fair_pick, needs_flow
from outbox.models import FINAL_STATES, Job, JobState
from outbox.mux import HandlerMux
from outbox.periodic import Fired, Schedule
from outbox.runner import Runner
from outbox.safety import ERROR_HISTORY_LIMIT
from outbox.store import Leased, LeaseKey, Outcome, RunnerRow, Store

__all__ = ["FakeClock", "InMemoryStore", "StoreContract", "drain"]


class FakeClock:
    """A Clock that moves only when the test says so: ``advance(seconds)`` (from ``start``, now).

    Give it to ``InMemoryStore(clock=...)`` and ``Runner(clock=...)``: leases expire, retries
    come due, backoffs end and periodic ticks fire when the test advances the clock, never on
    the wall clock. Thread-safe (the runner's heartbeat waits on it from its own thread).
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._start = start or datetime.now(timezone.utc)
        self._elapsed = 0.0
        self._cond = threading.Condition()
        self._sleepers: list[tuple[float, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def now(self) -> datetime:
        """The fake wall-clock time."""
        return self._start + timedelta(seconds=self._elapsed)

    def monotonic(self) -> float:
        """Seconds advanced so far."""
        return self._elapsed

    def advance(self, seconds: float) -> None:
        """Move time forward, waking every sleeper whose time has come."""
        with self._cond:
            self._elapsed += seconds
            due = [entry for entry in self._sleepers if entry[0] <= self._elapsed]
            self._cond.notify_all()
        for _, loop, future in due:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(_wake, future)

    @property
    def sleepers(self) -> int:
        """How many coroutines are sleeping on this clock now."""
        with self._cond:
            return len(self._sleepers)

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has been advanced by ``seconds``."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        entry = (self._elapsed + seconds, loop, loop.create_future())
        with self._cond:
            self._sleepers.append(entry)
        try:
            await entry[2]
        finally:
            with self._cond:
                self._sleepers.remove(entry)

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        """Wait for ``event`` until the clock has been advanced by ``seconds``."""
        if event.is_set():
            return True
        waiter = asyncio.ensure_future(event.wait())
        sleeper = asyncio.ensure_future(self.sleep(seconds))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiter, sleeper):
                task.cancel()
            await asyncio.gather(waiter, sleeper, return_exceptions=True)
        return event.is_set()

    def wait_in_thread(self, event: threading.Event, seconds: float) -> bool:
        """Block a thread until ``event`` is set or the clock has moved ``seconds``."""
        with self._cond:
            deadline = self._elapsed + seconds
            while not event.is_set() and self._elapsed < deadline:
                self._cond.wait(0.01)  # short, to see the event set without a notify
        return event.is_set()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class InMemoryStore:
    """A Store in a dict, with the same rules as Postgres. Thread-safe; for tests only."""

    def __init__(
        self,
        *,
        outbox: Outbox | None = None,
        clock: Clock | Callable[[], datetime] = SYSTEM_CLOCK,
    ) -> None:
        self.outbox = outbox or Outbox()
        self._clock: Callable[[], datetime] = clock.now if isinstance(clock, Clock) else clock
        self._jobs: dict[int, dict[str, Any]] = {}
        self._next_id = 1
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._periodic: dict[str, tuple[str, datetime]] = {}
        self._runners: dict[str, tuple[RunnerRow, datetime]] = {}
        self._limits: dict[tuple[str, str], dict[str, Any]] = {}
        self._buckets: Buckets = {}
        self._cursor = ""

    # -- the test's side ------------------------------------------------------------------

    def enqueue(
        self,
        kind: str,
        payload: Any = None,
        *,
        if_exists: IfExists = "return",
        **options: Any,
    ) -> int:
        """Add a job with ``outbox.enqueue``'s options and validation; return its id."""
        row = prepare(
            kind,
            payload,
            max_payload_bytes=self.outbox.max_payload_bytes,
            queues=self.outbox.queues,
            metadata=tracing.current_metadata(),
            **options,
        )
        now = self._clock()
        with self._lock:
            if row.unique_key is not None:
                for job in self._jobs.values():
                    live = job["state"] in (JobState.PENDING, JobState.RUNNING)
                    if live and (job["kind"], job["unique_key"]) == (row.kind, row.unique_key):
                        if if_exists == "raise":
                            raise DuplicateJobError(existing_id=job["id"])
                        return int(job["id"])
            job_id = self._next_id
            self._next_id += 1
            self._jobs[job_id] = {
                "id": job_id, "kind": row.kind, "queue": row.queue,
                "payload": orjson.loads(row.payload), "state": JobState.PENDING,
                "priority": row.priority, "attempts": 0, "max_attempts": row.max_attempts,
                "run_at": row.run_at or now + timedelta(seconds=row.delay), "created_at": now,
                "finished_at": None, "leased_until": None, "leased_by": None,
                "last_error": None, "errors": [], "unique_key": row.unique_key, "result": None,
                "metadata": None if row.metadata is None else orjson.loads(row.metadata),
                "timeout_seconds": row.timeout, "attempted_at": None, "updated_at": now,
                "tenant": row.tenant, "ordering_key": row.ordering_key,
            }  # fmt: skip
        self._notify()
        return job_id

    def get_job(self, job_id: int) -> Job | None:
        """The job with this id, or None."""
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else Job.model_validate(job)

    def jobs(self) -> list[Job]:
        """Every job, oldest first."""
        with self._lock:
            return [Job.model_validate(job) for job in self._jobs.values()]

    def _notify(self) -> None:
        for loop, event in list(self._waiters):
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(event.set)

    # -- the Store protocol -----------------------------------------------------------------

    async def open(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close."""

    async def check(self) -> None:
        """Always ready."""

    async def lease(
        self,
        runner: str,
        kinds: Sequence[str],
        queues: Sequence[str] | None,
        limit: int,
        lease_seconds: float,
    ) -> list[Leased]:
        """Lease runnable jobs in (priority desc, run_at, id) order, under the flow rules."""
        now = self._clock()
        with self._lock:
            jobs = self._jobs.values()
            if needs_flow(jobs, self._limits):
                chosen, self._cursor = fair_pick(
                    jobs, self._limits, self._buckets, kinds=kinds, queues=queues, limit=limit,
                    now=now, cursor=self._cursor,
                )  # fmt: skip
            else:
                runnable = [
                    job
                    for job in jobs
                    if job["state"] == JobState.PENDING
                    and job["run_at"] <= now
                    and job["kind"] in kinds
                    and (queues is None or job["queue"] in queues)
                ]
                runnable.sort(key=lambda j: (-j["priority"], j["run_at"], j["id"]))  # lease order
                chosen = runnable[:limit]
            leased = []
            for job in chosen:
                job.update(
                    state=JobState.RUNNING,
                    attempts=job["attempts"] + 1,
                    leased_until=now + timedelta(seconds=lease_seconds),
                    leased_by=runner,
                    attempted_at=now,
                    updated_at=now,
                )
                leased.append(Leased(*(job[field] for field in Leased._fields)))
            return leased

    def set_limit(
        self,
        *,
        kind: str | None = None,
        tenant: str | None = None,
        max_running: int | None = None,
        rate: int | None = None,
        per: timedelta | float = 1.0,
        weight: int | None = None,
    ) -> None:
        """``Outbox.set_limit``, for this store."""
        row = limit_row(
            kind=kind, tenant=tenant, max_running=max_running, rate=rate, per=per, weight=weight
        )
        with self._lock:
            self._limits[row["scope"], row["name"]] = row
            self._buckets.pop((row["scope"], row["name"]), None)

    def remove_limit(self, *, kind: str | None = None, tenant: str | None = None) -> bool:
        """``Outbox.remove_limit``, for this store."""
        key = limit_target(kind, tenant)
        with self._lock:
            self._buckets.pop(key, None)
            return self._limits.pop(key, None) is not None

    def _held(self, runner: str, job_id: int, attempts: int | None = None) -> dict[str, Any] | None:
        job = self._jobs.get(job_id)
        if job is None or job["state"] != JobState.RUNNING or job["leased_by"] != runner:
            return None
        if attempts is not None and job["attempts"] != attempts:
            return None
        return job

    @staticmethod
    def _add_error(job: dict[str, Any], error: str, now: datetime) -> None:
        job["last_error"] = error
        entry = {"attempt": job["attempts"], "at": now.isoformat(), "error": error}
        job["errors"] = [*job["errors"], entry][-ERROR_HISTORY_LIMIT:]

    async def record(self, runner: str, outcomes: Sequence[Outcome]) -> set[int]:
        """Write outcomes of leases still held."""
        now = self._clock()
        written = set()
        with self._lock:
            for outcome in outcomes:
                job = self._held(runner, outcome.id, outcome.attempts)
                if job is None:
                    continue
                state = JobState(outcome.state)
                job.update(state=state, leased_until=None, updated_at=now)
                if state == JobState.PENDING:
                    job["run_at"] = now + timedelta(seconds=outcome.delay)
                else:
                    job["finished_at"] = now
                if state == JobState.SUCCEEDED and outcome.result is not None:
                    job["result"] = orjson.loads(outcome.result)
                if outcome.error is not None:
                    self._add_error(job, outcome.error, now)
                written.add(outcome.id)
        return written

    def heartbeat(
        self, runner: str, leases: Sequence[LeaseKey], lease_seconds: float
    ) -> set[LeaseKey]:
        """Extend the leases still held."""
        until = self._clock() + timedelta(seconds=lease_seconds)
        alive = set()
        with self._lock:
            for job_id, attempts in leases:
                job = self._held(runner, job_id, attempts)
                if job is not None:
                    job["leased_until"] = until
                    alive.add((job_id, attempts))
        return alive

    async def release(self, runner: str, leases: Sequence[LeaseKey]) -> set[int]:
        """Hand held jobs back, giving back their attempt."""
        now = self._clock()
        released = set()
        with self._lock:
            for job_id, attempts in leases:
                job = self._held(runner, job_id, attempts)
                if job is not None:
                    job.update(
                        state=JobState.PENDING,
                        attempts=job["attempts"] - 1,
                        leased_until=None,
                        run_at=now,
                        updated_at=now,
                    )
                    released.add(job_id)
        if released:
            self._notify()
        return released

    async def seconds_until_due(
        self, kinds: Sequence[str], queues: Sequence[str] | None
    ) -> float | None:
        """Seconds until the earliest pending job of these kinds is due; None when none is."""
        now = self._clock()
        with self._lock:
            due = [
                job["run_at"]
                for job in self._jobs.values()
                if job["state"] == JobState.PENDING
                and job["kind"] in kinds
                and (queues is None or job["queue"] in queues)
            ]
        return None if not due else (min(due) - now).total_seconds()

    async def rescue(self, limit: int, held: Sequence[int] = ()) -> int:
        """Retry, or fail on their last attempt, jobs whose lease expired (but ``held``)."""
        now = self._clock()
        keep = set(held)
        with self._lock:
            expired = [
                job
                for job in self._jobs.values()
                if job["state"] == JobState.RUNNING
                and job["leased_until"] < now
                and job["id"] not in keep
            ]
            expired.sort(key=lambda j: j["leased_until"])
            for job in expired[:limit]:
                last = job["attempts"] >= job["max_attempts"]
                job.update(
                    state=JobState.FAILED if last else JobState.PENDING,
                    finished_at=now if last else None,
                    run_at=now,
                    leased_until=None,
                    updated_at=now,
                )
                message = f"LeaseExpired: runner {job['leased_by']} stopped renewing its lease"
                self._add_error(job, message, now)
            return len(expired[:limit])

    async def prune(self, older_than: float, *, once_per: float | None = None) -> int:
        """Delete jobs finished more than ``older_than`` seconds ago.

        One process holds the store, so every call is a round of its own, whatever ``once_per``.
        """
        cutoff = self._clock() - timedelta(seconds=older_than)
        with self._lock:
            old = [
                job_id
                for job_id, job in self._jobs.items()
                if job["state"] in FINAL_STATES and job["finished_at"] < cutoff
            ]
            for job_id in old:
                del self._jobs[job_id]
            return len(old)

    async def register_periodic(self, schedules: Sequence[Schedule]) -> None:
        """Record new or changed schedules, starting at their next tick."""
        now = self._clock()
        with self._lock:
            for s in schedules:
                if self._periodic.get(s.name, ("", now))[0] != s.spec:
                    self._periodic[s.name] = (s.spec, s.next_after(now))

    async def fire_periodic(self, schedules: Sequence[Schedule]) -> tuple[list[Fired], datetime]:
        """Enqueue the job of each due tick (the latest one after downtime)."""
        now = self._clock()
        fired = []
        for s in schedules:
            with self._lock:
                spec, due = self._periodic[s.name]
                if due > now:
                    continue
                tick, missed, upcoming = s.catch_up(due, now)
                self._periodic[s.name] = (spec, upcoming)
            job_id = self.enqueue(
                s.kind, orjson.loads(s.payload), queue=s.queue, priority=s.priority,
                max_attempts=s.max_attempts, unique_key=s.unique_key(tick),
            )  # fmt: skip
            fired.append(Fired(s.name, tick, job_id, missed))
        with self._lock:
            nexts = [self._periodic[s.name][1] for s in schedules]
        return fired, max(min(nexts, default=now), now)

    async def register_runner(self, row: RunnerRow) -> None:
        """Create or refresh a runner's row."""
        with self._lock:
            self._runners[row.id] = (row, self._clock())

    async def remove_runner(self, runner_id: str) -> None:
        """Delete a runner's row."""
        with self._lock:
            self._runners.pop(runner_id, None)

    async def expire_runners(self, stale: float) -> int:
        """Delete rows not refreshed for ``stale`` seconds."""
        cutoff = self._clock() - timedelta(seconds=stale)
        with self._lock:
            gone = [rid for rid, (_, seen) in self._runners.items() if seen < cutoff]
            for rid in gone:
                del self._runners[rid]
        return len(gone)

    def runners(self) -> list[RunnerRow]:
        """The runners' rows (the test's side)."""
        with self._lock:
            return [row for row, _ in self._runners.values()]

    async def unhandled_kinds(self, stale: float) -> list[tuple[str, int]]:
        """(kind, jobs) of runnable pending jobs no live runner serves."""
        now = self._clock()
        cutoff = now - timedelta(seconds=stale)
        with self._lock:
            live = [row for row, seen in self._runners.values() if seen >= cutoff]
            counts: dict[str, int] = {}
            for job in self._jobs.values():
                if job["state"] != JobState.PENDING or job["run_at"] > now:
                    continue
                served = any(
                    job["kind"] in row.kinds and (row.queues is None or job["queue"] in row.queues)
                    for row in live
                )
                if not served:
                    counts[job["kind"]] = counts.get(job["kind"], 0) + 1
        return sorted(counts.items(), key=lambda kc: (-kc[1], kc[0]))

    async def listen_for(self, seconds: float) -> None:
        """Nothing to do: every enqueue wakes this store's listeners."""

    async def notifications(self) -> AsyncIterator[None]:
        """Yield after each enqueue."""
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event)
        self._waiters.append(entry)
        try:
            while True:
                await event.wait()
                event.clear()
                yield
        finally:
            self._waiters.remove(entry)


async def drain(mux: HandlerMux, store: InMemoryStore, *, timeout: float = 10.0) -> None:
    """Run every job that is runnable now (and their retries due within ``timeout``)."""
    runner = Runner(mux, store=store, poll_interval=0.01, outbox=store.outbox)
    task = asyncio.create_task(runner.run())
    deadline = time.monotonic() + timeout
    kinds = set(mux.kinds())
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            if task.done():
                break
            if all(j.state in FINAL_STATES for j in store.jobs() if j.kind in kinds):
                break
    finally:
        runner.stop()
        await task


class StoreContract:
    """The rules every Store follows. Subclass it and fill in the three hooks below."""

    def open_store(self) -> contextlib.AbstractAsyncContextManager[Store]:
        """An async context manager yielding an open, empty store."""
        raise NotImplementedError

    async def add(self, store: Store, kind: str, **options: Any) -> int:
        """Enqueue a job in ``store`` with enqueue's options; return its id."""
        raise NotImplementedError

    async def get(self, store: Store, job_id: int) -> Job | None:
        """Read a job back from ``store``."""
        raise NotImplementedError

    async def advance(self, store: Store, seconds: float) -> None:
        """Let ``seconds`` pass for ``store`` (by default on the wall clock: override it)."""
        await asyncio.sleep(seconds)

    async def set_limit(self, store: Store, **limit: Any) -> None:
        """Set a flow limit in ``store`` with ``Outbox.set_limit``'s arguments."""
        raise NotImplementedError

    def check(self, body: Callable[[Store], Awaitable[None]]) -> None:
        """Run ``body`` with a fresh store on an event loop of its own."""

        async def main() -> None:
            async with self.open_store() as store:
                await body(store)

        asyncio.run(main())

    async def job(self, store: Store, job_id: int) -> Job:
        """Read a job that must exist."""
        job = await self.get(store, job_id)
        assert job is not None, f"job {job_id} is gone"
        return job

    def test_lease_order_is_priority_then_run_at_then_id(self) -> None:
        async def body(store: Store) -> None:
            low = await self.add(store, "k", priority=0)
            high = await self.add(store, "k", priority=5)
            low2 = await self.add(store, "k", priority=0)
            leased = await store.lease("r", ["k"], None, 10, 30)
            assert [j.id for j in leased] == [high, low, low2]
            assert await store.lease("r", ["k"], None, 10, 30) == []

        self.check(body)

    def test_lease_takes_at_most_the_limit_in_order(self) -> None:
        async def body(store: Store) -> None:
            # Added in an order that is neither the lease order nor its reverse, with ties
            # on priority (broken by run_at) and on priority and run_at (broken by id).
            base = datetime.now(timezone.utc) - timedelta(days=1)
            given = [(1, 0), (3, 20), (2, 0), (3, 10), (3, 10), (0, 0)]  # (priority, seconds)
            jobs = []
            for priority, seconds in given:
                run_at = base + timedelta(seconds=seconds)
                job_id = await self.add(store, "k", priority=priority, run_at=run_at)
                jobs.append((-priority, run_at, job_id))
            expected = [job_id for *_, job_id in sorted(jobs)]
            assert expected[:4] == [jobs[3][2], jobs[4][2], jobs[1][2], jobs[2][2]]

            # The ids as the store returned them: never re-sorted here.
            leased = [j.id for j in await store.lease("r", ["k"], None, 4, 30)]
            assert leased == expected[:4], f"leased {leased}, expected {expected[:4]}"
            rest = [j.id for j in await store.lease("r", ["k"], None, 4, 30)]
            assert rest == expected[4:], f"leased {rest}, expected {expected[4:]}"

        self.check(body)

    def test_lease_skips_jobs_scheduled_later(self) -> None:
        async def body(store: Store) -> None:
            await self.add(store, "k", delay=3600)
            assert await store.lease("r", ["k"], None, 10, 30) == []

        self.check(body)

    def test_lease_filters_by_kind_and_queue(self) -> None:
        async def body(store: Store) -> None:
            a = await self.add(store, "a", queue="q1")
            await self.add(store, "b", queue="q1")
            await self.add(store, "a", queue="q2")
            leased = await store.lease("r", ["a"], ["q1"], 10, 30)
            assert [j.id for j in leased] == [a]

        self.check(body)

    def test_leased_job_is_running_with_an_attempt_spent(self) -> None:
        async def body(store: Store) -> None:
            job_id = await self.add(store, "k", payload={"n": 1})
            [leased] = await store.lease("r", ["k"], None, 10, 30)
            assert (leased.id, leased.attempts, leased.payload) == (job_id, 1, {"n": 1})
            job = await self.job(store, job_id)
            assert job.state == JobState.RUNNING
            assert job.leased_by == "r"
            assert await store.lease("other", ["k"], None, 10, 30) == []

        self.check(body)

    def test_success_is_written_only_with_the_lease(self) -> None:
        async def body(store: Store) -> None:
            job_id = await self.add(store, "k")
            await store.lease("r", ["k"], None, 10, 30)
            assert await store.record("other", [Outcome(job_id, 1, "succeeded")]) == set()
            assert await store.record("r", [Outcome(job_id, 2, "succeeded")]) == set()
            done = await store.record("r", [Outcome(job_id, 1, "succeeded", result='{"x": 1}')])
            assert done == {job_id}
            job = await self.job(store, job_id)
            assert (job.state, job.result) == (JobState.SUCCEEDED, {"x": 1})
            assert job.finished_at is not None
            assert await store.record("r", [Outcome(job_id, 1, "failed", error="late")]) == set()

        self.check(body)

    def test_retry_waits_its_delay_and_keeps_the_error(self) -> None:
        async def body(store: Store) -> None:
            job_id = await self.add(store, "k")
            await store.lease("r", ["k"], None, 10, 30)
            retry = Outcome(job_id, 1, "pending", delay=0.3, error="ValueError: x")
            await store.record("r", [retry])
            job = await self.job(store, job_id)
            assert (job.state, job.last_error, job.finished_at) == (
                "pending",
                "ValueError: x",
                None,
            )
            assert [e["attempt"] for e in job.errors] == [1]
            assert await store.lease("r", ["k"], None, 10, 30) == []
            await self.advance(store, 0.4)
            [again] = await store.lease("r", ["k"], None, 10, 30)
            assert again.attempts == 2

        self.check(body)

    def test_failed_and_discarded_are_final(self) -> None:
        async def body(store: Store) -> None:
            a = await self.add(store, "k")
            b = await self.add(store, "k")
            await store.lease("r", ["k"], None, 10, 30)
            await store.record(
                "r",
                [Outcome(a, 1, "failed", error="E: a"), Outcome(b, 1, "discarded", error="E: b")],
            )
            assert (await self.job(store, a)).state == JobState.FAILED
            assert (await self.job(store, b)).state == JobState.DISCARDED
            assert (await self.job(store, b)).last_error == "E: b"
            assert await store.lease("r", ["k"], None, 10, 30) == []

        self.check(body)

    def test_error_history_keeps_the_last_ten(self) -> None:
        async def body(store: Store) -> None:
            job_id = await self.add(store, "k", max_attempts=20)
            for attempt in range(1, 13):
                await store.lease("r", ["k"], None, 10, 30)
                await store.record("r", [Outcome(job_id, attempt, "pending", error=f"E{attempt}")])
            job = await self.job(store, job_id)
            assert [e["attempt"] for e in job.errors] == list(range(3, 13))
            assert job.last_error == "E12"

        self.check(body)

    def test_heartbeat_extends_only_leases_still_held(self) -> None:
        async def body(store: Store) -> None:
            mine = await self.add(store, "k")
            await store.lease("r", ["k"], None, 10, 30)
            other = await self.add(store, "k")
            await store.lease("s", ["k"], None, 10, 30)
            before = (await self.job(store, mine)).leased_until
            alive = await asyncio.to_thread(store.heartbeat, "r", [(mine, 1), (other, 1)], 60)
            assert alive == {(mine, 1)}
            after = (await self.job(store, mine)).leased_until
            assert before is not None and after is not None and after > before

        self.check(body)

    def test_an_earlier_attempt_never_renews_the_next_attempts_lease(self) -> None:
        async def body(store: Store) -> None:
            job_id = await self.add(store, "k", max_attempts=5)
            await store.lease("r", ["k"], None, 10, 30)
            await store.record("r", [Outcome(job_id, 1, "pending", error="E")])
            await store.lease("r", ["k"], None, 10, 30)  # the same runner id, attempt 2
            alive = await asyncio.to_thread(store.heartbeat, "r", [(job_id, 1)], 60)
            assert alive == set()
            alive = await asyncio.to_thread(store.heartbeat, "r", [(job_id, 2)], 60)
            assert alive == {(job_id, 2)}

        self.check(body)

    def test_release_gives_back_the_attempt(self) -> None:
        async def body(store: Store) -> None:
            job_id = await self.add(store, "k")
            await store.lease("r", ["k"], None, 10, 30)
            assert await store.release("other", [(job_id, 1)]) == set()
            assert await store.release("r", [(job_id, 1)]) == {job_id}
            job = await self.job(store, job_id)
            assert (job.state, job.attempts) == (JobState.PENDING, 0)

        self.check(body)

    def test_runners_sharing_an_id_never_release_each_others_attempts(self) -> None:
        async def body(store: Store) -> None:
            job_id = await self.add(store, "k", max_attempts=5)
            await store.lease("same", ["k"], None, 10, 30)
            await store.record("same", [Outcome(job_id, 1, "pending", error="E")])
            await store.lease("same", ["k"], None, 10, 30)  # another process, attempt 2
            assert await store.release("same", [(job_id, 1)]) == set()
            job = await self.job(store, job_id)
            assert (job.state, job.attempts) == (JobState.RUNNING, 2)

        self.check(body)

    def test_expired_leases_are_retried_or_failed_on_the_last_attempt(self) -> None:
        async def body(store: Store) -> None:
            retry = await self.add(store, "k", max_attempts=2)
            last = await self.add(store, "k", max_attempts=1)
            await store.lease("dead", ["k"], None, 10, 0.1)
            assert await store.rescue(100) == 0
            await self.advance(store, 0.25)
            assert await store.rescue(100) == 2
            assert (await self.job(store, retry)).state == JobState.PENDING
            failed = await self.job(store, last)
            assert failed.state == JobState.FAILED
            assert failed.last_error is not None and failed.last_error.startswith("LeaseExpired")
            assert await store.record("dead", [Outcome(retry, 1, "succeeded")]) == set()

        self.check(body)

    def test_rescue_leaves_the_jobs_its_caller_still_holds(self) -> None:
        async def body(store: Store) -> None:
            mine = await self.add(store, "k")
            theirs = await self.add(store, "k")
            await store.lease("r", ["k"], None, 10, 0.1)
            await self.advance(store, 0.25)
            assert await store.rescue(100, held=[mine]) == 1
            assert (await self.job(store, mine)).state == JobState.RUNNING
            assert (await self.job(store, theirs)).state == JobState.PENDING

        self.check(body)

    def test_seconds_until_due_names_the_earliest_pending_job_of_the_kinds(self) -> None:
        async def body(store: Store) -> None:
            assert await store.seconds_until_due(["k"], None) is None
            await self.add(store, "k", delay=60)
            await self.add(store, "other")
            later = await store.seconds_until_due(["k"], None)
            assert later is not None and 50 < later <= 60
            await self.add(store, "k", queue="mail")
            now = await store.seconds_until_due(["k"], None)
            assert now is not None and now <= 0
            assert await store.seconds_until_due(["k"], ["nothere"]) is None

        self.check(body)

    def test_runners_register_refresh_expire_and_leave(self) -> None:
        async def body(store: Store) -> None:
            row = RunnerRow("r1", "host", 1, "1.0", ["k"], None, 10)
            await store.register_runner(row)
            await store.register_runner(row._replace(running=3))  # a refresh, not a second row
            await store.register_runner(RunnerRow("r2", "host", 2, "1.0", ["k"], ["q"], 5))
            assert await store.expire_runners(60) == 0
            await store.remove_runner("r2")
            await self.advance(store, 0.3)
            assert await store.expire_runners(0.2) == 1  # r1 stopped refreshing its row
            assert await store.expire_runners(0.2) == 0

        self.check(body)

    def test_unhandled_kinds_are_runnable_kinds_no_live_runner_serves(self) -> None:
        async def body(store: Store) -> None:
            for kind, queue in [("served", "default"), ("typo", "default"), ("typo", "default"),
                                ("served", "other"), ("later", "default")]:  # fmt: skip
                await self.add(store, kind, queue=queue, delay=3600 if kind == "later" else None)
            assert await store.unhandled_kinds(60) == [("served", 2), ("typo", 2)]
            await store.register_runner(RunnerRow("r", "h", 1, "1", ["served"], ["default"], 1))
            assert await store.unhandled_kinds(60) == [("typo", 2), ("served", 1)]
            await store.register_runner(RunnerRow("s", "h", 2, "1", ["served"], None, 1))
            assert await store.unhandled_kinds(60) == [("typo", 2)]

        self.check(body)

    def test_prune_deletes_only_old_finished_jobs(self) -> None:
        async def body(store: Store) -> None:
            old = await self.add(store, "k")
            await store.lease("r", ["k"], None, 10, 30)
            await store.record("r", [Outcome(old, 1, "succeeded")])
            await self.advance(store, 0.3)
            new = await self.add(store, "k")
            waiting = await self.add(store, "other")
            await store.lease("r", ["k"], None, 10, 30)
            await store.record("r", [Outcome(new, 1, "succeeded")])
            assert await store.prune(0.2) == 1
            assert await self.get(store, old) is None
            assert await self.get(store, new) is not None
            assert await self.get(store, waiting) is not None

        self.check(body)

    # -- flow control: tenants, ordering keys, limits ---------------------------------------

    async def lease_ids(
        self, store: Store, limit: int = 10, kinds: Sequence[str] = ("k",)
    ) -> list[int]:
        """Lease up to ``limit`` jobs as runner ``r``; their ids in lease order."""
        return [j.id for j in await store.lease("r", list(kinds), None, limit, 30)]

    async def finish(self, store: Store, *ids: int) -> None:
        """Record success for jobs leased once by runner ``r``."""
        await store.record("r", [Outcome(i, 1, "succeeded") for i in ids])

    def test_tenants_share_a_lease_whatever_one_has_queued(self) -> None:
        async def body(store: Store) -> None:
            for _ in range(20):
                await self.add(store, "k", tenant="big")
            small = [await self.add(store, "k", tenant="small") for _ in range(2)]
            leased = await self.lease_ids(store, limit=4)
            assert len(leased) == 4 and set(small) <= set(leased)

        self.check(body)

    def test_leases_take_tenants_round_robin_when_there_are_more_than_a_batch(self) -> None:
        async def body(store: Store) -> None:
            owner = {}
            for n in range(30):
                for _ in range(2):
                    owner[await self.add(store, "k", tenant=f"t{n:02}")] = n
            served = [[owner[i] for i in await self.lease_ids(store, limit=5)] for _ in range(6)]
            assert all(len(set(lease)) == 5 for lease in served)
            assert sorted(n for lease in served for n in lease) == list(range(30))

        self.check(body)

    def test_jobs_of_no_tenant_are_one_tenant_of_their_own(self) -> None:
        async def body(store: Store) -> None:
            for _ in range(20):
                await self.add(store, "k", tenant="big")
            plain = await self.add(store, "k")
            assert plain in await self.lease_ids(store, limit=2)

        self.check(body)

    def test_a_tenants_weight_is_its_share_of_a_lease(self) -> None:
        async def body(store: Store) -> None:
            await self.set_limit(store, tenant="gold", weight=3)
            gold = {await self.add(store, "k", tenant="gold") for _ in range(10)}
            for _ in range(10):
                await self.add(store, "k", tenant="free")
            leased = await self.lease_ids(store, limit=8)
            assert len(set(leased) & gold) == 6

        self.check(body)

    def test_priority_still_orders_jobs_within_a_tenant(self) -> None:
        async def body(store: Store) -> None:
            await self.add(store, "k", tenant="t")
            urgent = await self.add(store, "k", tenant="t", priority=5)
            await self.add(store, "k", tenant="u")
            assert (await self.lease_ids(store, limit=1)) == [urgent]

        self.check(body)

    def test_an_ordering_key_runs_one_job_at_a_time_in_enqueue_order(self) -> None:
        async def body(store: Store) -> None:
            first, second, third = [
                await self.add(store, "k", ordering_key="o-1") for _ in range(3)
            ]
            other = await self.add(store, "k", ordering_key="o-2")
            assert sorted(await self.lease_ids(store)) == [first, other]
            assert await self.lease_ids(store) == []
            await self.finish(store, first)
            assert await self.lease_ids(store) == [second]
            await self.finish(store, second)
            assert await self.lease_ids(store) == [third]

        self.check(body)

    def test_a_retrying_head_holds_its_key_until_it_ends(self) -> None:
        async def body(store: Store) -> None:
            head, behind = [await self.add(store, "k", ordering_key="o") for _ in range(2)]
            assert await self.lease_ids(store) == [head]
            await store.record("r", [Outcome(head, 1, "pending", delay=60, error="E: x")])
            assert await self.lease_ids(store) == []
            await self.advance(store, 61)
            assert await self.lease_ids(store) == [head]
            await store.record("r", [Outcome(head, 2, "failed", error="E: x")])
            assert await self.lease_ids(store) == [behind]

        self.check(body)

    def test_a_kind_never_runs_more_than_its_max_running(self) -> None:
        async def body(store: Store) -> None:
            await self.set_limit(store, kind="k", max_running=2)
            for _ in range(5):
                await self.add(store, "k")
            other = await self.add(store, "free")
            first = await self.lease_ids(store, kinds=("k", "free"))
            assert len(first) == 3 and other in first
            assert await self.lease_ids(store) == []
            await self.finish(store, first[0] if first[0] != other else first[1])
            assert len(await self.lease_ids(store)) == 1

        self.check(body)

    def test_a_crashed_runners_slots_come_back_when_its_leases_expire(self) -> None:
        async def body(store: Store) -> None:
            await self.set_limit(store, kind="k", max_running=1)
            for _ in range(2):
                await self.add(store, "k")
            assert len(await store.lease("dead", ["k"], None, 10, 5)) == 1
            assert await self.lease_ids(store) == []
            await self.advance(store, 6)
            assert await store.rescue(10) == 1
            assert len(await self.lease_ids(store)) == 1

        self.check(body)

    def test_a_tenant_never_runs_more_than_its_max_running(self) -> None:
        async def body(store: Store) -> None:
            await self.set_limit(store, tenant="*", max_running=1)
            for tenant in ("a", "a", "b", "b"):
                await self.add(store, "k", tenant=tenant)
            plain = await self.add(store, "k")
            assert len(await self.lease_ids(store)) == 3  # one of a, one of b, and plain
            assert plain not in await self.lease_ids(store)

        self.check(body)

    def test_a_rate_limit_allows_its_starts_per_period(self) -> None:
        async def body(store: Store) -> None:
            await self.set_limit(store, kind="k", rate=3, per=10)
            for _ in range(10):
                await self.add(store, "k")
            assert len(await self.lease_ids(store)) == 3
            assert await self.lease_ids(store) == []
            await self.advance(store, 5)
            assert len(await self.lease_ids(store)) == 1  # 1.5 tokens refilled
            await self.advance(store, 10)
            assert len(await self.lease_ids(store)) == 3  # a full bucket, not more

        self.check(body)
