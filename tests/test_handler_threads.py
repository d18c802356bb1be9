"""Handler threads: plain def handlers run off the event loop, each job gets its own answer."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outbox.runner.threads import HandlerThreads

REQUEST = contextvars.ContextVar("REQUEST", default="none")


class HandlerFailedError(Exception):
    pass


def answer(value: int) -> int:
    if value % 3 == 0:
        raise HandlerFailedError(value)
    return value * 2


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=200))
def test_every_job_gets_its_own_result_or_error(values):
    async def body() -> None:
        threads = HandlerThreads(asyncio.get_running_loop(), 8)
        try:
            results = await asyncio.gather(
                *(threads.run(answer, v) for v in values), return_exceptions=True
            )
        finally:
            threads.close()
        for value, result in zip(values, results, strict=True):
            if value % 3 == 0:
                assert isinstance(result, HandlerFailedError) and result.args == (value,)
            else:
                assert result == value * 2

    asyncio.run(body())


async def test_a_blocking_handler_never_holds_up_another():
    threads = HandlerThreads(asyncio.get_running_loop(), 4)
    release = threading.Event()
    try:
        blocked = [threads.run(release.wait, 30) for _ in range(3)]
        # Three threads are blocked: a fourth job still runs at once.
        assert await asyncio.wait_for(threads.run(answer, 1), 10) == 2
        release.set()
        assert await asyncio.gather(*blocked) == [True, True, True]
    finally:
        release.set()
        threads.close()


async def test_no_more_threads_than_the_limit_however_many_jobs_wait():
    threads = HandlerThreads(asyncio.get_running_loop(), 2)
    release = threading.Event()
    names: set[str] = set()

    def blocking(_: int) -> None:
        names.add(threading.current_thread().name)
        release.wait(30)

    try:
        jobs = [threads.run(blocking, i) for i in range(5)]
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(*jobs)
    finally:
        threads.close()
    assert len(names) <= 2 and all(n.startswith("outbox-handler") for n in names)


async def test_a_cancelled_job_drops_its_result_and_the_threads_keep_working():
    threads = HandlerThreads(asyncio.get_running_loop(), 1)
    release = threading.Event()
    try:
        first = threads.run(release.wait, 30)
        first.cancel()
        release.set()
        assert await asyncio.wait_for(threads.run(answer, 5), 10) == 10
        assert first.cancelled()
    finally:
        threads.close()


async def test_close_cancels_the_jobs_not_yet_started():
    threads = HandlerThreads(asyncio.get_running_loop(), 1)
    release = threading.Event()
    started = threading.Event()

    def running(_: int) -> str:
        started.set()
        release.wait(30)
        return "finished"

    first = threads.run(running, 0)
    waiting = threads.run(answer, 1)
    assert await asyncio.to_thread(started.wait, 10)
    threads.close()
    release.set()
    assert await asyncio.wait_for(first, 10) == "finished"  # the job under way runs to its end
    assert waiting.cancelled()
    with pytest.raises(RuntimeError, match="closed"):
        threads.run(answer, 2)


async def test_the_handler_sees_the_callers_context():
    threads = HandlerThreads(asyncio.get_running_loop(), 2)
    REQUEST.set("request-7")
    try:
        assert await threads.run(lambda _: REQUEST.get(), None) == "request-7"
    finally:
        threads.close()


async def test_a_handler_raising_stop_iteration_fails_its_job_only():
    threads = HandlerThreads(asyncio.get_running_loop(), 1)

    def stops(_: None) -> None:
        raise StopIteration

    try:
        with pytest.raises(RuntimeError, match="StopIteration"):
            await threads.run(stops, None)
        assert await threads.run(answer, 4) == 8
    finally:
        threads.close()
