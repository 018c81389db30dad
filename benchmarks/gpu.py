r"""The GPU path, measured: one command for every check of issue 19 (writes ``results/gpu.json``).

Checks, run in this order (each unit prints one line and records ``status`` ok | failed |
skipped with its ``reason``; a failure never stops the script, a time budget skips what no
longer fits, so one broken path never costs the whole device time):

1. ``correctness``: SASRecX and HSTU on a small synthetic set (dropout off), 50 optimizer
   steps through ``SeqTrainer`` on the device and on the CPU from the same seed. Losses agree
   within 1e-3 relative at the last step; the full-ranking test metrics of the SAME weights
   (the device's, copied to the CPU model) within 1e-4; bf16 autocast against fp32 on the
   device: the mean loss of the last 10 steps within 2%. Negatives come from one CPU
   generator on both sides (a CUDA generator draws another stream); the trainer copies them
   to the device as it does for any sampler.
2. ``throughput``: SASRecX (L=50, batch 512) and HSTU (L=200, batch 128) at three sizes
   (width 64/256/512, 2/4/8 layers) on a synthetic set of 1M interactions (users of 203
   interactions: every training window is full, so batches keep one shape), 1,024 shared
   uniform negatives, id encoder, pin_memory on; fp32 and bf16, eager and ``torch_compile``.
   Each configuration is the trainer's own epoch loop (``SeqTrainer._train_epoch``: pinned
   batches, non-blocking copies, autocast, the compiled backbone, Adam) stopped after a few
   warm-up steps, then again after the measured steps; tokens/s, sequences/s, FLOP/s and MFU
   are the trainer's own per-epoch figures (``recbole_fork.flops``: FLOPs as each step ran,
   forward + backward; MFU against ``hardware.PEAK_FLOPS``), peak memory is the CUDA
   allocator's. The eager runs come first; compiled runs (largest size first) come last.
3. ``ranking``: ``evaluate_ranking`` (full mode, 50 history items excluded per user) and
   ``topk_items`` (k=10) of 16,384 random users against 1M and 3M random item embeddings
   (D = 64 and 512) on the device; users/s, against the same number of plain
   ``torch.matmul`` calls of the same shapes (``[4096, D] x [D, 65536 + 4096]``, fp32) timed
   in the same run: ``share_of_matmul_rate`` = matmul-only seconds / ranking seconds.
4. ``serving``: when ``recbole_fork.serving`` and ``scripts/serve.py`` exist (issue 18),
   the server on the device over a 1M-item SASRecX checkpoint, latency p50/p95/p99 and
   requests/s at concurrency 1 and 32; else skipped, saying why.

Goals (issue 19): bf16 training of the largest size at 40% MFU or more; full ranking at 50%
or more of the matmul rate. ``goals`` in the JSON says whether each was reached.

Commands (from the repository root):

    python benchmarks/gpu.py                             # on a CUDA machine, ~6 minutes
    python benchmarks/gpu.py --device cpu --smoke        # same code paths, tiny, on the CPU
    python benchmarks/gpu.py --checks ranking,serving    # a partial rerun

``--smoke`` uses tiny sizes and writes ``results/gpu-smoke.json``; on the CPU the trainer
ignores bf16 and skips ``torch_compile`` (both CUDA-only), so those variants run eager fp32
and say so (``effective``), and the bf16 correctness check is skipped.

On a lent GPU machine (the device tool; /work/.library/device/README.md and KINDS.md). Its
image has python3 3.12 with CUDA PyTorch, numpy, pandas, scipy, pyarrow, psutil, tqdm,
pyyaml, colorama, tensorboard and scikit-learn, but not RecBole, colorlog or texttable (all
this script imports besides), and nothing can be fetched there: they travel as wheels, torch
never. Once, in the root of the checkout the tool sends (``.whl/`` is git-ignored):

    .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl recbole==1.2.1 colorlog==4.7.2 texttable==1.7.2

and, once ``recbole_fork.serving`` exists (issue 18), its server's packages too, at the shared
.venv's versions (check its imports for more): ``fastapi==0.165.0 starlette==1.10.0
pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
uvicorn==0.55.0 orjson==3.13.0`` (about 5 MB in all). Then the tool's ``run`` with
``carry: [".whl"]``, ``timeout_s: 540`` and this command (one line):

    set -o pipefail; export PYTHONUNBUFFERED=1 GPU_BENCH_TRACEBACK=1; python3 -m pip install
    -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site
    .whl/*.whl || exit 3; export PYTHONPATH=/tmp/site:$PWD; nvidia-smi
    --query-gpu=name,driver_version,memory.total --format=csv | tee $OUT/nvidia-smi.txt;
    python3 benchmarks/gpu.py --budget-s 420 --workdir /tmp/gpu-bench 2>&1 | tee
    $OUT/gpu.log; rc=$?; cp benchmarks/results/gpu.json $OUT/; timeout 90 python3 -m pytest
    -q -p no:cacheprovider tests/fork/test_evaluation.py -k cuda_matches_cpu 2>&1 | tail -3;
    exit $rc

(the last step runs the suite's one CUDA-only test). ``--budget-s 420`` keeps the command
under 8 minutes, so with the machine's start (1 to 2 minutes) a rerun of what failed
(``--checks``) still fits in the 15 minutes a task is lent. Units that no longer fit the
budget are skipped and say so; the JSON is rewritten after every unit, so a killed run
keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CHECKS = ("correctness", "throughput", "ranking", "serving")
SEED = 2024
# The tolerances.
LOSS_RTOL = 1e-3  # device fp32 vs CPU fp32, loss at the last of the steps
METRIC_ATOL = 1e-4  # full-ranking metrics of the same weights
BF16_RTOL = 0.02  # bf16 vs fp32 on the device, mean loss of the last 10 steps
GOAL_MFU = 0.40  # bf16, largest size
GOAL_MATMUL_SHARE = 0.50  # full ranking against plain matmuls of the same shapes


# ----- sizes ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    """Every size the run uses: the full plan for a GPU, a tiny one for ``--smoke``."""

    # correctness: a small learnable set, a small model
    corr_users: int
    corr_per_user: int
    corr_catalog: int
    corr_steps: int
    corr_width: int
    corr_len: int
    corr_batch: int
    # throughput: the synthetic 1M set (users of `per_user` interactions) and the grid
    thr_interactions: int
    thr_per_user: int
    thr_catalog: int
    sizes: tuple[tuple[str, int, int, int], ...]  # (name, width, layers, heads)
    sasrec_len: int
    sasrec_batch: int
    hstu_len: int
    hstu_batch: int
    negatives: int
    warmup_steps: int
    measured_steps: int
    # ranking
    rank_items: tuple[int, ...]
    rank_dims: tuple[int, ...]
    rank_users: int
    rank_history: int
    item_chunk: int
    user_chunk: int
    rank_repeats: int
    # serving
    serve_items: int
    serve_requests: tuple[tuple[int, int], ...]  # (concurrency, requests)


FULL = Plan(
    corr_users=400,
    corr_per_user=30,
    corr_catalog=1000,
    corr_steps=50,
    corr_width=32,
    corr_len=20,
    corr_batch=64,
    thr_interactions=1_000_000,
    thr_per_user=203,  # 201 training items: 4 full windows of L=50, 1 of L=200
    thr_catalog=600_000,
    sizes=(("s", 64, 2, 2), ("m", 256, 4, 4), ("l", 512, 8, 8)),
    sasrec_len=50,
    sasrec_batch=512,
    hstu_len=200,
    hstu_batch=128,
    negatives=1024,
    warmup_steps=5,
    measured_steps=20,
    rank_items=(1_000_000, 3_000_000),
    rank_dims=(64, 512),
    rank_users=16384,
    rank_history=50,
    item_chunk=65536,
    user_chunk=4096,
    rank_repeats=3,
    serve_items=1_000_000,
    serve_requests=((1, 200), (32, 1000)),
)
SMOKE = Plan(
    corr_users=60,
    corr_per_user=12,
    corr_catalog=80,
    corr_steps=50,
    corr_width=16,
    corr_len=10,
    corr_batch=32,
    thr_interactions=12_000,
    thr_per_user=23,  # 21 training items: 4 full windows of L=5, 1 of L=20
    thr_catalog=3000,
    sizes=(("s", 8, 1, 1), ("m", 16, 1, 2), ("l", 16, 2, 2)),
    sasrec_len=5,
    sasrec_batch=32,
    hstu_len=20,
    hstu_batch=8,
    negatives=32,
    warmup_steps=1,
    measured_steps=2,
    rank_items=(20_000, 60_000),
    rank_dims=(8,),
    rank_users=64,
    rank_history=5,
    item_chunk=8192,
    user_chunk=32,
    rank_repeats=1,
    serve_items=5000,
    serve_requests=((1, 8), (32, 64)),
)


# ----- one unit of work: one line, a status, a time limit ------------------------------------


class UnitTimeout(Exception):
    """A unit ran past its time limit (raised from SIGALRM)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``UnitTimeout`` in the main thread after ``seconds`` (no limit off the main
    thread or where SIGALRM does not exist)."""
    usable = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not usable or seconds <= 0:
        yield
        return

    def _raise(signum, frame):
        raise UnitTimeout(f"timed out after {seconds:.3g} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Runner:
    """Runs units under the global budget and per-unit limits; writes the JSON after each."""

    def __init__(self, out: Path, budget_s: float, report: dict[str, Any]) -> None:
        self.out = out
        self.start = time.perf_counter()
        self.budget_s = budget_s
        self.report = report

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def unit(
        self, label: str, fn: Callable[[], dict[str, Any]], *, needs_s: float, limit_s: float
    ) -> dict[str, Any]:
        """``fn()``'s figures with ``status`` ok, or failed / skipped with a one-line reason."""
        left = self.left()
        if left < needs_s:
            return self._done(
                label, {"status": "skipped", "reason": f"time budget: {left:.0f} s left"}, 0.0
            )
        began = time.perf_counter()
        try:
            with time_limit(min(limit_s, left)):
                result = {"status": "ok", **fn()}
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one line, then the next unit: the point of this script
            result = {"status": "failed", "reason": _one_line(exc)}
            if os.environ.get("GPU_BENCH_TRACEBACK"):
                traceback.print_exc()
        finally:
            _free_memory()
        return self._done(label, result, time.perf_counter() - began)

    def _done(self, label: str, result: dict[str, Any], seconds: float) -> dict[str, Any]:
        result["seconds"] = round(seconds, 2)
        status = result["status"]
        detail = result.get("reason") or result.get("summary", "")
        print(f"[{status:7s}] {label} ({seconds:.1f} s) {detail}", flush=True)
        return result

    def write(self) -> None:
        """The report so far, atomically (a killed run keeps what it measured)."""
        self.report["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.out.parent, prefix=".gpu.", suffix=".json.tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.report, f, indent=2)
            f.write("\n")
        os.replace(tmp, self.out)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _overall(units: list[dict[str, Any]]) -> dict[str, Any]:
    """A check's status from its units: failed if any failed, ok if any ran, else skipped."""
    failed = [u for u in units if u["status"] == "failed"]
    if failed:
        return {"status": "failed", "reason": f"{len(failed)} failed; first: {failed[0]['reason']}"}
    if any(u["status"] == "ok" for u in units):
        return {"status": "ok"}
    reasons = [u.get("reason", "") for u in units]
    return {"status": "skipped", "reason": reasons[0] if reasons else "nothing to run"}


