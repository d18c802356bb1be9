"""The runner's rules, in one process against a real Postgres."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from pydantic import BaseModel

from outbox import (
    Backoff,
    ConfigurationError,
    HandlerMux,
    Job,
    JobEvent,
    NewJob,
    PermanentError,
    RetryableError,
    Runner,
    SchemaNotMigratedError,
)
from tests.helpers import eventually, job_row, running, states

FAST = Backoff(base=0.01, cap=0.02)


def make_runner(dsn, ob, mux, **kwargs) -> Runner:
    options = {"poll_interval": 0.1, "backoff": FAST, "lease_seconds": 3}
    options.update(kwargs)
    return Runner(mux, dsn=dsn, outbox=ob, **options)


async def test_handler_result_is_stored_and_job_succeeds(dsn, ob, conn):
    mux = HandlerMux()

    @mux.register("add")
    async def add(job: Job) -> dict:
        return {"sum": job.payload["a"] + job.payload["b"]}

    job_id = ob.enqueue(conn, "add", {"a": 2, "b": 3})
    async with running(make_runner(dsn, ob, mux)):
        await eventually(lambda: ob.get_job(conn, job_id).state == "succeeded")
    job = ob.get_job(conn, job_id)
    assert job.result == {"sum": 5}
    assert job.attempts == 1
    assert job.finished_at is not None


async def test_sync_handlers_run_in_threads_off_the_event_loop(dsn, ob, conn):
    mux = HandlerMux()
    threads = []

    @mux.register("sync")
    def handler(job: Job) -> None:
        threads.append(threading.current_thread().name)

    ob.enqueue(conn, "sync")
    async with running(make_runner(dsn, ob, mux)):
        await eventually(lambda: states(dsn, ob.schema) == {"succeeded": 1})
    assert threads[0].startswith("outbox-handler")


async def test_concurrency_is_never_exceeded(dsn, ob, conn):
    mux = HandlerMux()
    now_running = 0
    peak = 0

    @mux.register("slow")
    async def slow(job: Job) -> None:
        nonlocal now_running, peak
        now_running += 1
        peak = max(peak, now_running)
        await asyncio.sleep(0.02)
        now_running -= 1

    ob.enqueue_many(conn, [NewJob("slow") for _ in range(60)])
    async with running(make_runner(dsn, ob, mux, concurrency=5, batch_size=3)):
        await eventually(lambda: states(dsn, ob.schema) == {"succeeded": 60}, timeout=20)
    assert peak == 5


async def test_per_queue_concurrency_bounds_each_queue(dsn, ob, conn):
    mux = HandlerMux()
    now = {"a": 0, "b": 0}
    peak = {"a": 0, "b": 0}

    @mux.register("q")
    async def handler(job: Job) -> None:
        now[job.queue] += 1
        peak[job.queue] = max(peak[job.queue], now[job.queue])
        await asyncio.sleep(0.02)
        now[job.queue] -= 1

    ob.enqueue_many(conn, [NewJob("q", queue=q) for q in "ab" * 20])
    ob.enqueue(conn, "q", queue="c")  # not served
    runner = make_runner(dsn, ob, mux, queues={"a": 1, "b": 3})
    async with running(runner):
        await eventually(lambda: states(dsn, ob.schema).get("succeeded") == 40, timeout=20)
    assert peak == {"a": 1, "b": 3}
    assert states(dsn, ob.schema) == {"succeeded": 40, "pending": 1}


async def test_runner_leases_only_the_kinds_its_mux_handles(dsn, ob, conn):
    mux = HandlerMux()
    mux.register("mine", lambda job: None)
    ob.enqueue(conn, "mine")
    theirs = ob.enqueue(conn, "theirs")
    async with running(make_runner(dsn, ob, mux)):
        await eventually(lambda: states(dsn, ob.schema).get("succeeded") == 1)
        await asyncio.sleep(0.3)
    assert ob.get_job(conn, theirs).state == "pending"
    assert ob.get_job(conn, theirs).attempts == 0


async def test_failures_retry_with_backoff_then_fail_with_history(dsn, ob, conn):
    mux = HandlerMux()

    @mux.register("boom")
    def boom(job: Job) -> None:
        raise ValueError(f"attempt {job.attempts} went wrong")

    job_id = ob.enqueue(conn, "boom", max_attempts=3)
    async with running(make_runner(dsn, ob, mux)):
        await eventually(lambda: ob.get_job(conn, job_id).state == "failed")
    job = ob.get_job(conn, job_id)
    assert job.attempts == 3
    assert job.last_error == "ValueError: attempt 3 went wrong"
    assert [e["attempt"] for e in job.errors] == [1, 2, 3]
    assert job.finished_at is not None


async def test_error_history_keeps_the_last_ten(dsn, ob, conn):
    mux = HandlerMux()
    mux.register("boom", lambda job: 1 / 0)
    job_id = ob.enqueue(conn, "boom", max_attempts=13)
    async with running(make_runner(dsn, ob, mux)):
        await eventually(lambda: ob.get_job(conn, job_id).state == "failed", timeout=20)
    assert [e["attempt"] for e in ob.get_job(conn, job_id).errors] == list(range(4, 14))


async def test_retryable_error_sets_the_retry_delay(dsn, ob, conn):
    mux = HandlerMux()

    @mux.register("later")
    async def later(job: Job) -> None:
        raise RetryableError("not yet", retry_after=3600)

    job_id = ob.enqueue(conn, "later")
    async with running(make_runner(dsn, ob, mux)):
        await eventually(lambda: ob.get_job(conn, job_id).attempts == 1 and states(
            dsn, ob.schema) == {"pending": 1})  # fmt: skip
    job = ob.get_job(conn, job_id)
    wait = job.run_at - datetime.now(timezone.utc)
    assert timedelta(minutes=59) < wait <= timedelta(minutes=60)
    assert job.last_error == "RetryableError: not yet"


async def test_permanent_error_discards_with_the_reason(dsn, ob, conn):
    mux = HandlerMux()

    @mux.register("bad")
    async def bad(job: Job) -> None:
        raise PermanentError("customer deleted")

    job_id = ob.enqueue(conn, "bad")
    async with running(make_runner(dsn, ob, mux)):
        await eventually(lambda: ob.get_job(conn, job_id).state == "discarded")
    job = ob.get_job(conn, job_id)
    assert job.attempts == 1
    assert job.last_error == "PermanentError: customer deleted"


class Email(BaseModel):
    to: str


async def test_malformed_payload_is_discarded_and_valid_ones_arrive_as_models(dsn, ob, conn):
    mux = HandlerMux()
    seen = []

    @mux.register("email", payload=Email)
    async def send(job: Job) -> None:
        seen.append(job.payload)

    good = ob.enqueue(conn, "email", {"to": "a@b.c"})
    bad = ob.enqueue(conn, "email", {"too": 1})
    async with running(make_runner(dsn, ob, mux)):
        await eventually(lambda: ob.get_job(conn, bad).state == "discarded")
        await eventually(lambda: ob.get_job(conn, good).state == "succeeded")
    assert seen == [Email(to="a@b.c")]
    assert "MalformedPayload" in ob.get_job(conn, bad).last_error


async def test_timeout_counts_as_a_failed_attempt(dsn, ob, conn):
    mux = HandlerMux()

    @mux.register("hang", timeout=0.2)
    async def hang(job: Job) -> None:
        await asyncio.sleep(60)

    job_id = ob.enqueue(conn, "hang", max_attempts=2)
    async with running(make_runner(dsn, ob, mux)):
        await eventually(lambda: ob.get_job(conn, job_id).state == "failed")
    job = ob.get_job(conn, job_id)
    assert job.attempts == 2
    assert job.last_error.startswith("Timeout")


async def test_result_that_cannot_be_stored_discards_without_rerunning(dsn, ob, conn):
    mux = HandlerMux()
    calls = []

    @mux.register("weird")
    async def weird(job: Job) -> object:
        calls.append(job.id)
        return object()

    job_id = ob.enqueue(conn, "weird")
    async with running(make_runner(dsn, ob, mux)):
        await eventually(lambda: ob.get_job(conn, job_id).state == "discarded")
    assert calls == [job_id]
    assert "ResultNotStored" in ob.get_job(conn, job_id).last_error


async def test_handler_raising_base_exceptions_does_not_stop_the_runner(dsn, ob, conn):
    mux = HandlerMux()

    @mux.register("interrupt")
    async def interrupt(job: Job) -> None:
        raise KeyboardInterrupt

    @mux.register("exit")
    def leave(job: Job) -> None:
        raise SystemExit(3)

    mux.register("fine", lambda job: None)
    a = ob.enqueue(conn, "interrupt", max_attempts=1)
    b = ob.enqueue(conn, "exit", max_attempts=1)
    c = ob.enqueue(conn, "fine")
    async with running(make_runner(dsn, ob, mux)):
        await eventually(lambda: ob.get_job(conn, c).state == "succeeded")
        await eventually(lambda: ob.get_job(conn, a).state == ob.get_job(conn, b).state == "failed")
    assert ob.get_job(conn, a).last_error == "KeyboardInterrupt"
    assert ob.get_job(conn, b).last_error == "SystemExit: 3"


async def test_a_blocked_handler_never_stops_other_jobs(dsn, ob, conn):
    mux = HandlerMux()
    release = threading.Event()

    @mux.register("stuck")
    def stuck(job: Job) -> None:
        release.wait(10)

    mux.register("quick", lambda job: None)
    ob.enqueue(conn, "stuck")
    ob.enqueue_many(conn, [NewJob("quick") for _ in range(20)])
    async with running(make_runner(dsn, ob, mux, concurrency=3)):
        await eventually(lambda: states(dsn, ob.schema).get("succeeded") == 20)
        release.set()
        await eventually(lambda: states(dsn, ob.schema) == {"succeeded": 21})


async def test_cancelled_pending_job_never_runs(dsn, ob, conn):
    mux = HandlerMux()
    ran = []
    mux.register("x", lambda job: ran.append(job.id))
    job_id = ob.enqueue(conn, "x")
    assert ob.cancel(conn, job_id) is True
    assert ob.cancel(conn, job_id) is False
    async with running(make_runner(dsn, ob, mux)):
        await asyncio.sleep(0.3)
    assert ran == []
    assert ob.get_job(conn, job_id).state == "cancelled"


async def test_cancelled_running_job_is_stopped_and_never_retried(dsn, ob, conn):
    mux = HandlerMux()
    started = asyncio.Event()
    stopped = []

    @mux.register("long")
    async def long(job: Job) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.append(job.id)
            raise

    job_id = ob.enqueue(conn, "long")
    async with running(make_runner(dsn, ob, mux, lease_seconds=1.5)):
        await asyncio.wait_for(started.wait(), 5)
        assert ob.cancel(conn, job_id) is True
        await eventually(lambda: stopped == [job_id], timeout=5)
        await asyncio.sleep(0.5)
    job = ob.get_job(conn, job_id)
    assert job.state == "cancelled"
    assert job.attempts == 1


async def test_listen_notify_wakes_an_idle_runner_before_the_poll(dsn, ob, conn):
    mux = HandlerMux()
    mux.register("ping", lambda job: None)
    async with running(make_runner(dsn, ob, mux, poll_interval=30)):
        await asyncio.sleep(0.3)  # the runner is idle, waiting on NOTIFY
        started = time.monotonic()
        job_id = ob.enqueue(conn, "ping")
        await eventually(lambda: ob.get_job(conn, job_id).state == "succeeded", every=0.01)
        assert time.monotonic() - started < 2


async def test_graceful_stop_waits_for_running_jobs(dsn, ob, conn):
    mux = HandlerMux()
    started = asyncio.Event()

    @mux.register("short")
    async def short(job: Job) -> str:
        started.set()
        await asyncio.sleep(0.3)
        return "done"

    job_id = ob.enqueue(conn, "short")
    runner = make_runner(dsn, ob, mux, shutdown_timeout=5)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(started.wait(), 5)
    runner.stop()
    await asyncio.wait_for(task, 10)
    assert ob.get_job(conn, job_id).state == "succeeded"


async def test_stop_hands_unfinished_jobs_back_without_spending_an_attempt(dsn, ob, conn):
    mux = HandlerMux()
    started = asyncio.Event()

    @mux.register("endless")
    async def endless(job: Job) -> None:
        started.set()
        await asyncio.sleep(60)

    job_id = ob.enqueue(conn, "endless")
    runner = make_runner(dsn, ob, mux, shutdown_timeout=0.2)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(started.wait(), 5)
    runner.stop()
    await asyncio.wait_for(task, 10)
    job = ob.get_job(conn, job_id)
    assert job.state == "pending"
    assert job.attempts == 0


async def test_cancelling_run_hands_jobs_back_too(dsn, ob, conn):
    mux = HandlerMux()
    started = asyncio.Event()

    @mux.register("endless")
    async def endless(job: Job) -> None:
        started.set()
        await asyncio.sleep(60)

    job_id = ob.enqueue(conn, "endless")
    task = asyncio.create_task(make_runner(dsn, ob, mux).run())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 15)
    assert ob.get_job(conn, job_id).state == "pending"


async def test_stop_finishes_even_when_a_handler_swallows_cancellation(dsn, ob, conn):
    mux = HandlerMux()
    started = asyncio.Event()

    @mux.register("stubborn")
    async def stubborn(job: Job) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(60)  # ignores the first cancellation

    job_id = ob.enqueue(conn, "stubborn")
    runner = make_runner(dsn, ob, mux, shutdown_timeout=0.1)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(started.wait(), 5)
    runner.stop()
    await asyncio.wait_for(task, 15)
    job = ob.get_job(conn, job_id)
    assert job.state == "pending"
    assert job.attempts == 0


async def test_expired_leases_of_a_dead_runner_are_rescued_and_rerun(dsn, ob, conn):
    mux = HandlerMux()
    mux.register("x", lambda job: job.attempts)
    job_id = ob.enqueue(conn, "x")
    # A runner that died mid-job: running, lease expired, attempt spent.
    conn.execute(
        f"UPDATE \"{ob.schema}\".jobs SET state = 'running', attempts = 1, leased_by = 'dead',"
        " leased_until = now() - interval '1 second' WHERE id = %s",
        (job_id,),
    )
    async with running(make_runner(dsn, ob, mux, lease_seconds=1)):
        await eventually(lambda: ob.get_job(conn, job_id).state == "succeeded")
    job = ob.get_job(conn, job_id)
    assert job.attempts == 2
    assert job.result == 2
    assert job.errors[0]["error"].startswith("LeaseExpired")


async def test_a_crash_on_the_last_attempt_fails_the_job(dsn, ob, conn):
    mux = HandlerMux()
    mux.register("x", lambda job: None)
    job_id = ob.enqueue(conn, "x", max_attempts=1)
    conn.execute(
        f"UPDATE \"{ob.schema}\".jobs SET state = 'running', attempts = 1, leased_by = 'dead',"
        " leased_until = now() - interval '1 second' WHERE id = %s",
        (job_id,),
    )
    async with running(make_runner(dsn, ob, mux, lease_seconds=1)):
        await eventually(lambda: ob.get_job(conn, job_id).state == "failed")


async def test_observer_sees_each_outcome_with_safe_labels(dsn, ob, conn):
    mux = HandlerMux()
    mux.register("ok", lambda job: None)
    mux.register("bad", lambda job: 1 / 0)
    events: list[JobEvent] = []
    ob.enqueue(conn, "ok")
    ob.enqueue(conn, "bad", max_attempts=1, queue="Some.Queue")
    async with running(make_runner(dsn, ob, mux, observer=events.append)):
        await eventually(lambda: len(events) == 2)
    assert {(e.kind, e.queue, e.outcome) for e in events} == {
        ("ok", "default", "succeeded"),
        ("bad", "some.queue", "failed"),
    }


async def test_a_failing_observer_never_affects_jobs(dsn, ob, conn):
    mux = HandlerMux()
    mux.register("ok", lambda job: None)
    calls: list[tuple[int, str]] = []

    def broken(event: JobEvent) -> None:
        calls.append((event.job_id, event.outcome))
        raise RuntimeError("metrics down")

    first = ob.enqueue_many(conn, [NewJob("ok") for _ in range(3)])
    async with running(make_runner(dsn, ob, mux, observer=broken)):
        await eventually(lambda: len(calls) == 3)
        # The runner goes on after the observer failed: a job enqueued now runs too.
        later = ob.enqueue(conn, "ok")
        await eventually(lambda: len(calls) == 4)
        await eventually(lambda: states(dsn, ob.schema) == {"succeeded": 4})
    assert sorted(calls) == [(job_id, "succeeded") for job_id in sorted([*first, later])]
    for job_id in [*first, later]:
        job = ob.get_job(conn, job_id)
        assert (job.state, job.attempts, job.last_error) == ("succeeded", 1, None)


async def test_old_finished_jobs_are_pruned(dsn, ob, conn):
    mux = HandlerMux()
    mux.register("x", lambda job: None)
    old = ob.enqueue(conn, "x")
    fresh = ob.enqueue(conn, "x")
    waiting = ob.enqueue(conn, "other")
    conn.execute(
        f"UPDATE \"{ob.schema}\".jobs SET state = 'succeeded', finished_at = now() - %s "
        "WHERE id = ANY(%s)",
        (timedelta(days=8), [old]),
    )
    async with running(make_runner(dsn, ob, mux, retention=timedelta(days=7))):
        await eventually(lambda: ob.get_job(conn, old) is None)
        await eventually(lambda: ob.get_job(conn, fresh).state == "succeeded")
    assert ob.get_job(conn, waiting).state == "pending"


def test_runner_in_a_thread_starts_and_stops(dsn, ob, conn):
    mux = HandlerMux()
    mux.register("x", lambda job: None)
    runner = make_runner(dsn, ob, mux)
    thread = runner.start_in_thread()
    try:
        job_id = ob.enqueue(conn, "x")
        deadline = time.monotonic() + 10
        while ob.get_job(conn, job_id).state != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        runner.stop()
    assert not thread.is_alive()


def test_runner_in_a_thread_reports_an_unmigrated_schema(dsn):
    from outbox import Outbox

    mux = HandlerMux()
    mux.register("x", lambda job: None)
    runner = Runner(mux, dsn=dsn, outbox=Outbox(schema="never_migrated"))
    with pytest.raises(SchemaNotMigratedError, match="outbox migrate"):
        runner.start_in_thread()


async def test_running_block_runs_jobs_and_stops_gracefully_on_exit(dsn, ob, conn):
    mux = HandlerMux()
    finished = asyncio.Event()

    @mux.register("slow")
    async def slow(job: Job) -> str:
        await asyncio.sleep(0.3)
        finished.set()
        return "done"

    runner = make_runner(dsn, ob, mux)
    async with runner.running() as same:
        assert same is runner
        job_id = ob.enqueue(conn, "slow")
        await eventually(lambda: ob.get_job(conn, job_id).state == "running", every=0.01)
    assert finished.is_set()  # leaving the block waited for the handler
    assert ob.get_job(conn, job_id).state == "succeeded"


async def test_running_block_raises_when_the_runner_cannot_start(dsn):
    from outbox import Outbox

    mux = HandlerMux()
    mux.register("x", lambda job: None)
    runner = Runner(mux, dsn=dsn, outbox=Outbox(schema="never_migrated"))
    with pytest.raises(SchemaNotMigratedError, match="outbox migrate"):
        async with runner.running():
            pytest.fail("the block must not run")


async def test_runner_refuses_an_unmigrated_schema(dsn):
    from outbox import Outbox

    mux = HandlerMux()
    mux.register("x", lambda job: None)
    with pytest.raises(SchemaNotMigratedError, match="outbox migrate"):
        await Runner(mux, dsn=dsn, outbox=Outbox(schema="never_migrated")).run()


async def test_runner_told_not_to_wait_fails_at_once_on_a_dead_database():
    from outbox import DatabaseUnavailableError

    mux = HandlerMux()
    mux.register("x", lambda job: None)
    runner = Runner(mux, dsn="postgresql://postgres@127.0.0.1:1/none", wait_for_db=0)
    with pytest.raises(DatabaseUnavailableError, match=r"cannot reach.*gave up after waiting 0 s"):
        await runner.run()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "dsn, a pool or a store"),
        ({"dsn": "not a dsn"}, "invalid DSN"),
        ({"dsn": "postgresql://x", "concurrency": 0}, "concurrency"),
        ({"dsn": "postgresql://x", "batch_size": 0}, "batch_size"),
        ({"dsn": "postgresql://x", "queues": "default"}, "not a str"),
        ({"dsn": "postgresql://x", "queues": {"a": 0}}, "at least 1"),
        ({"dsn": "postgresql://x", "queues": []}, "at least one queue"),
        ({"dsn": "postgresql://x", "lease_seconds": 0}, "lease_seconds"),
    ],
)
def test_runner_configuration_errors_are_typed(kwargs, message):
    mux = HandlerMux()
    mux.register("x", lambda job: None)
    with pytest.raises(ConfigurationError, match=message):
        Runner(mux, **kwargs)


def test_runner_needs_a_handler():
    with pytest.raises(ConfigurationError, match="no handlers"):
        Runner(HandlerMux(), dsn="postgresql://x")


async def test_outcome_of_a_lost_lease_is_never_written(dsn, ob, conn):
    """A runner whose lease was taken over cannot overwrite the new holder's outcome."""
    from outbox.store import Outcome, PgStore

    job_id = ob.enqueue(conn, "x")
    store = PgStore(schema=ob.schema, dsn=dsn)
    await store.open()
    try:
        [_row] = await store.lease("first", ["x"], None, 10, 30)
        # The first runner's lease expires and another runner takes the job.
        conn.execute(f'UPDATE "{ob.schema}".jobs SET leased_until = now() - interval \'1s\'')
        assert await store.rescue(10) == 1
        [again] = await store.lease("second", ["x"], None, 10, 30)
        assert again.attempts == 2
        assert await store.record("first", [Outcome(job_id, 1, "succeeded")]) == set()
        assert await asyncio.to_thread(store.heartbeat, "first", [(job_id, 1)], 30) == set()
        assert await store.record("second", [Outcome(job_id, 2, "succeeded")]) == {job_id}
    finally:
        await store.close()
    assert job_row(dsn, ob.schema, job_id)["leased_by"] == "second"


