"""Data parallelism under torchrun: which process this is, the process group, the collectives.

``torchrun --nproc_per_node N scripts/pre_train.py ...`` starts N processes per node and
gives each ``RANK`` (0 .. WORLD_SIZE-1 over all nodes), ``LOCAL_RANK`` (0 .. N-1 on its
node) and ``WORLD_SIZE``, plus ``MASTER_ADDR`` / ``MASTER_PORT`` for the rendezvous.
``DistEnv.from_environ`` reads them. A process started without them, or with
``WORLD_SIZE=1``, is a single process: no process group is made and every helper here is
the identity, so one-process runs are exactly what they were.

Backend: NCCL when the model runs on CUDA, gloo on CPU. Each rank drives one GPU: the
command line sets RecBole's ``gpu_id`` (which RecBole writes into ``CUDA_VISIBLE_DEVICES``)
to the rank's GPU (``rank_gpu_id``), so ``cuda`` in every process is its own device.

The trainer wraps the model in ``DistributedDataParallel`` through ``TrainingLoss``: DDP
synchronises gradients only for work done through the wrapper's ``forward``, and the fork's
models train through ``training_loss``, not ``forward``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from recbole_fork.errors import UserError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class DistributedError(UserError):
    """A user-caused data-parallel setup error (one-line message)."""


@dataclass(frozen=True)
class DistEnv:
    """This process's place among the data-parallel processes (one process: the defaults)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> DistEnv:
        """Read torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; none set = one process.

        Raises:
            DistributedError: only some of the three are set, or their values do not fit
                together (``0 <= RANK < WORLD_SIZE``, ``LOCAL_RANK >= 0``).
        """
        environ = os.environ if environ is None else environ
        present = [name for name in TORCHRUN_VARS if name in environ]
        if not present:
            return cls()
        if len(present) < len(TORCHRUN_VARS):
            missing = [name for name in TORCHRUN_VARS if name not in environ]
            raise DistributedError(
                f"{', '.join(present)} set but {', '.join(missing)} not: start data-parallel "
                "runs with torchrun, which sets all three"
            )
        try:
            rank, world, local = (int(environ[name]) for name in TORCHRUN_VARS)
        except ValueError:
            values = {name: environ[name] for name in TORCHRUN_VARS}
            raise DistributedError(f"torchrun variables are not integers: {values}") from None
        if world < 1 or not 0 <= rank < world or local < 0:
            raise DistributedError(
                f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}: need "
                "0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0"
            )
        return cls(rank=rank, world_size=world, local_rank=local)

    @property
    def enabled(self) -> bool:
        """True when there are several processes (a process group and DDP are used)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs to MLflow and writes checkpoints and results."""
        return self.rank == 0

    def local_batch_size(self, global_batch_size: int) -> int:
        """Per-rank batch of a global ``train_batch_size``, so 1 or N processes optimise alike.

        Raises:
            DistributedError: the global batch is not a positive multiple of the world size.
        """
        size = int(global_batch_size)
        if size < 1 or size % self.world_size:
            raise DistributedError(
                f"train_batch_size={size} is the global batch and must be a positive multiple "
                f"of the {self.world_size} processes (WORLD_SIZE); e.g. "
                f"--set train_batch_size={max(1, size // self.world_size) * self.world_size}"
            )
        return size // self.world_size

    def shard(self) -> dict[str, int]:
        """Keyword arguments that select this rank's users in ``SeqData``'s loaders.

        Empty for one process, so the loaders are called exactly as before.
        """
        return {"rank": self.rank, "world_size": self.world_size} if self.enabled else {}


SINGLE = DistEnv()


def rank_gpu_id(env: DistEnv, environ: Mapping[str, str] | None = None) -> str:
    """The GPU id this rank should train on, as RecBole's ``gpu_id`` (one id, or "" for CPU).

    The ``LOCAL_RANK``-th entry of the ``CUDA_VISIBLE_DEVICES`` that torchrun was started
    with, else ``LOCAL_RANK`` itself; "" when that variable hides every GPU (CPU training).

    Raises:
        DistributedError: more processes on this node than GPUs listed.
    """
    environ = os.environ if environ is None else environ
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return str(env.local_rank)
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if not ids:
        return ""
    if env.local_rank >= len(ids):
        raise DistributedError(
            f"LOCAL_RANK={env.local_rank} but CUDA_VISIBLE_DEVICES={visible!r} lists "
            f"{len(ids)} GPU(s): start at most {len(ids)} processes per node (--nproc_per_node)"
        )
    return ids[env.local_rank]


def backend_for(device: torch.device | str) -> str:
    """``nccl`` for CUDA, ``gloo`` for CPU."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


@contextmanager
def process_group(env: DistEnv, device: torch.device | str | None) -> Iterator[None]:
    """Join the process group for the block (and leave it after); nothing for one process.

    Rendezvous through torchrun's ``MASTER_ADDR`` / ``MASTER_PORT`` (``env://``).
    """
    if not env.enabled:
        yield
        return
    import torch.distributed as dist

    device = torch.device(device or "cpu")
    backend = backend_for(device)
    device_id = None
    if backend == "nccl":
        # One visible GPU per process (rank_gpu_id), so its index here is 0.
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.set_device(index)
        device_id = torch.device("cuda", index)
    dist.init_process_group(
        backend=backend, rank=env.rank, world_size=env.world_size, device_id=device_id
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: Sequence[float], env: DistEnv) -> list[float]:
    """Element-wise sums over all ranks of ``values`` (float64); the values as they are for
    one process. Every rank must pass the same number of values, in the same order."""
    if not env.enabled:
        return [float(v) for v in values]
    import torch.distributed as dist

    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu()]


def all_gather_object(obj: Any, env: DistEnv) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (pickled); ``[obj]`` alone."""
    if not env.enabled:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(env: DistEnv) -> None:
    """Wait until every rank gets here (e.g. while rank 0 writes a checkpoint)."""
    if not env.enabled:
        return
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


class TrainingLoss(nn.Module):
    """``forward(batch, generator) = model.training_loss(batch, generator)``.

    DistributedDataParallel prepares its gradient all-reduce in its own ``forward``; this
    module routes the fork's training entry point through it. It holds no parameters of its
    own, so ``model.state_dict()`` (not this wrapper's) is what checkpoints store.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None):
        return self.model.training_loss(batch, generator)


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(TrainingLoss(model))``; call it with ``(batch, generator)``.

    Construction broadcasts rank 0's parameters and buffers, so every rank starts from the
    same weights. Needs the process group (``process_group``).
    """
    from torch.nn.parallel import DistributedDataParallel

    device_ids = None
    if device.type == "cuda":
        device_ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return DistributedDataParallel(TrainingLoss(model), device_ids=device_ids)


__all__ = [
    "SINGLE",
    "DistEnv",
    "DistributedError",
    "TrainingLoss",
    "all_gather_object",
    "all_reduce_sum",
    "backend_for",
    "barrier",
    "data_parallel",
    "process_group",
    "rank_gpu_id",
]
