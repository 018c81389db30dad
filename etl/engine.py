"""Run one per-part function over many parts: a `multiprocess` pool or Ray tasks.

Both engines run the same top-level function on the same task objects and return results
in task order, so outputs do not depend on the engine or the number of workers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

ENGINES = ("multiprocess", "ray")


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
        ValueError: unknown kind or workers < 1 (when built).
    """

    kind: str = "multiprocess"
    workers: int = 1
    ray_address: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ENGINES:
            raise ValueError(f"unknown engine {self.kind!r}; choose one of {', '.join(ENGINES)}")
        if self.workers < 1:
            raise ValueError(f"workers={self.workers}; pass --workers 1 or more")

    def map(
        self,
        fn: Callable[[Any], Any],
        tasks: Iterable[Any],
        *,
        desc: str = "",
        total: int | None = None,
    ) -> list[Any]:
        """Apply `fn` to every task and return the results in task order.

        Tasks are drawn lazily with at most `2 * workers` in flight, so a generator of large
        tasks (blocks of a gzip file read by the parent) keeps memory bounded.

        Args:
            fn: a module-level function (it is shipped to worker processes).
            tasks: picklable arguments, one per call (a sequence or an iterator).
            desc: progress bar label.
            total: the number of tasks for the progress bar when `tasks` has no len().
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
            from multiprocess import Pool

            results = []
            with Pool(self.workers) as pool:
                pending: deque = deque()
                for task in tasks:
                    if len(pending) >= 2 * self.workers:
                        results.append(pending.popleft().get())
                        bar.update()
                    pending.append(pool.apply_async(fn, (task,)))
                while pending:
                    results.append(pending.popleft().get())
                    bar.update()
            return results
        finally:
            bar.close()


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
