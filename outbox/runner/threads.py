"""Handler threads: where plain ``def`` handlers run, off the event loop.

``loop.run_in_executor`` costs a job two futures (a concurrent one, with its lock and
condition, chained to an asyncio one) and one wake-up of the event loop per job. Here a job is
one asyncio future and a queue entry, and a thread that finishes a job hands its outcome back
in a batch: the loop is woken once for every outcome that finished meanwhile. With no-op
handlers at concurrency 100 that drains 1.5x as many jobs a second
(``benchmarks/profile_drain.py --handler sync``).
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["HandlerThreads"]

T = TypeVar("T")

_Work = tuple["asyncio.Future[Any]", Callable[..., Any], Any, contextvars.Context]
_Done = tuple["asyncio.Future[Any]", Any, BaseException | None]


class HandlerThreads:
    """Up to ``max_threads`` threads running handlers for one event loop.

    A thread is started whenever more jobs are in flight than there are threads, so a job
    never waits behind a handler that blocks. The threads are daemons: a handler stuck past
    the runner's stop cannot keep its process alive (its lease expires, and another runner
    retries the job).
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, max_threads: int, name: str = "outbox-handler"
    ) -> None:
        self._loop = loop
        self._max = max(1, max_threads)
        self._name = name
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._done: deque[_Done] = deque()
        self._lock = threading.Lock()
        self._wake_scheduled = False
        self._threads = 0
        self._in_flight = 0
        """Jobs submitted and not yet handed back: touched on the loop's thread only."""
        self._closed = False

    def run(self, fn: Callable[[T], Any], arg: T) -> asyncio.Future[Any]:
        """Run ``fn(arg)`` on a thread, in a copy of the caller's context; await the result.

        Cancelling the future does not stop the thread: the result is dropped when it comes.
        """
        if self._closed:
            raise RuntimeError("the handler threads are closed")
        future = self._loop.create_future()
        self._in_flight += 1
        if self._in_flight > self._threads and self._threads < self._max:
            self._threads += 1
            threading.Thread(
                target=self._serve, name=f"{self._name}_{self._threads}", daemon=True
            ).start()
        self._work.put((future, fn, arg, contextvars.copy_context()))
        return future

    def close(self) -> None:
        """Cancel the jobs not yet started and let every thread end after its current job."""
        self._closed = True
        while True:
            try:
                work = self._work.get_nowait()
            except queue.Empty:
                break
            if work is not None:
                work[0].cancel()
                self._in_flight -= 1
        for _ in range(self._threads):
            self._work.put(None)

    def _serve(self) -> None:
        while (work := self._work.get()) is not None:
            future, fn, arg, context = work
            try:
                done: _Done = (future, context.run(fn, arg), None)
            except StopIteration as exc:  # a future cannot hold one: asyncio's own rule
                done = (future, None, RuntimeError(f"the handler raised StopIteration: {exc}"))
            except BaseException as exc:
                done = (future, None, exc)
            with self._lock:
                self._done.append(done)
                wake, self._wake_scheduled = not self._wake_scheduled, True
            if wake:
                try:
                    self._loop.call_soon_threadsafe(self._hand_back)
                except RuntimeError:  # the loop is closed: nobody waits for the result
                    return

    def _hand_back(self) -> None:
        with self._lock:
            finished = list(self._done)
            self._done.clear()
            self._wake_scheduled = False
        self._in_flight -= len(finished)
        for future, result, error in finished:
            if future.cancelled():
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