# ----- synthetic data ------------------------------------------------------------------------


def write_inter(
    root: Path,
    base: str,
    n_users: int,
    per_user: int,
    catalog: int,
    seed: int,
    disjoint: bool = False,
) -> str:
    """``root/NAME/NAME.inter``: ``n_users`` users of ``per_user`` hourly interactions.

    Each history walks the item ids (next = previous + 1 with probability 0.8, else a random
    item), so a model can learn it; ``disjoint`` gives each user its own run of ids instead
    (``n_users * per_user`` distinct items, for a catalog of a set size). Written under a
    temporary name and renamed; an existing file (an earlier unit's) is kept. Returns the
    dataset's NAME: ``base`` and the sizes, so that other sizes never reuse the file.
    """
    name = f"{base}-{n_users}x{per_user}-" + ("disjoint" if disjoint else f"c{catalog}")
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.inter"
    if path.is_file():  # written by an earlier unit (same arguments, same seed)
        return name
    import pandas as pd

    rng = np.random.default_rng(seed)
    if disjoint:
        items = np.arange(n_users * per_user, dtype=np.int64).reshape(n_users, per_user)
    else:
        steps = np.where(
            rng.random((n_users, per_user)) < 0.8, 1, rng.integers(2, catalog, (n_users, per_user))
        )
        steps[:, 0] = rng.integers(0, catalog, n_users)
        items = np.cumsum(steps, axis=1) % catalog
    users = np.repeat(np.arange(n_users), per_user)
    times = 1_600_000_000 + 3600 * np.tile(np.arange(per_user), n_users) + users % 3600
    frame = pd.DataFrame(
        {"user_id:token": users, "item_id:token": items.reshape(-1), "timestamp:float": times}
    )
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp, sep="\t", index=False)
    os.replace(tmp, path)
    return name


