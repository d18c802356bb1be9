"""Operator actions: retry, discard and count, from Python (sync and async)."""

from __future__ import annotations

import pytest

from outbox import DuplicateJobError, InvalidOptionError


def finish(conn, schema: str, job_id: int, state: str, attempts: int = 3) -> None:
    """Put a job in a final state, as a runner would have left it."""
    conn.execute(
        f'UPDATE "{schema}".jobs SET state = %s, attempts = %s, finished_at = now(),'
        ' last_error = \'boom\', errors = \'[{"attempt": 1, "error": "boom"}]\' WHERE id = %s',
        (state, attempts, job_id),
    )


@pytest.mark.parametrize("state", ["failed", "discarded", "cancelled"])
def test_retry_makes_a_finished_job_pending_now_and_keeps_its_history(ob, conn, state):
    job_id = ob.enqueue(conn, "k", max_attempts=3)
    finish(conn, ob.schema, job_id, state)
    assert ob.retry(conn, job_id) is True
    job = ob.get_job(conn, job_id)
    assert (job.state, job.finished_at, job.attempts) == ("pending", None, 3)
    assert job.max_attempts == 4  # spent attempts get one more
    assert job.errors == [{"attempt": 1, "error": "boom"}]


def test_retry_of_a_scheduled_job_runs_it_now(ob, conn):
    job_id = ob.enqueue(conn, "k", delay=3600)
    assert ob.retry(conn, job_id) is True
    [(due,)] = conn.execute(
        f'SELECT run_at <= now() FROM "{ob.schema}".jobs WHERE id = %s', (job_id,)
    ).fetchall()
    assert due


@pytest.mark.parametrize("state", ["running", "succeeded"])
def test_retry_leaves_running_and_succeeded_jobs_alone(ob, conn, state):
    job_id = ob.enqueue(conn, "k")
    conn.execute(
        f'UPDATE "{ob.schema}".jobs SET state = %s, finished_at = '
        "CASE WHEN %s = 'succeeded' THEN now() END, leased_until = now() WHERE id = %s",
        (state, state, job_id),
    )
    assert ob.retry(conn, job_id) is False
    assert ob.get_job(conn, job_id).state == state


def test_retry_of_a_missing_job_returns_false_and_a_bad_id_is_refused(ob, conn):
    assert ob.retry(conn, 10**12) is False
    with pytest.raises(InvalidOptionError, match="positive int"):
        ob.retry(conn, "1")


def test_retry_refuses_while_another_live_job_holds_the_unique_key(ob, conn):
    old = ob.enqueue(conn, "k", unique_key="order-1")
    finish(conn, ob.schema, old, "failed")
    ob.enqueue(conn, "k", unique_key="order-1")
    with pytest.raises(DuplicateJobError, match="unique_key"):
        ob.retry(conn, old)
    assert ob.get_job(conn, old).state == "failed"


def test_retry_many_retries_the_failed_jobs_of_a_kind_in_batches(ob, conn):
    ids = [ob.enqueue(conn, "a") for _ in range(2500)]
    other = ob.enqueue(conn, "b")
    conn.execute(
        f"UPDATE \"{ob.schema}\".jobs SET state = 'failed', finished_at = now(), attempts = 1"
    )
    seen: list[int] = []
    assert ob.count(conn, state="failed", kind="a") == len(ids)
    assert ob.retry_many(conn, kind="a", progress=seen.append) == len(ids)
    assert seen == [1000, 1000, 500]
    assert ob.count(conn, state="pending", kind="a") == len(ids)
    assert ob.get_job(conn, other).state == "failed"


def test_retry_many_skips_jobs_whose_unique_key_is_live(ob, conn):
    blocked = ob.enqueue(conn, "k", unique_key="u")
    free = ob.enqueue(conn, "k")
    finish(conn, ob.schema, blocked, "discarded")
    finish(conn, ob.schema, free, "discarded")
    ob.enqueue(conn, "k", unique_key="u")
    assert ob.retry_many(conn, state="discarded") == 1
    assert ob.get_job(conn, blocked).state == "discarded"


@pytest.mark.parametrize("state", ["running", "succeeded", "nonsense"])
def test_retry_many_refuses_states_it_cannot_retry(ob, conn, state):
    with pytest.raises(InvalidOptionError):
        ob.retry_many(conn, state=state)


@pytest.mark.parametrize("state", ["pending", "running"])
def test_discard_ends_a_live_job_with_the_reason(ob, conn, state):
    job_id = ob.enqueue(conn, "k")
    conn.execute(
        f'UPDATE "{ob.schema}".jobs SET state = %s, leased_until = now() WHERE id = %s',
        (state, job_id),
    )
    assert ob.discard(conn, job_id, "customer\x00 deleted") is True
    job = ob.get_job(conn, job_id)
    assert job.state == "discarded" and job.finished_at is not None
    assert job.last_error.startswith("Discarded by an operator: customer")
    assert "\x00" not in job.last_error  # bounded by safe_failure_message
    assert job.errors[-1]["error"] == job.last_error
    assert ob.discard(conn, job_id) is False  # finished now


async def test_admin_actions_work_on_async_connections(ob, aconn):
    job_id = await ob.enqueue(aconn, "k")
    assert await ob.discard(aconn, job_id) is True
    assert await ob.retry(aconn, job_id) is True
    assert await ob.count(aconn, state="pending") == 1
    assert await ob.retry_many(aconn, state="pending") == 1


def test_flush_deletes_the_unfinished_jobs_of_a_kind_only(ob, conn):
    doomed = [ob.enqueue(conn, "doomed") for _ in range(3)]
    kept = ob.enqueue(conn, "kept")
    done = ob.enqueue(conn, "doomed")
    conn.execute(
        f"UPDATE \"{ob.schema}\".jobs SET state = 'succeeded', finished_at = now() WHERE id = %s",
        (done,),
    )
    assert ob.count_unfinished(conn, kind="doomed") == 3
    assert ob.flush(conn, kind="doomed") == 3
    assert all(ob.get_job(conn, i) is None for i in doomed)
    assert ob.get_job(conn, kept) is not None and ob.get_job(conn, done) is not None


def test_flush_without_a_filter_needs_everything(ob, conn):
    ob.enqueue(conn, "a")
    with pytest.raises(InvalidOptionError, match="everything=True"):
        ob.flush(conn)
    assert ob.flush(conn, everything=True) == 1


async def test_a_runner_holding_a_flushed_job_writes_no_outcome(dsn, ob, conn):
    import asyncio

    from outbox import HandlerMux, Runner
    from tests.helpers import eventually, running

    started = asyncio.Event()
    mux = HandlerMux()

    @mux.register("slow")
    async def slow(job):
        started.set()
        await asyncio.sleep(0.5)

    job_id = ob.enqueue(conn, "slow")
    async with running(Runner(mux, dsn=dsn, outbox=ob, poll_interval=0.05)):
        await eventually(started.is_set)
        assert ob.flush(conn, kind="slow") == 1
        await asyncio.sleep(1)
    assert ob.get_job(conn, job_id) is None
