"""Enqueue: a job exists if and only if the caller's transaction commits.

Most tests run twice, on a sync ``Connection`` and on an ``AsyncConnection``: every operation
returns its result on the first and an awaitable of it on the second.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import psycopg
import pytest
from conftest import count_jobs
from pydantic import BaseModel

from outbox import (
    DuplicateJobError,
    InvalidOptionError,
    JobState,
    NewJob,
    Outbox,
    UnserializablePayloadError,
)

# -- helpers: one spelling for both connection flavours ------------------------------------------


async def done(result: Any) -> Any:
    """The result of an outbox call: awaited on an async connection, as is on a sync one."""
    return await result if inspect.isawaitable(result) else result


@contextlib.asynccontextmanager
async def transaction(c: psycopg.Connection | psycopg.AsyncConnection) -> AsyncIterator[None]:
    """A transaction on either kind of connection."""
    if isinstance(c, psycopg.AsyncConnection):
        async with c.transaction():
            yield
    else:
        with c.transaction():
            yield


async def fetch(c: psycopg.Connection | psycopg.AsyncConnection, query: str, params=None):
    """All rows of a query on either kind of connection."""
    cursor = await done(c.execute(query, params))
    return await done(cursor.fetchall())


class RollbackError(Exception):
    """Raised inside a transaction block to roll it back."""


@pytest.fixture(params=["sync", "async"])
def c(request):
    """The test's connection: sync ``conn`` or async ``aconn``, both autocommit."""
    return request.getfixturevalue("conn" if request.param == "sync" else "aconn")


def finish(conn: psycopg.Connection, schema: str, job_id: int, state: str = "succeeded") -> None:
    """Move a job to a final state, as a runner would."""
    conn.execute(
        f'UPDATE "{schema}".jobs SET state = %s, finished_at = now() WHERE id = %s',
        (state, job_id),
    )


# -- the transaction decides ---------------------------------------------------------------------


async def test_rolled_back_transaction_leaves_no_job(ob, c, conn, schema):
    with count_jobs(conn, schema) as added, pytest.raises(RollbackError):
        async with transaction(c):
            job_id = await done(ob.enqueue(c, "email.send", {"to": "a@example.com"}))
            assert isinstance(job_id, int)
            raise RollbackError
    assert added[0] == 0
    assert await done(ob.get_job(c, job_id)) is None


async def test_committed_job_is_pending_in_get_job_stats_and_job_counts_view(ob, c, conn, schema):
    async with transaction(c):
        job_id = await done(ob.enqueue(c, "email.send", {"to": "a@example.com"}))

    job = await done(ob.get_job(c, job_id))
    assert job is not None
    assert job.id == job_id
    assert job.kind == "email.send"
    assert job.payload == {"to": "a@example.com"}
    assert job.state is JobState.PENDING

    stats = await done(ob.stats(c))
    assert stats.totals[JobState.PENDING] == 1
    assert [(k.queue, k.kind, k.counts[JobState.PENDING]) for k in stats.by_kind] == [
        ("default", "email.send", 1)
    ]

    rows = conn.execute(f'SELECT queue, kind, state::text, jobs FROM "{schema}".job_counts')
    assert rows.fetchall() == [("default", "email.send", "pending", 1)]


async def test_job_state_is_a_str_enum_equal_to_its_name(ob, c):
    job_id = await done(ob.enqueue(c, "k"))
    job = await done(ob.get_job(c, job_id))
    assert job.state == "pending"
    assert isinstance(job.state, str)
    assert str(job.state) == "pending"
    assert f"{job.state}" == "pending"


def test_uncommitted_job_is_invisible_to_other_connections(ob, conn, dsn, schema):
    with psycopg.connect(dsn, autocommit=True) as other, conn.transaction():
        job_id = ob.enqueue(conn, "k")
        assert ob.get_job(other, job_id) is None
        assert ob.stats(other).totals[JobState.PENDING] == 0
    assert ob.get_job(conn, job_id).state == "pending"


