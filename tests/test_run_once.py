"""One-shot runs for serverless platforms and cron: run what is due, write it all, return."""

from __future__ import annotations

import pytest

import outbox
from outbox import Backoff, HandlerMux, Job, NewJob, RetryableError, Runner
from outbox.testing import InMemoryStore
from tests.helpers import states


def mux_failing(ids_to_fail: set[int] | None = None, retries: int = 0) -> HandlerMux:
    mux = HandlerMux()
    tries: dict[int, int] = {}

    @mux.register("work")
    async def work(job: Job) -> None:
        tries[job.id] = tries.get(job.id, 0) + 1
        if ids_to_fail and job.id in ids_to_fail:
            raise ValueError("always")
        if tries[job.id] <= retries:
            raise RetryableError("not yet", retry_after=0.05)

    return mux


async def test_run_once_runs_what_is_due_and_leaves_what_is_scheduled(dsn, ob, conn):
    ob.enqueue_many(conn, [NewJob("work") for _ in range(1000)])
    ob.enqueue_many(conn, [NewJob("work", delay=3600) for _ in range(10)])
    runner = Runner(mux_failing(), dsn=dsn, outbox=ob, concurrency=50)
    summary = await runner.run_once()
    assert summary.ok and summary.succeeded == 1000
    assert states(dsn, ob.schema) == {"succeeded": 1000, "pending": 10}


async def test_run_once_reports_failed_attempts_and_leaves_their_retries_pending(dsn, ob, conn):
    ids = ob.enqueue_many(conn, [NewJob("work", max_attempts=3) for _ in range(20)])
    runner = Runner(mux_failing(set(ids[:3])), dsn=dsn, outbox=ob)
    summary = await runner.run_once()
    assert not summary.ok
    assert (summary.succeeded, summary.retried) == (17, 3)
    assert "3 retried" in str(summary)
    assert states(dsn, ob.schema) == {"succeeded": 17, "pending": 3}


async def test_run_once_until_empty_waits_for_retries_within_its_time(dsn, ob, conn):
    ob.enqueue_many(conn, [NewJob("work", max_attempts=5) for _ in range(10)])
    runner = Runner(mux_failing(retries=2), dsn=dsn, outbox=ob, poll_interval=0.05)
    summary = await runner.run_once(until_empty=True, max_seconds=30)
    assert summary.succeeded == 10 and summary.retried == 20
    assert states(dsn, ob.schema) == {"succeeded": 10}


async def test_run_once_on_an_empty_table_returns_at_once():
    runner = Runner(mux_failing(), store=InMemoryStore())
    summary = await runner.run_once(until_empty=True, max_seconds=5)
    assert summary.attempts == 0 and summary.ok


async def test_run_once_stops_at_its_time_limit_and_hands_back_what_runs():
    import asyncio

    store = InMemoryStore()
    mux = HandlerMux()

    @mux.register("slow")
    async def slow(job: Job) -> None:
        await asyncio.sleep(60)

    job_id = store.enqueue("slow")
    runner = Runner(mux, store=store, shutdown_timeout=0.1)
    summary = await runner.run_once(max_seconds=0.3)
    assert summary.released == 1 and not summary.ok
    job = store.get_job(job_id)
    assert (job.state, job.attempts) == ("pending", 0)


@pytest.mark.parametrize("until_empty", [False, True])
async def test_a_runner_can_run_once_again_after_a_run(until_empty):
    store = InMemoryStore()
    runner = Runner(mux_failing(), store=store)
    store.enqueue("work")
    assert (await runner.run_once(until_empty=until_empty, max_seconds=5)).succeeded == 1
    store.enqueue("work")
    assert (await runner.run_once(until_empty=until_empty, max_seconds=5)).succeeded == 1


async def test_listeners_per_kind_hear_each_attempt_and_a_failing_one_changes_nothing():
    store = InMemoryStore()
    mux = HandlerMux()
    heard: list[tuple[str, int, str | None]] = []

    @mux.register("flaky")
    async def flaky(job: Job) -> None:
        if job.attempts == 1:
            raise ValueError("first try")

    mux.register("other", lambda job: None)
    for event in ("started", "succeeded", "retrying"):
        mux.on("flaky", event, lambda job, error, e=event: heard.append((e, job.attempts, error)))

    def broken(job, error):
        raise RuntimeError("listener bug")

    mux.on("flaky", "succeeded", broken)
    job_id = store.enqueue("flaky", max_attempts=3)
    store.enqueue("other")
    runner = Runner(mux, store=store, backoff=Backoff(0.01, 0.02), poll_interval=0.01)
    summary = await runner.run_once(until_empty=True, max_seconds=10)
    assert summary.succeeded == 2 and summary.retried == 1
    assert store.get_job(job_id).state == "succeeded"
    assert heard == [
        ("started", 1, None),
        ("retrying", 1, "ValueError: first try"),
        ("started", 2, None),
        ("succeeded", 2, None),
    ]


def test_listening_for_an_unknown_event_is_refused():
    from outbox import ConfigurationError

    with pytest.raises(ConfigurationError, match="started, succeeded"):
        HandlerMux().on("k", "finished", lambda job, error: None)


async def test_listeners_and_an_app_logger_on_a_real_database(dsn, ob, conn, caplog):
    import logging

    heard: list[tuple[str, int]] = []
    mux = HandlerMux()

    @mux.register("work")
    async def work(job: Job) -> None:
        if job.payload.get("fail"):
            raise outbox.PermanentError("not this one")

    for event in ("started", "succeeded", "discarded"):
        mux.on("work", event, lambda job, error, e=event: heard.append((e, job.id)))
    ok = ob.enqueue(conn, "work", {})
    bad = ob.enqueue(conn, "work", {"fail": True})
    logger = logging.getLogger("myapp.outbox")
    with caplog.at_level(logging.DEBUG, logger="myapp.outbox"):
        summary = await Runner(mux, dsn=dsn, outbox=ob, logger=logger).run_once()
    assert (summary.succeeded, summary.discarded) == (1, 1)
    assert sorted(heard) == sorted(
        [("started", ok), ("started", bad), ("succeeded", ok), ("discarded", bad)]
    )
    events = {r.getMessage() for r in caplog.records if r.name == "myapp.outbox"}
    assert {"runner.started", "job.started", "job.succeeded", "job.discarded",
            "runner.stopped"} <= events  # fmt: skip
    [success] = [r for r in caplog.records if r.getMessage() == "job.succeeded"]
    assert success.job_id == ok and success.kind == "work" and success.duration >= 0


async def test_an_app_logger_at_info_gets_no_per_success_events(dsn, ob, conn, caplog):
    import logging

    mux = HandlerMux()

    @mux.register("work")
    async def work(job: Job) -> None:
        raise ValueError("again") if job.payload.get("fail") else None

    ob.enqueue(conn, "work", {})
    ob.enqueue(conn, "work", {"fail": True}, max_attempts=2)
    logger = logging.getLogger("myapp.quiet")
    with caplog.at_level(logging.INFO, logger="myapp.quiet"):
        await Runner(mux, dsn=dsn, outbox=ob, logger=logger).run_once()
    events = [r.getMessage() for r in caplog.records if r.name == "myapp.quiet"]
    assert "job.retry" in events  # INFO and above are told
    assert "job.started" not in events and "job.succeeded" not in events