# ----- runs through the project's own assembly and trainer -----------------------------------


def bounded_trainer_class():
    """``SeqTrainer`` whose epoch loop stops after a set number of optimizer steps.

    The trainer's own ``_train_epoch`` (pinned batches, non-blocking copies, autocast, the
    compiled backbone, the optimizer, its FLOP and throughput figures) runs unchanged; only
    the stop test (its ``train_flops_budget`` check) reads a step count. ``fit`` is not used:
    its evaluation and checkpoint writes are not training throughput. Optionally keeps each
    step's loss (as a device tensor: the trainer reads its value anyway).
    """
    from recbole_fork.trainer import SeqTrainer

    class BoundedTrainer(SeqTrainer):
        stop_at = 0
        record_losses = False

        def batch_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            loss = super().batch_loss(batch)
            if self.record_losses:
                self.step_losses.append(loss.detach())
            return loss

        def _budget_reached(self) -> bool:
            return self.state.global_step >= self.stop_at

    return BoundedTrainer


def run_config(data_root: Path, dataset: str, device: torch.device, **settings):
    """``build_config`` of the benchmark's common settings plus ``settings``, and its
    ``RunSettings`` with ``device`` (RecBole 1.2.1 picks CUDA whenever it is available, so
    the device is set on the settings explicitly; ``use_gpu`` says the same)."""
    from recbole_fork.config import build_config
    from recbole_fork.settings import RunSettings

    base = {
        "data_path": str(data_root),
        "dataset": dataset,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "use_gpu": device.type == "cuda",
        "show_progress": False,
        "epochs": 1,
        "learning_rate": 1e-3,
        "scheduler": {"type": "constant"},
        "seed": SEED,
        "item_encoder": "id",
        "loss_type": "sampled_softmax",
        "neg_sampler": "uniform",
        "shared_negatives": True,
        "eval_mode": "full",
        "topk": [10],
    }
    config = build_config({**base, **settings})
    return config, dataclasses.replace(RunSettings.from_config(config), device=str(device))