async def test_async_enqueue_returns_an_awaitable(ob, aconn):
    pending = ob.enqueue(aconn, "k")
    assert inspect.isawaitable(pending)
    assert isinstance(await pending, int)


# -- defaults and options ------------------------------------------------------------------------


async def test_enqueue_defaults(ob, c):
    job_id = await done(ob.enqueue(c, "k"))
    job = await done(ob.get_job(c, job_id))
    assert job.queue == "default"
    assert job.payload == {}
    assert job.priority == 0
    assert job.max_attempts == 20
    assert job.attempts == 0
    assert job.unique_key is None
    assert job.run_at == job.created_at  # runnable at once, by the database's clock
    assert job.finished_at is None
    assert job.errors == []
    assert job.result is None


@pytest.mark.parametrize("delay", [90, 90.0, timedelta(seconds=90)], ids=["int", "float", "td"])
async def test_delay_is_added_to_the_database_clock(ob, c, delay):
    async with transaction(c):
        job_id = await done(ob.enqueue(c, "k", delay=delay))
        [(db_now,)] = await fetch(c, "SELECT now()")
    job = await done(ob.get_job(c, job_id))
    assert job.run_at > db_now
    assert job.run_at - job.created_at == timedelta(seconds=90)


async def test_fractional_delay_keeps_its_fraction(ob, c):
    job = await done(ob.get_job(c, await done(ob.enqueue(c, "k", delay=0.25))))
    assert job.run_at - job.created_at == timedelta(milliseconds=250)


async def test_run_at_is_stored_as_the_same_instant(ob, c):
    tokyo = timezone(timedelta(hours=9))
    run_at = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=tokyo)
    job = await done(ob.get_job(c, await done(ob.enqueue(c, "k", run_at=run_at))))
    assert job.run_at == run_at
    assert job.run_at.utcoffset() is not None


async def test_run_at_in_the_past_is_kept(ob, c):
    run_at = datetime(2001, 1, 1, tzinfo=timezone.utc)
    job = await done(ob.get_job(c, await done(ob.enqueue(c, "k", run_at=run_at))))
    assert job.run_at == run_at


async def test_priority_queue_and_max_attempts_are_stored(ob, c):
    job_id = await done(ob.enqueue(c, "k", priority=-7, queue="Mail ", max_attempts=3))
    job = await done(ob.get_job(c, job_id))
    assert (job.priority, job.queue, job.max_attempts) == (-7, "mail", 3)


@pytest.mark.parametrize("priority", [-32768, 32767])
def test_priority_accepts_the_whole_smallint_range(ob, conn, priority):
    assert ob.get_job(conn, ob.enqueue(conn, "k", priority=priority)).priority == priority


def test_max_attempts_accepts_the_int4_maximum(ob, conn):
    job_id = ob.enqueue(conn, "k", max_attempts=2**31 - 1)
    assert ob.get_job(conn, job_id).max_attempts == 2**31 - 1


def test_declared_queues_accept_their_members(schema, conn):
    ob = Outbox(schema=schema, queues={"fast", "Slow"})
    assert ob.queues == frozenset({"fast", "slow"})
    assert ob.get_job(conn, ob.enqueue(conn, "k", queue="SLOW")).queue == "slow"


# -- unique keys ---------------------------------------------------------------------------------


async def test_unique_key_while_first_job_unfinished_returns_the_same_id(ob, c, conn, schema):
    first = await done(ob.enqueue(c, "report.build", unique_key="2024-06"))
    with count_jobs(conn, schema) as added:
        again = await done(ob.enqueue(c, "report.build", {"other": 1}, unique_key="2024-06"))
    assert again == first
    assert added[0] == 0
    assert (await done(ob.get_job(c, first))).payload == {}  # the first job is untouched


