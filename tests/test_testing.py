"""outbox.testing lets users unit-test handlers with the real runner and no database."""

from __future__ import annotations

import pytest

from outbox import Backoff, HandlerMux, InvalidKindError, Job, PermanentError
from outbox.testing import InMemoryStore, drain


def mux_with(handler, kind="k", **options) -> HandlerMux:
    mux = HandlerMux()
    mux.register(kind, handler, **options)
    return mux


async def test_drain_runs_jobs_through_the_real_runner_without_a_database():
    store = InMemoryStore()
    job_id = store.enqueue("k", {"n": 2})

    async def double(job: Job) -> int:
        return job.payload["n"] * 2

    await drain(mux_with(double), store)
    job = store.get_job(job_id)
    assert (job.state, job.result, job.attempts) == ("succeeded", 4, 1)


async def test_retries_and_discards_follow_the_same_rules():
    store = InMemoryStore()
    flaky_id = store.enqueue("flaky")
    bad_id = store.enqueue("bad")
    calls = []

    def flaky(job: Job) -> None:
        calls.append(job.attempts)
        if job.attempts < 3:
            raise ValueError("try again")

    def bad(job: Job) -> None:
        raise PermanentError("no such user")

    mux = HandlerMux()
    mux.register("flaky", flaky, backoff=Backoff(0.01, 0.02))
    mux.register("bad", bad)
    await drain(mux, store)
    assert calls == [1, 2, 3]
    assert store.get_job(flaky_id).state == "succeeded"
    assert [e["attempt"] for e in store.get_job(flaky_id).errors] == [1, 2]
    assert store.get_job(bad_id).state == "discarded"
    assert store.get_job(bad_id).last_error == "PermanentError: no such user"


def test_in_memory_enqueue_validates_like_the_real_one():
    store = InMemoryStore()
    with pytest.raises(InvalidKindError):
        store.enqueue("not a kind")
    assert store.jobs() == []
    first = store.enqueue("k", unique_key="once")
    assert store.enqueue("k", unique_key="once") == first
