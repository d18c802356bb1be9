"""Status: what happened to a job, and how many jobs wait or failed per queue and kind."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from outbox import JobState, NewJob
from outbox.status import LIST_LIMIT_MAX

LATER = timedelta(hours=1)


def set_state(conn: psycopg.Connection, schema: str, job_id: int, state: str) -> None:
    """Put a job in ``state`` as a runner would, with finished_at set for the final states."""
    conn.execute(
        f'UPDATE "{schema}".jobs SET state = %s, '
        "finished_at = CASE WHEN %s IN ('pending', 'running') THEN NULL ELSE now() END, "
        "leased_until = CASE WHEN %s = 'running' THEN now() + interval '1 minute' END "
        "WHERE id = %s",
        (state, state, state, job_id),
    )


# -- get_job -------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", [10**9, 0, -1, 2**63 - 1, 2**63, 2**80])
def test_get_job_of_a_missing_id_returns_none(ob, conn, missing):
    ob.enqueue(conn, "k")
    assert ob.get_job(conn, missing) is None


async def test_get_job_of_a_missing_id_returns_none_async(ob, aconn):
    assert await ob.get_job(aconn, 12345) is None


def test_get_job_returns_every_field(ob, conn):
    run_at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    job_id = ob.enqueue(
        conn,
        "k",
        {"a": [1]},
        run_at=run_at,
        priority=3,
        queue="q",
        unique_key="u",
        timeout=2.5,
        tenant="acme",
        ordering_key="order-42",
    )
    job = ob.get_job(conn, job_id)
    assert job.updated_at == job.created_at  # stamped at enqueue
    assert job.model_dump(exclude={"created_at", "updated_at"}) == {
        "id": job_id,
        "kind": "k",
        "queue": "q",
        "payload": {"a": [1]},
        "state": JobState.PENDING,
        "priority": 3,
        "attempts": 0,
        "max_attempts": 20,
        "run_at": run_at,
        "finished_at": None,
        "leased_until": None,
        "leased_by": None,
        "last_error": None,
        "errors": [],
        "unique_key": "u",
        "result": None,
        "metadata": None,
        "timeout_seconds": 2.5,
        "attempted_at": None,
        "tenant": "acme",
        "ordering_key": "order-42",
    }


def test_job_is_frozen(ob, conn):
    job = ob.get_job(conn, ob.enqueue(conn, "k"))
    with pytest.raises(ValueError, match="frozen"):
        job.state = JobState.SUCCEEDED


# -- list_jobs -----------------------------------------------------------------------------------


def test_list_jobs_is_newest_first(ob, conn):
    ids = [ob.enqueue(conn, "k", {"i": i}) for i in range(5)]
    assert [job.id for job in ob.list_jobs(conn)] == ids[::-1]


def test_list_jobs_of_an_empty_outbox_is_empty(ob, conn):
    assert ob.list_jobs(conn) == []


def test_list_jobs_filters_by_state_kind_and_queue(ob, conn, schema):
    a = ob.enqueue(conn, "mail", queue="fast")
    b = ob.enqueue(conn, "mail", queue="slow")
    c = ob.enqueue(conn, "sms", queue="fast")
    d = ob.enqueue(conn, "mail", queue="fast")
    set_state(conn, schema, d, "failed")

    def ids(**filters: object) -> list[int]:
        return [job.id for job in ob.list_jobs(conn, **filters)]

    assert ids(state="failed") == [d]
    assert ids(state=JobState.PENDING) == [c, b, a]
    assert ids(state="succeeded") == []
    assert ids(kind="mail") == [d, b, a]
    assert ids(queue="fast") == [d, c, a]
    assert ids(kind="mail", queue="fast") == [d, a]
    assert ids(kind="mail", queue="fast", state="pending") == [a]
    assert ids(kind="nothing") == []


def test_list_jobs_filters_take_names_as_enqueue_does(ob, conn):
    job_id = ob.enqueue(conn, "Email.Send", queue="Mail")
    assert [j.id for j in ob.list_jobs(conn, kind="Email.Send ", queue="MAIL")] == [job_id]


def test_list_jobs_limit_caps_the_page(ob, conn):
    ob.enqueue_many(conn, [NewJob("k")] * 5)
    assert len(ob.list_jobs(conn, limit=2)) == 2
    assert len(ob.list_jobs(conn, limit=LIST_LIMIT_MAX)) == 5


@pytest.mark.parametrize("page_size", [1, 7, 25, 100])
def test_list_jobs_pages_with_after_id_cover_every_job_exactly_once(ob, conn, page_size):
    ids = ob.enqueue_many(conn, [NewJob("k", {"i": i}) for i in range(25)])
    seen: list[int] = []
    after_id = None
    while True:
        page = ob.list_jobs(conn, limit=page_size, after_id=after_id)
        if not page:
            break
        assert len(page) <= page_size
        seen += [job.id for job in page]
        after_id = page[-1].id
    assert seen == sorted(ids, reverse=True)


def test_list_jobs_pages_with_a_filter_cover_every_matching_job(ob, conn):
    ids = ob.enqueue_many(conn, [NewJob("a" if i % 3 else "b") for i in range(30)])
    b_ids = [i for n, i in enumerate(ids) if n % 3 == 0]
    seen: list[int] = []
    after_id = None
    while page := ob.list_jobs(conn, kind="b", limit=4, after_id=after_id):
        seen += [job.id for job in page]
        after_id = page[-1].id
    assert seen == b_ids[::-1]


def test_list_jobs_after_an_id_beyond_bigint_starts_at_the_newest(ob, conn):
    job_id = ob.enqueue(conn, "k")
    assert [job.id for job in ob.list_jobs(conn, after_id=2**70)] == [job_id]


async def test_list_jobs_async(ob, aconn):
    first = await ob.enqueue(aconn, "k")
    second = await ob.enqueue(aconn, "k")
    assert [job.id for job in await ob.list_jobs(aconn, state="pending")] == [second, first]


# -- stats ---------------------------------------------------------------------------------------


def test_stats_of_an_empty_outbox_has_zero_totals_and_no_age(ob, conn):
    stats = ob.stats(conn)
    assert stats.by_kind == []
    assert stats.totals == dict.fromkeys(JobState, 0)
    assert stats.oldest_runnable_age is None


def test_stats_counts_per_queue_kind_and_state_with_every_state_present(ob, conn, schema):
    for _ in range(3):
        ob.enqueue(conn, "mail", queue="fast")
    set_state(conn, schema, ob.enqueue(conn, "mail", queue="fast"), "failed")
    set_state(conn, schema, ob.enqueue(conn, "mail", queue="fast"), "running")
    set_state(conn, schema, ob.enqueue(conn, "mail", queue="slow"), "succeeded")
    ob.enqueue(conn, "sms", queue="fast", delay=LATER)

    stats = ob.stats(conn)
    by_pair = {(k.queue, k.kind): k for k in stats.by_kind}
    assert sorted(by_pair) == [("fast", "mail"), ("fast", "sms"), ("slow", "mail")]
    for kind_stats in stats.by_kind:
        assert set(kind_stats.counts) == set(JobState)  # zero when there are none

    assert by_pair["fast", "mail"].counts == {
        **dict.fromkeys(JobState, 0),
        JobState.PENDING: 3,
        JobState.RUNNING: 1,
        JobState.FAILED: 1,
    }
    assert by_pair["slow", "mail"].counts == {
        **dict.fromkeys(JobState, 0),
        JobState.SUCCEEDED: 1,
    }
    assert by_pair["fast", "sms"].counts[JobState.PENDING] == 1

    assert stats.totals == {
        **dict.fromkeys(JobState, 0),
        JobState.PENDING: 4,
        JobState.RUNNING: 1,
        JobState.FAILED: 1,
        JobState.SUCCEEDED: 1,
    }
    assert sum(stats.totals.values()) == 7


def test_stats_oldest_runnable_age_is_none_when_only_future_jobs_wait(ob, conn):
    ob.enqueue(conn, "k", delay=LATER)
    ob.enqueue(conn, "k", run_at=datetime.now(timezone.utc) + LATER)
    stats = ob.stats(conn)
    assert stats.totals[JobState.PENDING] == 2
    assert stats.oldest_runnable_age is None
    assert stats.by_kind[0].oldest_runnable_age is None


def test_stats_oldest_runnable_age_ignores_finished_and_running_jobs(ob, conn, schema):
    old = datetime.now(timezone.utc) - timedelta(days=3)
    set_state(conn, schema, ob.enqueue(conn, "k", run_at=old), "succeeded")
    set_state(conn, schema, ob.enqueue(conn, "k", run_at=old), "running")
    assert ob.stats(conn).oldest_runnable_age is None


def test_stats_oldest_runnable_age_is_the_wait_of_the_oldest_runnable_job(ob, conn):
    now = datetime.now(timezone.utc)
    ob.enqueue(conn, "a", run_at=now - timedelta(minutes=10))
    ob.enqueue(conn, "a", run_at=now - timedelta(minutes=2))
    ob.enqueue(conn, "b", run_at=now - timedelta(minutes=5))
    ob.enqueue(conn, "b", delay=LATER)
    stats = ob.stats(conn)
    assert isinstance(stats.oldest_runnable_age, timedelta)
    assert timedelta(minutes=10) <= stats.oldest_runnable_age < timedelta(minutes=11)
    ages = {k.kind: k.oldest_runnable_age for k in stats.by_kind}
    assert timedelta(minutes=5) <= ages["b"] < timedelta(minutes=6)
    assert ages["a"] == stats.oldest_runnable_age


async def test_stats_async(ob, aconn):
    await ob.enqueue(aconn, "k")
    stats = await ob.stats(aconn)
    assert stats.totals[JobState.PENDING] == 1
    assert stats.oldest_runnable_age >= timedelta(0)


# -- the SQL views -------------------------------------------------------------------------------


def test_job_counts_view_counts_per_queue_kind_and_state(ob, conn, schema):
    ob.enqueue_many(conn, [NewJob("a"), NewJob("a"), NewJob("b", queue="q")])
    set_state(conn, schema, ob.enqueue(conn, "a"), "cancelled")
    rows = conn.execute(
        f'SELECT queue, kind, state::text, jobs FROM "{schema}".job_counts ORDER BY 1, 2, 3'
    ).fetchall()
    assert rows == [
        ("default", "a", "cancelled", 1),
        ("default", "a", "pending", 2),
        ("q", "b", "pending", 1),
    ]


def test_problem_jobs_view_lists_failed_discarded_and_cancelled_jobs(ob, conn, schema):
    states = ["pending", "running", "succeeded", "failed", "discarded", "cancelled"]
    ids = {}
    for state in states:
        ids[state] = ob.enqueue(conn, f"kind.{state}")
        set_state(conn, schema, ids[state], state)
    conn.execute(
        f"UPDATE \"{schema}\".jobs SET last_error = 'ValueError: boom', attempts = 20 "
        "WHERE state = 'failed'"
    )
    rows = conn.execute(
        f'SELECT id, kind, state::text, last_error, attempts FROM "{schema}".problem_jobs '
        "ORDER BY id"
    ).fetchall()
    assert rows == [
        (ids["failed"], "kind.failed", "failed", "ValueError: boom", 20),
        (ids["discarded"], "kind.discarded", "discarded", None, 0),
        (ids["cancelled"], "kind.cancelled", "cancelled", None, 0),
    ]