def model_settings(model: str, width: int, layers: int, heads: int, length: int) -> dict:
    """Backbone keys of one size (SASRecX: feed-forward 4 x width; HSTU: 64-wide heads)."""
    if model == "SASRecX":
        return {
            "hidden_size": width,
            "n_layers": layers,
            "n_heads": heads,
            "inner_size": 4 * width,
            "max_seq_length": length,
        }
    head = max(width // heads, 1)
    return {
        "hidden_size": width,
        "n_layers": layers,
        "n_heads": heads,
        "attention_dim": head,
        "linear_dim": head,
        "max_seq_length": length,
    }


def make_trainer(settings, data, model, device: torch.device, checkpoint: Path):
    from recbole_fork.session import checkpoint_meta

    trainer = bounded_trainer_class()(
        model,
        data,
        training=settings.training,
        evaluation=settings.evaluation,
        checkpoint_path=checkpoint,
        device=device,
        meta=checkpoint_meta(settings),
    )
    trainer.step_losses = []
    return trainer


def train_steps(trainer, n_steps: int, epoch: int) -> tuple[list[dict[str, float]], int]:
    """Run the trainer's epoch loop until ``n_steps`` more optimizer steps are done.

    Returns the per-epoch metrics of the epochs it ran and the next epoch number.

    Raises:
        RuntimeError: an epoch that took no optimizer step (an empty training set).
    """
    trainer.stop_at = trainer.state.global_step + n_steps
    metrics = []
    while trainer.state.global_step < trainer.stop_at:
        before = trainer.state.global_step
        metrics.append(trainer._train_epoch(epoch))
        epoch += 1
        if trainer.state.global_step == before:
            raise RuntimeError("an epoch took no optimizer step: the training set is empty")
    return metrics, epoch


# ----- 1. correctness ------------------------------------------------------------------------


def correctness_unit(
    model_name: str, plan: Plan, device: torch.device, data_root: Path, work: Path
) -> dict[str, Any]:
    """fp32 on ``device`` against fp32 on the CPU; bf16 against fp32 on ``device``."""
    from recbole_fork.session import assemble

    name = write_inter(
        data_root, "corr", plan.corr_users, plan.corr_per_user, plan.corr_catalog, SEED
    )
    common = {
        "model": model_name,
        **model_settings(model_name, plan.corr_width, 2, 2, plan.corr_len),
        "hidden_dropout_prob": 0.0,  # dropout masks come from device RNG streams
        "attn_dropout_prob": 0.0,
        "num_negatives": 16,
        "train_batch_size": plan.corr_batch,
        "eval_batch_size": 256,
        "bf16": False,
    }

    def run(run_device: torch.device, bf16: bool):
        config, settings = run_config(data_root, name, run_device, **{**common, "bf16": bf16})
        built = assemble(config, settings)
        trainer = make_trainer(settings, built.data, built.model, run_device, work / "c.pth")
        # One CPU stream of negatives on every side; the sampler copies them to the device.
        trainer.sample_generator = torch.Generator().manual_seed(SEED)
        trainer.record_losses = True
        train_steps(trainer, plan.corr_steps, 0)
        return trainer, [float(x) for x in trainer.step_losses]

    cpu = torch.device("cpu")
    dev_trainer, dev_losses = run(device, bf16=False)
    cpu_trainer, cpu_losses = run(cpu, bf16=False)
    rel = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(dev_losses, cpu_losses, strict=True)]
    # The same weights (the device's) on both sides, then the test phase's full ranking.
    weights = {k: v.detach().to(cpu) for k, v in dev_trainer.model.state_dict().items()}
    cpu_trainer.model.load_state_dict(weights)
    dev_metrics = dev_trainer.evaluate("test")
    cpu_metrics = cpu_trainer.evaluate("test")
    names = [k for k in dev_metrics if "@" in k]
    diffs = {k: abs(dev_metrics[k] - cpu_metrics[k]) for k in names}
    out: dict[str, Any] = {
        "steps": len(dev_losses),
        "n_items": int(dev_trainer.model.n_items),
        "test_users": int(dev_metrics["count"]),
        "loss_device_last": dev_losses[-1],
        "loss_cpu_last": cpu_losses[-1],
        "loss_first": dev_losses[0],
        "loss_rel_diff_last": rel[-1],
        "loss_rel_diff_max": max(rel),
        "loss_ok": rel[-1] <= LOSS_RTOL,
        "metrics_device": {k: dev_metrics[k] for k in names},
        "metrics_cpu": {k: cpu_metrics[k] for k in names},
        "metric_abs_diff_max": max(diffs.values()),
        "metrics_ok": max(diffs.values()) <= METRIC_ATOL,
    }
    del cpu_trainer
    if device.type == "cuda":
        _, bf16_losses = run(device, bf16=True)
        fp32_tail = statistics.fmean(dev_losses[-10:])
        bf16_tail = statistics.fmean(bf16_losses[-10:])
        out["bf16"] = {
            "status": "ok",
            "loss_fp32_last10_mean": fp32_tail,
            "loss_bf16_last10_mean": bf16_tail,
            "rel_diff": abs(bf16_tail - fp32_tail) / fp32_tail,
            "ok": abs(bf16_tail - fp32_tail) / fp32_tail <= BF16_RTOL,
        }
    else:
        out["bf16"] = {
            "status": "skipped",
            "reason": "bf16 autocast is CUDA-only in the trainer (use_bf16 is False on cpu)",
        }
    passed = out["loss_ok"] and out["metrics_ok"] and out["bf16"].get("ok", True)
    out["summary"] = (
        f"loss rel diff {rel[-1]:.2e} (<= {LOSS_RTOL:g}), metrics abs diff "
        f"{out['metric_abs_diff_max']:.2e} (<= {METRIC_ATOL:g})"
        + (f", bf16 rel diff {out['bf16']['rel_diff']:.2%}" if "rel_diff" in out["bf16"] else "")
    )
    if not passed:
        raise AssertionError(f"{model_name} outside tolerance: {out['summary']}")
    return out


