"""Micro-batching: concurrent requests grouped into one model call.

Requests arrive on the server's event loop; each waits in a queue. One collector task takes
the first waiting request, then whatever else arrives within ``max_wait_s`` of it, up to
``max_batch`` queries, and runs the batch on the single model thread while the loop goes on
accepting requests. The model thread is the only one that touches the model and the item
matrix, so other work on them (``call``: adding items) is queued on it too and never runs
beside a batch.

A group (one ``/recommend/batch`` call) is never split across two collections; a group
larger than ``max_batch`` goes alone, in model calls of at most ``max_batch`` queries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

Q = TypeVar("Q")
R = TypeVar("R")


class ServerStopping(Exception):
    """The server stopped before a waiting request was served."""


@dataclass
class _Group(Generic[Q]):
    queries: list[Q]
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)


class MicroBatcher(Generic[Q, R]):
    """Groups concurrent queries into batches for ``run`` (see the module docstring).

    Args:
        run: ranks a batch: ``list[Q] -> list[R]`` of the same length, in order; runs on
            the model thread.
        max_batch: most queries per ``run`` call (>= 1).
        max_wait_s: how long the first query of a batch waits for others (>= 0).

    Raises:
        ValueError: ``max_batch`` < 1 or ``max_wait_s`` < 0.
    """

    def __init__(self, run: Callable[[list[Q]], list[R]], max_batch: int, max_wait_s: float):
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch={max_batch} must be >= 1, max_wait_s={max_wait_s} >= 0")
        self.run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.batches = 0  # model calls made (for tests and /metadata)
        self.queries = 0
        self._queue: asyncio.Queue[_Group[Q]] | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Start the collector on the running loop and the model thread."""
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="serving-model")
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def stop(self) -> None:
        """Stop collecting, fail what still waits (``ServerStopping``), end the model thread
        after its current batch."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._queue is not None:
            while not self._queue.empty():
                group = self._queue.get_nowait()
                if not group.future.done():
                    group.future.set_exception(ServerStopping("the server is stopping"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def submit(self, queries: list[Q]) -> list[R]:
        """Queue ``queries`` (one request's) and wait for their results, in order.

        Raises:
            ServerStopping: the server stopped first; whatever ``run`` raised otherwise.
        """
        if self._queue is None or self._task is None:
            raise ServerStopping("the server is not running")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Group(list(queries), future))
        return await future

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the model thread, between batches."""
        if self._executor is None:
            raise ServerStopping("the server is not running")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            groups = [await queue.get()]
            size = len(groups[0].queries)
            # The wait counts from the first query's arrival: requests that queued while the
            # previous batch ran do not wait again.
            deadline = groups[0].arrived + self.max_wait_s
            while size < self.max_batch:
                if queue.empty():
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(queue.get(), remaining)
                    except TimeoutError:
                        break
                else:
                    nxt = queue.get_nowait()
                if size + len(nxt.queries) > self.max_batch:
                    # Keep groups whole: this one opens the next batch.
                    await self._run(loop, groups)
                    groups, size = [nxt], len(nxt.queries)
                    deadline = nxt.arrived + self.max_wait_s
                    continue
                groups.append(nxt)
                size += len(nxt.queries)
            await self._run(loop, groups)

    async def _run(self, loop: asyncio.AbstractEventLoop, groups: list[_Group[Q]]) -> None:
        queries = [q for g in groups for q in g.queries]
        try:
            results = await loop.run_in_executor(self._executor, self._run_chunks, queries)
        except Exception as e:  # one failed batch fails its requests, not the server
            logger.exception("a batch of %d queries failed", len(queries))
            for g in groups:
                if not g.future.done():
                    g.future.set_exception(e)
            return
        at = 0
        for g in groups:
            n = len(g.queries)
            if not g.future.done():  # a client that went away leaves a cancelled future
                g.future.set_result(results[at : at + n])
            at += n

    def _run_chunks(self, queries: list[Q]) -> list[R]:
        out: list[R] = []
        for start in range(0, len(queries), self.max_batch):
            chunk = queries[start : start + self.max_batch]
            out.extend(self.run(chunk))
            self.batches += 1
            self.queries += len(chunk)
        return out


__all__ = ["MicroBatcher", "ServerStopping"]