async def test_a_handler_blocking_the_event_loop_keeps_its_lease(dsn, ob, conn):
    mux = HandlerMux()

    @mux.register("blocker")
    async def blocker(job: Job) -> None:
        time.sleep(2.5)  # sync code in an async def: the event loop stands still

    expired_seen = []

    def look_for_expired_leases() -> None:
        # From a thread of its own: the test's event loop stands still with the runner's.
        with psycopg.connect(dsn, autocommit=True) as c:
            deadline = time.monotonic() + 10
            while job_row(dsn, ob.schema, job_id)["state"] != "running":
                assert time.monotonic() < deadline, "the job never started"
                time.sleep(0.01)
            time.sleep(1.5)  # past the 1 s lease, while the handler still blocks the loop
            expired_seen.append(
                c.execute(
                    f"SELECT count(*) FROM \"{ob.schema}\".jobs"
                    " WHERE state = 'running' AND leased_until < now()"
                ).fetchone()[0]
            )

    job_id = ob.enqueue(conn, "blocker")
    watcher = threading.Thread(target=look_for_expired_leases)
    watcher.start()
    async with running(make_runner(dsn, ob, mux, lease_seconds=1)):
        await eventually(lambda: ob.get_job(conn, job_id).state == "succeeded")
    watcher.join()
    assert expired_seen == [0]
    assert ob.get_job(conn, job_id).attempts == 1