# ----- 2. training throughput ----------------------------------------------------------------


def throughput_unit(
    model_name: str,
    size: tuple[str, int, int, int],
    bf16: bool,
    compile_: bool,
    plan: Plan,
    device: torch.device,
    data_cache: dict[str, Any],
    data_root: Path,
    work: Path,
) -> dict[str, Any]:
    """Warm-up steps, then measured steps of one configuration through the trainer."""
    from recbole_fork.data import build_seq_data
    from recbole_fork.session import build_model, seed

    size_name, width, layers, heads = size
    sasrec = model_name == "SASRecX"
    length = plan.sasrec_len if sasrec else plan.hstu_len
    batch = plan.sasrec_batch if sasrec else plan.hstu_batch
    n_users = plan.thr_interactions // plan.thr_per_user
    name = write_inter(data_root, "thr", n_users, plan.thr_per_user, plan.thr_catalog, SEED)
    config, settings = run_config(
        data_root,
        name,
        device,
        model=model_name,
        **model_settings(model_name, width, layers, heads, length),
        train_batch_size=batch,
        num_negatives=plan.negatives,
        pin_memory=True,
        bf16=bf16,
        torch_compile=compile_,
    )
    if model_name not in data_cache:  # one load per model (its max_seq_length)
        data = build_seq_data(config, settings.data)
        data.pin_memory = data.pin_memory and device.type == "cuda"  # as session.assemble
        data_cache[model_name] = data
    data = data_cache[model_name]
    if compile_ and device.type == "cuda":
        torch._dynamo.reset()  # fresh caches: no recompile limit carried over between models
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seed(settings)
    model = build_model(settings.spec, data).to(device)
    trainer = make_trainer(settings, data, model, device, work / "t.pth")
    began = time.perf_counter()
    _, epoch = train_steps(trainer, plan.warmup_steps, 0)  # compiles here when asked
    _sync(device)
    warmup_s = time.perf_counter() - began
    began = time.perf_counter()
    epochs, _ = train_steps(trainer, plan.measured_steps, epoch)
    _sync(device)
    wall_s = time.perf_counter() - began
    secs = sum(m["epoch_time_s"] for m in epochs)
    tokens = sum(m["tokens_per_s"] * m["epoch_time_s"] for m in epochs)
    seqs = sum(m["sequences_per_s"] * m["epoch_time_s"] for m in epochs)
    flops = sum(m["flops"] for m in epochs)
    shape = model.last_step_shape
    compiled = getattr(model.backbone, "_compiled_call_impl", None) is not None
    out = {
        "model": model_name,
        "size": size_name,
        "hidden_size": width,
        "n_layers": layers,
        "n_heads": heads,
        "max_seq_length": length,
        "train_batch_size": batch,
        "num_negatives": plan.negatives,
        "n_items": int(model.n_items),
        "params": int(sum(p.numel() for p in model.parameters())),
        "requested": {"bf16": bf16, "torch_compile": compile_},
        "effective": {"bf16": bool(trainer.use_bf16), "torch_compile": compiled},
        "steps": trainer.state.global_step - plan.warmup_steps,
        "batch_width": shape.width,
        "warmup_steps": plan.warmup_steps,
        "warmup_s": round(warmup_s, 3),
        "measured_s": round(secs, 4),
        "wall_s": round(wall_s, 4),
        "tokens_per_s": tokens / secs,
        "sequences_per_s": seqs / secs,
        # The trainer's clock stops before the last step's kernels finish; this one waits.
        "tokens_per_s_wall": tokens / wall_s,
        "train_flops": flops,
        "achieved_flops_per_s": flops / secs,
        "peak_flops": trainer.peak_flops,
        "mfu": flops / secs / trainer.peak_flops if trainer.peak_flops else None,
        "peak_memory_gib": (
            round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
            if device.type == "cuda"
            else None
        ),
    }
    mfu = f", MFU {out['mfu']:.1%}" if out["mfu"] is not None else ""
    out["summary"] = (
        f"{out['tokens_per_s']:,.0f} tokens/s, {out['sequences_per_s']:,.0f} seq/s, "
        f"{out['achieved_flops_per_s'] / 1e12:.2f} TFLOP/s{mfu}"
    )
    return out