async def test_unique_key_running_job_still_holds_the_key(ob, c, conn, schema):
    first = await done(ob.enqueue(c, "k", unique_key="u"))
    conn.execute(
        f"UPDATE \"{schema}\".jobs SET state = 'running', attempts = 1, "
        "leased_until = now() + interval '1 minute', leased_by = 'w' WHERE id = %s",
        (first,),
    )
    assert await done(ob.enqueue(c, "k", unique_key="u")) == first


async def test_unique_key_if_exists_raise_raises_duplicate_and_keeps_transaction_usable(
    ob, c, conn, schema
):
    first = await done(ob.enqueue(c, "k", unique_key="u"))
    with count_jobs(conn, schema) as added:
        async with transaction(c):
            with pytest.raises(DuplicateJobError) as info:
                await done(ob.enqueue(c, "k", unique_key="u", if_exists="raise"))
            assert info.value.existing_id == first
            assert str(first) in str(info.value)
            # The transaction is still usable: the next statements work and commit.
            assert await fetch(c, "SELECT 1") == [(1,)]
            other = await done(ob.enqueue(c, "k", unique_key="v", if_exists="raise"))
    assert added[0] == 1
    assert (await done(ob.get_job(c, other))).unique_key == "v"


@pytest.mark.parametrize("final_state", ["succeeded", "failed", "discarded", "cancelled"])
def test_unique_key_is_free_again_once_the_job_is_finished(ob, conn, schema, final_state):
    first = ob.enqueue(conn, "k", unique_key="u")
    finish(conn, schema, first, final_state)
    second = ob.enqueue(conn, "k", unique_key="u")
    assert second != first
    assert ob.get_job(conn, second).state == "pending"
    assert ob.enqueue(conn, "k", unique_key="u") == second  # the new job holds the key now


def test_unique_key_if_exists_raise_after_finish_creates_a_new_job(ob, conn, schema):
    first = ob.enqueue(conn, "k", unique_key="u")
    finish(conn, schema, first)
    second = ob.enqueue(conn, "k", unique_key="u", if_exists="raise")
    assert second != first


def test_unique_key_scope_is_kind_and_key(ob, conn):
    a = ob.enqueue(conn, "a", unique_key="u")
    b = ob.enqueue(conn, "b", unique_key="u")  # same key, other kind: another job
    a2 = ob.enqueue(conn, "a", unique_key="v")  # same kind, other key: another job
    assert len({a, b, a2}) == 3
    assert ob.enqueue(conn, "A ", unique_key="u") == a  # the canonical kind is compared
    assert ob.enqueue(conn, "b", unique_key="u") == b


def test_unique_key_is_case_sensitive(ob, conn):
    assert ob.enqueue(conn, "k", unique_key="U") != ob.enqueue(conn, "k", unique_key="u")


def test_jobs_without_unique_key_never_collide(ob, conn):
    assert ob.enqueue(conn, "k") != ob.enqueue(conn, "k")