async def test_runner_connections_are_named_and_bounded(dsn, ob, conn):
    mux = HandlerMux()
    mux.register("x", lambda job: None)
    runner = make_runner(dsn, ob, mux)
    async with running(runner):
        await eventually(lambda: len(backends(conn, runner)) >= 3)
        await asyncio.sleep(0.5)
        assert 3 <= len(backends(conn, runner)) <= 4
    await eventually(lambda: backends(conn, runner) == [])


def backends(conn, runner):
    return conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
        (f"outbox {runner.runner_id}",),
    ).fetchall()


async def test_jobs_run_without_their_outcome_written_stay_within_concurrency_plus_batch():
    """Bounds what a crash can run twice: concurrency + batch_size, however slow the writes."""
    from outbox.testing import InMemoryStore

    finished = 0
    recorded = 0
    worst = 0

    class SlowWrites(InMemoryStore):
        async def record(self, runner, outcomes):
            nonlocal recorded
            await asyncio.sleep(0.05)
            written = await super().record(runner, outcomes)
            recorded += len(written)
            return written

    store = SlowWrites()
    for _ in range(300):
        store.enqueue("x")
    mux = HandlerMux()

    @mux.register("x")
    async def handler(job: Job) -> None:
        nonlocal finished, worst
        finished += 1
        worst = max(worst, finished - recorded)

    runner = Runner(mux, store=store, concurrency=8, batch_size=5, poll_interval=0.01)
    async with running(runner):
        await eventually(lambda: recorded == 300, timeout=30)
    assert 8 < worst <= 8 + 5


