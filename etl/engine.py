"""Run one per-part function over many parts: a pool of forked processes, or Ray tasks.

Both engines run the same top-level function on the same task objects and return results
in task order, so outputs do not depend on the engine or the number of workers.

The process pool is the standard library's `multiprocessing` (fork) with one pipe per
worker, watched together with each worker's exit: a worker that dies (the out-of-memory
killer sends SIGKILL) ends the map at once with `WorkerDied` naming the task it was running,
where a `multiprocessing.Pool` would wait for its result for ever. Whatever ends the map
(success, an error, a dead worker, Ctrl-C), every worker is stopped and reaped before it
returns; workers ignore SIGINT (Ctrl-C reaches the parent, which stops them) and exit when
the parent's end of their pipe closes (the parent was killed).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from tqdm import tqdm

from etl.errors import EtlError

ENGINES = ("multiprocess", "ray")
_STOP_SECONDS = 5.0  # a worker that ignores SIGTERM this long is killed


class WorkerDied(EtlError):
    """A worker process died while running a task (out of memory, killed); one line."""


@dataclass(frozen=True)
class Engine:
    """How the steps map a per-part function over parts: the one place for these settings.

    Attributes:
        kind: 'multiprocess' or 'ray'.
        workers: processes (multiprocess, 1 runs inline) or CPUs of a local Ray instance.
            On an existing cluster (`ray_address`) the cluster's CPUs run the tasks and
            `workers` only bounds the tasks in flight (2 * workers): give its CPU count.
        ray_address: passed to `ray.init(address=...)` (`head:6379`, or `auto` on a node of
            the cluster); None starts a local instance. The workers import `etl` as
            installed on their node, and every node must see the input and output paths.
        progress: show tqdm bars (the download step's too).

    Raises:
        EtlError: unknown kind or workers < 1 (when built).
    """

    kind: str = "multiprocess"
    workers: int = 1
    ray_address: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ENGINES:
            raise EtlError(f"unknown engine {self.kind!r}; choose one of {', '.join(ENGINES)}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise EtlError(f"workers={self.workers!r}; pass --workers 1 or more")

    def map(
        self,
        fn: Callable[[Any], Any],
        tasks: Iterable[Any],
        *,
        desc: str = "",
        total: int | None = None,
    ) -> list[Any]:
        """Apply `fn` to every task and return the results in task order.

        Tasks are drawn lazily, one ahead of the busy workers, so a generator of large tasks
        (blocks of a gzip file read by the parent) keeps memory bounded. A task may define
        `describe() -> str` for the message naming it when its worker dies.

        Args:
            fn: a module-level function (workers are forked, Ray ships it by reference).
            tasks: picklable arguments, one per call (a sequence or an iterator).
            desc: progress bar label, also the step part named when a worker dies.
            total: the number of tasks for the progress bar when `tasks` has no len().

        Raises:
            WorkerDied: a worker process died while running a task.
            Exception: whatever `fn` raised, with the worker's traceback as its cause.
        """
        if total is None and hasattr(tasks, "__len__"):
            total = len(tasks)  # type: ignore[arg-type]
        bar = tqdm(total=total, desc=desc, disable=not self.progress, leave=False)
        try:
            if self.kind == "ray":
                return _map_ray(fn, tasks, self.workers, self.ray_address, bar)
            if self.workers == 1:
                results = []
                for task in tasks:
                    results.append(fn(task))
                    bar.update()
                return results
            return _map_processes(fn, tasks, self.workers, desc, bar)
        finally:
            bar.close()


class _RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, shown as its cause."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0])


def _describe(index: int, task: Any) -> str:
    """'task 3 (all_csv_files.csv, chunk 3)': the task's own description when it has one."""
    describe = getattr(task, "describe", None)
    text = describe() if callable(describe) else task if isinstance(task, str) else None
    return f"task {index + 1}" + (f" ({text})" if text else "")


def _worker_loop(fn: Callable[[Any], Any], conn: Connection, parent_ends: list[Connection]) -> None:
    """A worker: receive (index, task), send back ('ok', result) or ('err', exc, traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    for end in parent_ends:  # so that the parent's death closes this worker's pipe
        end.close()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if message is None:
            return
        index, task = message
        try:
            reply: tuple = ("ok", (index, fn(task)))
        except BaseException as exc:  # sent to the parent, which re-raises it
            reply = ("err", exc, traceback.format_exc())
        try:
            try:
                conn.send(reply)
            except (TypeError, AttributeError, ValueError) as exc:  # pickling failed
                text = reply[2] if reply[0] == "err" else ""
                conn.send(("err", RuntimeError(f"cannot send the result back: {exc!r}"), text))
        except OSError:
            return  # the parent is gone


def _exit_text(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        why = " (what the out-of-memory killer sends)" if -exitcode == signal.SIGKILL else ""
        return f"was killed by {name}{why}"
    return f"exited with status {exitcode}"


class _Pool:
    """`workers` forked processes, each with its own pipe; stopped and reaped by `close`."""

    def __init__(self, fn: Callable[[Any], Any], workers: int) -> None:
        ctx = multiprocessing.get_context("fork")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        try:
            for _ in range(workers):
                parent_end, child_end = ctx.Pipe(duplex=True)
                proc = ctx.Process(
                    target=_worker_loop,
                    args=(fn, child_end, [*self.conns, parent_end]),
                    daemon=True,
                )
                self.conns.append(parent_end)
                self.procs.append(proc)
                proc.start()
                child_end.close()
        except BaseException:
            self.close()
            raise

    def close(self, graceful: bool = False) -> None:
        """Stop and reap every worker: asked to stop when `graceful` (all idle), else SIGTERM."""
        if graceful:
            for conn in self.conns:
                with contextlib.suppress(OSError):  # that worker is already gone
                    conn.send(None)
            for proc in self.procs:
                proc.join(_STOP_SECONDS)
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join(_STOP_SECONDS)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self.conns:
            conn.close()


def _map_processes(
    fn: Callable[[Any], Any], tasks: Iterable[Any], workers: int, desc: str, bar: tqdm
) -> list[Any]:
    """Up to `workers` tasks running and `workers` prepared ahead (as `multiprocessing.Pool`
    with 2 * workers in flight), results collected as soon as they come."""
    pool = _Pool(fn, workers)
    results: dict[int, Any] = {}
    done = False
    try:
        todo: Iterator[tuple[int, Any]] = enumerate(tasks)
        ahead: deque[tuple[int, Any]] = deque()  # prepared while the workers compute
        more = True
        idle = deque(range(workers))
        busy: dict[int, str] = {}  # worker -> description of its task
        while more or ahead or busy:
            while idle and ahead:
                w = idle.popleft()
                task = ahead.popleft()
                busy[w] = _describe(*task)
                with contextlib.suppress(OSError):  # a dead worker: its sentinel says how
                    pool.conns[w].send(task)
            if more and len(ahead) < workers:
                nxt = next(todo, None)
                if nxt is None:
                    more = False
                else:
                    ahead.append(nxt)
                timeout: float | None = 0  # look for results, then prepare more
            else:
                timeout = None
            if not busy:
                continue
            watched = [pool.conns[w] for w in busy] + [pool.procs[w].sentinel for w in busy]
            ready = set(wait(watched, timeout))
            for w in list(busy):
                conn, proc = pool.conns[w], pool.procs[w]
                if conn in ready or (proc.sentinel in ready and conn.poll()):
                    try:
                        reply = conn.recv()
                    except (EOFError, OSError):
                        reply = None
                    if reply is not None:
                        del busy[w]
                        if reply[0] == "err":
                            exc = reply[1]
                            exc.__cause__ = _RemoteTraceback(reply[2])
                            raise exc
                        index, value = reply[1]
                        results[index] = value
                        idle.append(w)
                        bar.update()
                        continue
                if proc.sentinel in ready:
                    proc.join()
                    raise WorkerDied(
                        f"a worker process (pid {proc.pid}) {_exit_text(proc.exitcode)} while "
                        f"running {busy[w]} of {desc or 'a step'}; rerun with fewer --workers "
                        "or a smaller --chunk-mb, or on a machine with more memory"
                    )
        done = True
    finally:
        pool.close(graceful=done)
    return [results[i] for i in range(len(results))]


DEFAULT_ENGINE = Engine()  # one process, with progress bars


def _map_ray(
    fn: Callable[[Any], Any],
    tasks: Iterable[Any],
    workers: int,
    ray_address: str | None,
    bar: tqdm,
) -> list[Any]:
    # Imported here so that the library and most tests never need Ray.
    import ray

    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if ray_address:
            kwargs["address"] = ray_address
        else:
            kwargs["num_cpus"] = workers
        ray.init(**kwargs)
        started = True
    try:
        remote = ray.remote(fn)
        results = []
        pending: deque = deque()
        for task in tasks:
            if len(pending) >= 2 * workers:
                results.append(ray.get(pending.popleft()))
                bar.update()
            pending.append(remote.remote(task))
        while pending:
            results.append(ray.get(pending.popleft()))
            bar.update()
        return results
    finally:
        if started:
            ray.shutdown()