def _enqueue_in_thread(ob: Outbox, dsn: str, out: list[int]) -> threading.Thread:
    def work() -> None:
        with psycopg.connect(dsn, autocommit=True) as other:
            out.append(ob.enqueue(other, "k", unique_key="u"))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def _wait_until_blocked(conn: psycopg.Connection, schema: str, thread: threading.Thread) -> None:
    """Wait until the thread's conflicting insert into ``schema`` waits on a lock."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        [(waiting,)] = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database() "
            "AND query LIKE %s",
            (f"%INSERT INTO%{schema}%",),
        ).fetchall()
        if waiting:
            return
        assert thread.is_alive(), "the concurrent enqueue finished without waiting"
        time.sleep(0.01)
    raise AssertionError("the concurrent enqueue never waited")


def test_concurrent_unique_key_waits_for_the_first_transaction_and_returns_its_id(
    ob, conn, dsn, schema
):
    out: list[int] = []
    with conn.transaction():
        first = ob.enqueue(conn, "k", unique_key="u")
        thread = _enqueue_in_thread(ob, dsn, out)
        with psycopg.connect(dsn, autocommit=True) as watcher:
            _wait_until_blocked(watcher, schema, thread)
    thread.join(10)
    assert out == [first]


def test_concurrent_unique_key_inserts_its_own_job_when_the_first_rolls_back(ob, conn, dsn, schema):
    out: list[int] = []
    with pytest.raises(RollbackError), conn.transaction():
        first = ob.enqueue(conn, "k", unique_key="u")
        thread = _enqueue_in_thread(ob, dsn, out)
        with psycopg.connect(dsn, autocommit=True) as watcher:
            _wait_until_blocked(watcher, schema, thread)
        raise RollbackError
    thread.join(10)
    assert len(out) == 1 and out[0] != first
    assert ob.get_job(conn, out[0]).unique_key == "u"


# -- enqueue_many --------------------------------------------------------------------------------


async def test_enqueue_many_returns_ids_in_order(ob, c):
    ids = await done(ob.enqueue_many(c, [NewJob("k", {"i": i}) for i in range(50)]))
    assert len(ids) == 50 and len(set(ids)) == 50
    for i, job_id in enumerate(ids):
        assert (await done(ob.get_job(c, job_id))).payload == {"i": i}


async def test_enqueue_many_of_nothing_returns_an_empty_list(ob, c, conn, schema):
    with count_jobs(conn, schema) as added:
        assert await done(ob.enqueue_many(c, [])) == []
        assert await done(ob.enqueue_many(c, iter(()))) == []
    assert added[0] == 0


async def test_enqueue_many_rolled_back_leaves_no_job(ob, c, conn, schema):
    with count_jobs(conn, schema) as added, pytest.raises(RollbackError):
        async with transaction(c):
            assert len(await done(ob.enqueue_many(c, [NewJob("k")] * 10))) == 10
            raise RollbackError
    assert added[0] == 0


async def test_enqueue_many_accepts_a_generator(ob, c):
    ids = await done(ob.enqueue_many(c, (NewJob("k", [i]) for i in range(3))))
    assert [(await done(ob.get_job(c, i))).payload for i in ids] == [[0], [1], [2]]


async def test_enqueue_many_applies_each_jobs_own_options(ob, c):
    run_at = datetime(2030, 1, 1, tzinfo=timezone.utc)
    ids = await done(
        ob.enqueue_many(
            c,
            [
                NewJob("A.b", {"x": 1}, priority=5, queue="Q1", max_attempts=2),
                NewJob("c", run_at=run_at, unique_key="key"),
                NewJob("d", delay=timedelta(minutes=5)),
                NewJob("e"),
            ],
        )
    )
    a, b, d, e = [await done(ob.get_job(c, i)) for i in ids]
    assert (a.kind, a.payload, a.priority, a.queue, a.max_attempts) == ("a.b", {"x": 1}, 5, "q1", 2)
    assert (b.run_at, b.unique_key) == (run_at, "key")
    assert d.run_at - d.created_at == timedelta(minutes=5)
    assert (e.queue, e.priority, e.max_attempts, e.payload) == ("default", 0, 20, {})
    assert e.run_at == e.created_at


async def test_enqueue_many_gives_a_live_duplicate_the_live_jobs_id_in_its_place(
    ob, c, conn, schema
):
    live = await done(ob.enqueue(c, "k", unique_key="live"))
    finished = await done(ob.enqueue(c, "k", unique_key="done"))
    finish(conn, schema, finished)
    ids = await done(
        ob.enqueue_many(
            c,
            [
                NewJob("k", {"n": 0}, unique_key="live"),  # skipped: a live job holds the key
                NewJob("k", {"n": 1}, unique_key="done"),  # the holder finished: inserted
                NewJob("k", {"n": 2}),
                NewJob("other", {"n": 3}, unique_key="live"),  # other kind: inserted
                NewJob("k", {"n": 4}, unique_key="new"),
                NewJob("k", {"n": 5}, unique_key="new"),  # same key earlier in the batch: skipped
            ],
        )
    )
    assert len(ids) == 6 and ids[0] == live and ids[5] == ids[4]
    payloads = [(await done(ob.get_job(c, i))).payload.get("n") for i in ids]
    assert payloads == [None, 1, 2, 3, 4, 4]
    assert await done(ob.count(c, state="pending")) == 5


def test_enqueue_many_of_100_000_jobs_in_one_call(ob, conn, schema, record_property, capsys):
    jobs = [NewJob("bulk.item", {"i": i}) for i in range(100_000)]
    with count_jobs(conn, schema) as added:
        started = time.perf_counter()
        with conn.transaction():
            ids = ob.enqueue_many(conn, jobs)
        seconds = time.perf_counter() - started
    assert added[0] == 100_000
    assert len(ids) == 100_000 and ids == sorted(set(ids))
    last = ob.get_job(conn, ids[-1])
    assert last.payload == {"i": 99_999}
    record_property("enqueue_many_100k_seconds", round(seconds, 3))
    with capsys.disabled():
        server = conn.info.parameter_status("server_version")
        print(f"\nenqueue_many: 100,000 jobs in {seconds:.2f} s (PostgreSQL {server})")


async def test_enqueue_many_with_a_bad_job_deep_in_the_stream_keeps_the_callers_own_writes(
    ob, c, conn, schema
):
    # Jobs stream to COPY while they are validated: job 30,000 is refused long after the first
    # rows reached the server, and the savepoint takes back only the jobs.
    conn.execute(f'CREATE TABLE "{schema}".orders (id int)')
    jobs = [NewJob("k", {"i": i}) for i in range(40_000)]
    jobs[30_000] = NewJob("k", {"i": float("nan")})
    with count_jobs(conn, schema) as added:
        async with transaction(c):
            await done(c.execute(f'INSERT INTO "{schema}".orders VALUES (1)'))
            with pytest.raises(UnserializablePayloadError, match="job 30000"):
                await done(ob.enqueue_many(c, jobs))
            await done(c.execute(f'INSERT INTO "{schema}".orders VALUES (2)'))
    assert added[0] == 0
    assert conn.execute(f'SELECT count(*) FROM "{schema}".orders').fetchone()[0] == 2


def test_enqueue_many_on_a_connection_outside_autocommit_leaves_the_commit_to_the_caller(
    ob, dsn, conn, schema
):
    with psycopg.connect(dsn) as own, count_jobs(conn, schema) as added:
        assert len(ob.enqueue_many(own, [NewJob("k")] * 2)) == 2
        assert len(ob.enqueue_many(own, [NewJob("k", delay=5)] * 3)) == 3
        own.rollback()
    assert added[0] == 0


# -- payloads ------------------------------------------------------------------------------------


class Address(BaseModel):
    city: str
    zip: str | None = None


class Customer(BaseModel):
    name: str
    since: datetime
    address: Address


_CUSTOMER = Customer(
    name="Ada",
    since=datetime(2020, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
    address=Address(city="London"),
)
_CUSTOMER_JSON = {
    "name": "Ada",
    "since": "2020-01-02T03:04:05Z",
    "address": {"city": "London", "zip": None},
}


@pytest.mark.parametrize(
    ("payload", "stored"),
    [
        ({"a": 1, "b": [1, 2.5, None, True], "c": {"d": "é ✓ 😀"}}, None),
        ([1, "two", {"three": 3}], None),
        ([], None),
        ("a string", None),
        (42, None),
        (None, {}),
        ({}, {}),
        (_CUSTOMER, _CUSTOMER_JSON),
        ({"customer": _CUSTOMER, "tags": ["x"]}, {"customer": _CUSTOMER_JSON, "tags": ["x"]}),
        ([_CUSTOMER, _CUSTOMER], [_CUSTOMER_JSON, _CUSTOMER_JSON]),
        (
            {"id": UUID(int=1), "at": datetime(2020, 1, 1, tzinfo=timezone.utc)},
            {"id": "00000000-0000-0000-0000-000000000001", "at": "2020-01-01T00:00:00+00:00"},
        ),
        ({"backslash-u": "\\u0000 is just text"}, None),
    ],
    ids=[
        "dict",
        "list",
        "empty-list",
        "str",
        "int",
        "none-is-empty-dict",
        "empty-dict",
        "pydantic-model",
        "model-in-dict",
        "models-in-list",
        "uuid-datetime",
        "escaped-nul-text",
    ],
)
async def test_payload_round_trips(ob, c, payload, stored):
    job_id = await done(ob.enqueue(c, "k", payload))
    expected = payload if stored is None else stored
    assert (await done(ob.get_job(c, job_id))).payload == expected


async def test_enqueue_many_payloads_accept_models_too(ob, c):
    ids = await done(ob.enqueue_many(c, [NewJob("k", _CUSTOMER), NewJob("k", None)]))
    assert [(await done(ob.get_job(c, i))).payload for i in ids] == [_CUSTOMER_JSON, {}]


def test_payload_exactly_at_the_limit_is_accepted(schema, conn):
    ob = Outbox(schema=schema, max_payload_bytes=100)
    payload = {"x": "y" * 92}  # {"x":"…"} is 8 bytes of JSON around the 92
    assert ob.get_job(conn, ob.enqueue(conn, "k", payload)).payload == payload


# -- tenants and ordering keys -------------------------------------------------------------------


@pytest.mark.parametrize("field", ["tenant", "ordering_key"])
@pytest.mark.parametrize("bad", ["", "a\nb", "\x00", "x" * 513, 42, b"bytes"])
def test_a_bad_tenant_or_ordering_key_is_refused_before_anything_is_sent(ob, conn, field, bad):
    with pytest.raises(InvalidOptionError, match=field):
        ob.enqueue(conn, "k", **{field: bad})
    with pytest.raises(InvalidOptionError, match=field):
        ob.enqueue_many(conn, [NewJob("k", **{field: bad})])
    assert ob.count(conn, state="pending") == 0


def test_a_tenant_id_is_data_of_up_to_128_bytes(ob, conn):
    job_id = ob.enqueue(conn, "k", tenant="Ünïcode tenant/42 " + "x" * 100)
    assert ob.get_job(conn, job_id).tenant.startswith("Ünïcode")
    with pytest.raises(InvalidOptionError, match="128 bytes"):
        ob.enqueue(conn, "k", tenant="t" * 129)


def test_enqueue_many_keeps_each_jobs_tenant_and_key_with_and_without_unique_keys(ob, conn):
    copied = ob.enqueue_many(conn, [NewJob("k", tenant="a", ordering_key="o"), NewJob("k")])
    inserted = ob.enqueue_many(conn, [NewJob("k", tenant="b", ordering_key="p", unique_key="u")])
    jobs = [ob.get_job(conn, i) for i in copied + inserted]
    assert [(j.tenant, j.ordering_key) for j in jobs] == [("a", "o"), (None, None), ("b", "p")]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_infinity_are_refused_not_stored_as_null(ob, conn, bad):
    from outbox import UnserializablePayloadError

    for payload in ({"x": bad}, [1, [2, {"y": bad}]]):
        with pytest.raises(UnserializablePayloadError, match="NaN or an infinity"):
            ob.enqueue(conn, "k", payload)
    assert ob.count(conn, state="pending") == 0


@pytest.mark.parametrize("field", ["unique_key", "tenant", "ordering_key"])
def test_a_lone_surrogate_is_refused_and_the_transaction_stays_usable(ob, conn, field):
    with conn.transaction():
        with pytest.raises(InvalidOptionError, match="valid UTF-8"):
            ob.enqueue(conn, "k", **{field: "a\ud800"})
        assert ob.enqueue(conn, "k") > 0  # the caller's transaction is still usable