def test_trusted_job_is_the_same_job_model_construct_builds():
    from outbox.models import JobState, trusted_job

    now = datetime.now(timezone.utc)
    values = {
        "id": 1, "kind": "k", "queue": "default", "payload": {"a": 1}, "state": JobState.RUNNING,
        "priority": 0, "attempts": 1, "max_attempts": 3, "run_at": now, "created_at": now,
        "finished_at": None, "leased_until": None, "leased_by": "r", "last_error": None,
        "errors": [], "unique_key": None, "result": None, "metadata": None,
        "timeout_seconds": None, "attempted_at": now, "updated_at": None, "tenant": "t",
        "ordering_key": None,
    }  # fmt: skip
    fast, slow = trusted_job(dict(values)), Job.model_construct(**values)
    assert fast == slow
    assert fast.model_dump() == slow.model_dump()
    assert fast.model_copy(update={"payload": 2}).payload == 2
    with pytest.raises(ValueError, match="frozen"):
        fast.kind = "x"


async def test_a_jobs_own_timeout_overrides_its_kinds_and_says_so(dsn, ob, conn):
    mux = HandlerMux()

    @mux.register("sleepy", timeout=60)
    async def sleepy(job: Job) -> None:
        await asyncio.sleep(job.payload["sleep"])

    quick = ob.enqueue(conn, "sleepy", {"sleep": 5}, timeout=0.2, max_attempts=1)
    fine = ob.enqueue(conn, "sleepy", {"sleep": 0.3}, max_attempts=1)  # the kind's 60 s
    summary = await Runner(mux, dsn=dsn, outbox=ob).run_once()
    assert (summary.failed, summary.succeeded) == (1, 1)
    timed_out = ob.get_job(conn, quick)
    assert timed_out.last_error.startswith("Timeout: the attempt ran over its 0.2 s timeout")
    done = ob.get_job(conn, fine)
    assert done.attempted_at is not None and done.created_at <= done.attempted_at
    assert done.updated_at is not None and done.updated_at >= done.attempted_at


def test_timeouts_out_of_range_are_refused_before_writing(ob, conn):
    from outbox import InvalidOptionError, NewJob

    for bad in (0, -1, float("nan"), float("inf"), 604_801, True, "5"):
        with pytest.raises(InvalidOptionError, match="timeout must be"):
            ob.enqueue(conn, "k", timeout=bad)
    [job_id] = ob.enqueue_many(conn, [NewJob("k", timeout=3)])
    assert ob.get_job(conn, job_id).timeout_seconds == 3.0