def throughput_units(plan: Plan, device: torch.device) -> list[tuple[str, tuple]]:
    """(label, args) of every configuration in run order: eager first, then compiled
    (bf16 before fp32, largest size first), so what is most likely to run out of time or
    break is last."""
    units = []
    for model_name in ("SASRecX", "HSTU"):
        for size in plan.sizes:
            for bf16 in (False, True):
                units.append((model_name, size, bf16, False))
    late = []
    for bf16 in (True, False):
        for size in reversed(plan.sizes):
            for model_name in ("SASRecX", "HSTU"):
                late.append((model_name, size, bf16, True))
    out = []
    for model_name, size, bf16, comp in units + late:
        label = f"{model_name} {size[0]} (d{size[1]} l{size[2]}) {'bf16' if bf16 else 'fp32'}"
        out.append((label + (" compiled" if comp else " eager"), (model_name, size, bf16, comp)))
    return out


# ----- 3. full ranking -----------------------------------------------------------------------


def ranking_unit(n_items: int, dim: int, plan: Plan, device: torch.device) -> dict[str, Any]:
    """``evaluate_ranking`` / ``topk_items`` over random embeddings, and plain matmuls."""
    from recbole_fork.evaluation import evaluate_ranking, topk_items

    gen = torch.Generator().manual_seed(SEED)
    n_users, hist = plan.rank_users, plan.rank_history
    users = torch.randn(n_users, dim, generator=gen).to(device)
    targets = torch.randint(1, n_items, (n_users,), generator=gen).to(device)
    hist_items = torch.randint(1, n_items, (n_users * hist,), generator=gen).to(device)
    hist_indptr = torch.arange(0, n_users * hist + 1, hist).to(device)
    table = torch.randn(n_items, dim, device=device) / math.sqrt(dim)
    common = {
        "hist_indptr": hist_indptr,
        "hist_items": hist_items,
        "item_chunk": plan.item_chunk,
        "user_chunk": plan.user_chunk,
    }

    def item_fn(ids: torch.Tensor) -> torch.Tensor:
        return table[ids]

    def timed(fn: Callable[[], Any]) -> tuple[float, float]:
        """Median seconds of ``rank_repeats`` calls and the peak extra GiB."""
        times, peak = [], 0.0
        for _ in range(plan.rank_repeats):
            _sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            began = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - began)
            if device.type == "cuda":
                peak = max(peak, (torch.cuda.max_memory_allocated(device) - base) / 2**30)
        return statistics.median(times), peak

    evaluate_ranking(users[:64], item_fn, n_items, targets[:64])  # warm-up: kernels, cuBLAS
    full_s, full_peak = timed(
        lambda: evaluate_ranking(users, item_fn, n_items, targets, ks=[10], **common)
    )
    topk_s, topk_peak = timed(lambda: topk_items(users, item_fn, n_items, 10, **common))

    # The same matmuls evaluate_ranking runs, alone: per item chunk of C candidates and user
    # chunk of u users, [u, D] x [D, C + u] (the targets' scores ride along), into one buffer.
    uc, ic = min(plan.user_chunk, n_users), min(plan.item_chunk, n_items - 1)
    buffer = torch.empty(uc * (ic + uc), device=device)
    rows = torch.randn(ic + uc, dim, device=device)  # any rows: only the shapes matter
    chunks = [(s, min(s + plan.item_chunk, n_items)) for s in range(1, n_items, plan.item_chunk)]
    user_slices = [(s, min(s + plan.user_chunk, n_users)) for s in range(0, n_users, uc)]

    def matmuls() -> None:
        for c0, c1 in chunks:
            for u0, u1 in user_slices:
                both = rows[: (c1 - c0) + (u1 - u0)]  # [C + u, D]
                out = buffer[: (u1 - u0) * both.shape[0]].view(u1 - u0, both.shape[0])
                torch.matmul(users[u0:u1], both.T, out=out)

    matmuls()
    matmul_s, _ = timed(matmuls)
    matmul_flops = sum(
        2 * dim * (u1 - u0) * ((c1 - c0) + (u1 - u0)) for c0, c1 in chunks for u0, u1 in user_slices
    )
    out = {
        "n_items": n_items,
        "dim": dim,
        "users": n_users,
        "history_per_user": hist,
        "item_chunk": plan.item_chunk,
        "user_chunk": plan.user_chunk,
        "full_s": full_s,
        "full_users_per_s": n_users / full_s,
        "full_peak_extra_gib": round(full_peak, 3),
        "topk10_s": topk_s,
        "topk10_users_per_s": n_users / topk_s,
        "topk10_peak_extra_gib": round(topk_peak, 3),
        "matmul_s": matmul_s,
        "matmul_users_per_s": n_users / matmul_s,
        "matmul_tflops_per_s": matmul_flops / matmul_s / 1e12,
        "share_of_matmul_rate": matmul_s / full_s,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    out["summary"] = (
        f"full {out['full_users_per_s']:,.0f} users/s = {out['share_of_matmul_rate']:.0%} of "
        f"the matmul rate ({out['matmul_tflops_per_s']:.1f} TFLOP/s); top-10 "
        f"{out['topk10_users_per_s']:,.0f} users/s"
    )
    return out


# ----- 4. serving ----------------------------------------------------------------------------


def serving_absent() -> str | None:
    """Why serving cannot be measured in this tree, or None when it can."""
    import importlib.util

    if importlib.util.find_spec("recbole_fork.serving") is None:
        return "recbole_fork.serving is not in this tree (issue 18 has not landed)"
    if not (REPO / "scripts" / "serve.py").is_file():
        return "scripts/serve.py is not in this tree (issue 18 has not landed)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(base: str) -> bool:
    """True once ``GET /healthz`` answers 200."""
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:  # refused while starting, or an HTTP error status
        return False


def _post(url: str, body: dict[str, Any], timeout: float) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def serving_unit(plan: Plan, device: torch.device, data_root: Path, work: Path) -> dict[str, Any]:
    """A 1M-item SASRecX checkpoint served by ``scripts/serve.py`` on ``device``; latency of
    ``POST /recommend`` at each concurrency (the issue 18 interface)."""
    from recbole_fork.session import assemble

    per_user = 50
    n_users = math.ceil(plan.serve_items / per_user)
    name = write_inter(data_root, "serve", n_users, per_user, 0, SEED, disjoint=True)
    config, settings = run_config(
        data_root,
        name,
        device,
        model="SASRecX",
        **model_settings("SASRecX", 64, 2, 2, 50),
        train_batch_size=256,
        num_negatives=256,
    )
    built = assemble(config, settings)
    trainer = make_trainer(settings, built.data, built.model, device, work / "serve.pth")
    train_steps(trainer, 2, 0)
    trainer.save(0)
    n_items = int(built.model.n_items)
    del trainer, built
    _free_memory()

    port = _free_port()
    log_path = work / "serve.log"
    command = [
        sys.executable,
        str(REPO / "scripts" / "serve.py"),
        "-i",
        str(work / "serve.pth"),
        "--data-path",
        str(data_root),
        "--device",
        device.type,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        began = time.perf_counter()
        while True:
            if server.poll() is not None:
                last = log_path.read_text(errors="replace").strip().splitlines()[-1:] or [""]
                raise RuntimeError(f"serve.py exited with {server.returncode}: {last[0]}")
            if _healthy(base):
                break
            if time.perf_counter() - began > 180:
                raise RuntimeError("serve.py did not answer /healthz within 180 s")
            time.sleep(0.5)
        start_s = time.perf_counter() - began

        def one(i: int) -> float:
            first = (i * 7919 % n_users) * per_user  # a spread of users, no shared RNG
            history = [str(first + j) for j in range(per_user - 2)]  # tokens as in the file
            t0 = time.perf_counter()
            status, body = _post(base + "/recommend", {"history": history, "k": 10}, 60)
            elapsed = time.perf_counter() - t0
            if status != 200:
                raise RuntimeError(f"POST /recommend answered {status}: {body[:200]!r}")
            return elapsed

        one(-1)  # warm-up
        levels = {}
        for concurrency, n_requests in plan.serve_requests:
            t0 = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                latencies = sorted(pool.map(one, range(n_requests)))
            total = time.perf_counter() - t0
            q = np.quantile(np.array(latencies) * 1000, [0.5, 0.95, 0.99])
            levels[str(concurrency)] = {
                "requests": n_requests,
                "p50_ms": round(float(q[0]), 2),
                "p95_ms": round(float(q[1]), 2),
                "p99_ms": round(float(q[2]), 2),
                "requests_per_s": round(n_requests / total, 1),
            }
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    c1, c32 = levels.get("1", {}), levels.get("32", {})
    return {
        "n_items": n_items,
        "dim": 64,
        "k": 10,
        "history_length": per_user - 2,
        "server_start_s": round(start_s, 2),
        "concurrency": levels,
        "summary": f"c=1 p99 {c1.get('p99_ms')} ms; c=32 {c32.get('requests_per_s')} req/s",
    }


# ----- the run -------------------------------------------------------------------------------


def environment(device: torch.device) -> dict[str, Any]:
    """Device, driver, versions and date of the run."""
    env: dict[str, Any] = {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    with contextlib.suppress(ImportError):
        import numpy
        import pandas

        env["numpy"], env["pandas"] = numpy.__version__, pandas.__version__
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["device"] = torch.cuda.get_device_name(device)
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["multiprocessors"] = props.multi_processor_count
        env["cudnn"] = torch.backends.cudnn.version()
        env["driver"] = None
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            env["driver"] = (
                subprocess.run(query, capture_output=True, text=True, timeout=20, check=True)
                .stdout.split("\n")[0]
                .strip()
            )
    else:
        env["device"] = f"cpu x{torch.get_num_threads()} threads"
        env["driver"] = None
    return env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="See the module docstring for the checks and the command for a lent GPU.",
    )
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (default cuda)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: the same code paths")
    p.add_argument(
        "--checks",
        default=",".join(CHECKS),
        help=f"comma-separated subset of {','.join(CHECKS)} (default: all)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="seconds for all checks; units that no longer fit are skipped (default 420)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default results/gpu.json)")
    p.add_argument("--workdir", type=Path, default=None, help="scratch (default: a temp dir)")
    args = p.parse_args(argv)
    checks = [c for c in args.checks.split(",") if c]
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown or not checks:
        p.error(f"--checks {args.checks!r}: choose from {', '.join(CHECKS)}")
    args.checks = checks
    try:
        args.device = torch.device(args.device)
    except RuntimeError as exc:
        p.error(f"--device {args.device!r}: {exc}")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device here; use --device cpu --smoke")
    if args.out is None:
        args.out = RESULTS / ("gpu-smoke.json" if args.smoke else "gpu.json")
    return args


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import recbole_fork  # noqa: F401  (RecBole's compatibility fixes)

    device, plan = args.device, SMOKE if args.smoke else FULL
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # it refuses a device without an index
    report: dict[str, Any] = {
        "protocol": "benchmarks/gpu.py (issue 19): " + ("smoke sizes" if args.smoke else "full"),
        "mode": "smoke" if args.smoke else "full",
        "env": environment(device),
        "budget_s": args.budget_s,
        "plan": dataclasses.asdict(plan),
        "checks": {},
    }
    print(f"device: {report['env']['device']} ({report['env']['date_utc']})", flush=True)
    runner = Runner(args.out, args.budget_s, report)
    checks = report["checks"]
    data_root = work / "data"
    if "correctness" in args.checks:
        models = {}
        for model_name in ("SASRecX", "HSTU"):
            models[model_name] = runner.unit(
                f"correctness {model_name}",
                lambda m=model_name: correctness_unit(m, plan, device, data_root, work),
                needs_s=10,
                limit_s=150,
            )
        checks["correctness"] = {**_overall(list(models.values())), "models": models}
        runner.write()

    thr_units = throughput_units(plan, device) if "throughput" in args.checks else []
    configs: list[dict[str, Any]] = []
    data_cache: dict[str, Any] = {}

    def throughput(which: Callable[[tuple], bool]) -> None:
        for label, (model_name, size, bf16, comp) in thr_units:
            if not which((model_name, size, bf16, comp)):
                continue
            result = runner.unit(
                f"throughput {label}",
                lambda a=(model_name, size, bf16, comp): throughput_unit(
                    *a, plan, device, data_cache, data_root, work
                ),
                needs_s=60 if comp and device.type == "cuda" else 8,
                limit_s=180 if comp and device.type == "cuda" else 90,
            )
            configs.append(
                {"label": label, "model": model_name, "size": size[0], "bf16": bf16,
                 "torch_compile": comp, **result}
            )  # fmt: skip
            checks["throughput"] = {**_overall(configs), "configs": configs}
            runner.write()

    throughput(lambda a: not a[3])  # eager first

    if "ranking" in args.checks:
        cases = []
        for n_items in plan.rank_items:
            for dim in plan.rank_dims:
                cases.append(
                    runner.unit(
                        f"ranking {n_items:,} items D={dim}",
                        lambda n=n_items, d=dim: ranking_unit(n, d, plan, device),
                        needs_s=10,
                        limit_s=90,
                    )
                )
        checks["ranking"] = {**_overall(cases), "cases": cases}
        runner.write()

    if "serving" in args.checks:
        reason = serving_absent()
        if reason is not None:
            print(f"[skipped] serving: {reason}", flush=True)
            checks["serving"] = {"status": "skipped", "reason": reason}
        else:
            result = runner.unit(
                f"serving {plan.serve_items:,} items on {device.type}",
                lambda: serving_unit(plan, device, data_root, work),
                needs_s=40,
                limit_s=240,
            )
            checks["serving"] = result
        runner.write()

    throughput(lambda a: a[3])  # compiled last: the slowest to start, the likeliest to break
    data_cache.clear()
    if device.type == "cuda":
        report["goals"] = goals(checks)
    else:
        report["goals"] = {"reason": "measured on the CPU: issue 19's goals are for a GPU"}
    runner.write()
    return report


def goals(checks: dict[str, Any]) -> dict[str, Any]:
    """Whether issue 19's goals were reached (None where the figure is missing)."""
    out: dict[str, Any] = {}
    configs = checks.get("throughput", {}).get("configs", [])
    big = [
        c
        for c in configs
        if c["status"] == "ok" and c["size"] == "l" and c["effective"]["bf16"] and c.get("mfu")
    ]
    best = max((c["mfu"] for c in big), default=None)
    out["bf16_largest_best_mfu"] = best
    out["bf16_largest_mfu_at_least_40pct"] = None if best is None else best >= GOAL_MFU
    cases = [c for c in checks.get("ranking", {}).get("cases", []) if c["status"] == "ok"]
    shares = [c["share_of_matmul_rate"] for c in cases]
    out["ranking_min_share_of_matmul_rate"] = min(shares) if shares else None
    out["ranking_at_least_50pct_of_matmul"] = (
        None if not shares else min(shares) >= GOAL_MATMUL_SHARE
    )
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu-bench-")))
        else:
            work = args.workdir
            work.mkdir(parents=True, exist_ok=True)
        report = run(args, work)
    print(f"wrote {args.out}")
    statuses = {name: check["status"] for name, check in report["checks"].items()}
    print("checks: " + ", ".join(f"{k} {v}" for k, v in statuses.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
