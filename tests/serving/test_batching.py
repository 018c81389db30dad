"""Micro-batching: concurrent queries grouped up to max_batch within max_wait, groups kept
whole, failures confined to their batch, a clean stop."""

from __future__ import annotations

import asyncio
import time

import pytest

from recbole_fork.serving.batching import MicroBatcher, ServerStopping


class Recorder:
    """A model call that records each batch it gets and answers 10 x each query."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on

    def __call__(self, queries: list[int]) -> list[int]:
        self.batches.append(list(queries))
        if self.fail_on in queries:
            raise RuntimeError(f"query {self.fail_on} broke the model")
        return [10 * q for q in queries]


def run(coro):
    return asyncio.run(coro)


def test_concurrent_queries_are_grouped_up_to_max_batch():
    rec = Recorder()

    async def main():
        b = MicroBatcher(rec, max_batch=4, max_wait_s=0.5)
        await b.start()
        results = await asyncio.gather(*(b.submit([q]) for q in range(10)))
        await b.stop()
        return results, b

    results, b = run(main())
    assert results == [[10 * q] for q in range(10)]
    assert rec.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert (b.batches, b.queries) == (3, 10)


def test_groups_stay_whole_and_large_groups_go_alone_in_chunks():
    rec = Recorder()

    async def main():
        b = MicroBatcher(rec, max_batch=4, max_wait_s=0.5)
        await b.start()
        results = await asyncio.gather(
            b.submit([1, 2, 3]), b.submit([4, 5, 6]), b.submit(list(range(100, 109)))
        )
        await b.stop()
        return results

    results = run(main())
    assert results == [[10, 20, 30], [40, 50, 60], [10 * q for q in range(100, 109)]]
    assert rec.batches == [[1, 2, 3], [4, 5, 6], [100, 101, 102, 103], [104, 105, 106, 107], [108]]


def test_a_lone_query_waits_at_most_max_wait():
    rec = Recorder()

    async def main():
        b = MicroBatcher(rec, max_batch=64, max_wait_s=0.05)
        await b.start()
        start = time.perf_counter()
        result = await b.submit([7])
        took = time.perf_counter() - start
        await b.stop()
        return result, took

    result, took = run(main())
    assert result == [70] and 0.04 <= took < 2.0


def test_a_failing_batch_fails_its_queries_only():
    rec = Recorder(fail_on=3)

    async def main():
        b = MicroBatcher(rec, max_batch=2, max_wait_s=0.2)
        await b.start()
        first = await asyncio.gather(b.submit([1]), b.submit([2]))
        with pytest.raises(RuntimeError, match="query 3 broke the model"):
            await asyncio.gather(b.submit([3]), b.submit([4]))
        after = await b.submit([5])
        await b.stop()
        return first, after

    first, after = run(main())
    assert first == [[10], [20]] and after == [50]


def test_call_runs_on_the_model_thread_and_stop_refuses_new_work():
    rec = Recorder()

    async def main():
        import threading

        b = MicroBatcher(rec, max_batch=2, max_wait_s=0.0)
        await b.start()
        name = await b.call(lambda: threading.current_thread().name)
        await b.stop()
        with pytest.raises(ServerStopping):
            await b.submit([1])
        return name

    assert run(main()).startswith("serving-model")


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch=0"):
        MicroBatcher(Recorder(), max_batch=0, max_wait_s=0.0)
