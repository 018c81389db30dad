"""Peak memory of loading a sequential dataset and training one epoch on it.

Compares the fork's data path (``recbole_fork.data``: histories stored once, windows cut on
the fly) with RecBole's ``SequentialDataset`` (one row per prefix). Each measurement runs in
its own Python process, so peak RSS (``ru_maxrss``) belongs to that measurement alone.

* data peak: after loading and one pass over the training loader (no model), for both
  paths; "per interaction" = (data peak - RSS right after the imports) / interactions of
  the input file. This is the like-for-like comparison.
* with training (fork only): the peak after also training one epoch of a deliberately
  small model built only from the data, sampling and loss modules (sparse item
  embeddings of width 16, user state = running mean of the input embeddings, sampled
  softmax with 128 shared popularity negatives and logQ, SGD), so that the figure
  measures the data path rather than an architecture.

Targets (issue "Training core"): the fork loads a 10M-interaction set (histories of length
50) and trains one epoch within 6 GB peak RSS, and uses at least 5x less memory per
interaction than RecBole's SequentialDataset on a 1M set.

Usage (full size, as run by the lead):
    python benchmarks/training_memory.py --interactions 10000000 --recbole-interactions 1000000
Small smoke run:
    python benchmarks/training_memory.py --interactions 200000 --recbole-interactions 100000

Prints one line per measurement and writes ``benchmarks/results/training_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "training_memory.json"
REPO = Path(__file__).resolve().parents[1]


def write_synthetic(folder: Path, name: str, n_inter: int, length: int, seed: int) -> Path:
    """Write ``folder/name/name.inter``: users of ``length`` interactions, skewed items.

    Items: about one new item per three interactions, drawn with a power-law skew
    (``floor(n_items * u ** 3)``). Timestamps increase by one day per interaction.
    Returns the dataset's parent folder (RecBole's ``data_path``).
    """
    out = folder / name
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.inter"
    if path.is_file():
        return folder
    rng = np.random.default_rng(seed)
    n_users = max(n_inter // length, 1)
    n_items = max(n_inter // 3, 10)
    tmp = path.with_suffix(".inter.tmp")
    chunk_users = 100_000
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for lo in range(0, n_users, chunk_users):
            users = np.arange(lo, min(lo + chunk_users, n_users))
            u = np.repeat(users, length)
            items = (n_items * rng.random(len(u)) ** 3).astype(np.int64)
            ts = 1_500_000_000 + np.tile(np.arange(length) * 86_400, len(users)) + u
            lines = [f"u{a}\ti{b}\t{c}" for a, b, c in zip(u.tolist(), items.tolist(), ts.tolist())]
            f.write("\n".join(lines))
            f.write("\n")
    os.replace(tmp, path)
    return folder


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux keeps that across execve, so a
    child started by a driver that had just generated a large dataset would report the
    driver's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_ours(data_path: str, name: str, batch_size: int, max_steps: int) -> dict:
    """Load with ``build_seq_data`` and train one epoch of the small model."""
    import torch

    from recbole_fork.config import build_config
    from recbole_fork.data import build_seq_data
    from recbole_fork.losses import LossSettings, build_loss
    from recbole_fork.sampling import SamplerSettings, build_sampler

    torch.set_num_threads(1)
    base = _rss_mb()
    t0 = time.perf_counter()
    cfg = build_config(
        {"model": "SASRecX", "data_path": data_path, "dataset": name, "max_seq_length": 50,
         "seed": 0, "use_gpu": False}
    )  # fmt: skip
    data = build_seq_data(cfg)
    load_s = time.perf_counter() - t0
    after_load = _peak_mb()
    batches = sum(1 for _ in data.train_loader(batch_size, epoch=0))  # the data path alone
    peak_data = _peak_mb()
    ncfg = {"neg_sampler": "popularity", "num_negatives": 128, "shared_negatives": True}
    sampler = build_sampler(
        SamplerSettings.from_mapping({**cfg.final_config_dict, **ncfg}), data.item_counts
    )
    loss_cfg = {"loss_type": "sampled_softmax", "logq_correction": True}
    loss_fn = build_loss(LossSettings.from_mapping({**cfg.final_config_dict, **loss_cfg}))
    emb = torch.nn.Embedding(data.n_items, 16, padding_idx=0, sparse=True)
    opt = torch.optim.SGD(emb.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    t0, steps, last = time.perf_counter(), 0, float("nan")
    for batch in data.train_loader(batch_size, epoch=0):
        seq, target = batch["item_seq"], batch["target"]  # [B, L]
        x = emb(seq)  # [B, L, D]
        # Mean of the inputs up to t: a causal user state without a real backbone.
        denom = (seq > 0).cumsum(1).clamp(min=1).unsqueeze(-1)
        state = x.cumsum(1) / denom  # [B, L, D]
        sel = target > 0
        pos = target[sel]  # [N]
        neg = sampler.sample(pos, gen)  # [K]
        loss = loss_fn(
            state[sel], pos, emb(pos), neg, emb(neg), sampler.log_q(pos), sampler.log_q(neg)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        last, steps = loss.item(), steps + 1
        if max_steps and steps >= max_steps:
            break
    return {
        "path": "fork",
        "interactions": int(data.dataset.inter_num),
        "users": data.n_users - 1,
        "items": data.n_items - 1,
        "baseline_rss_mb": base,
        "peak_after_load_mb": after_load,
        "peak_data_mb": peak_data,
        "loader_batches": batches,
        "peak_rss_mb": _peak_mb(),
        "load_s": load_s,
        "train_s": time.perf_counter() - t0,
        "train_steps": steps,
        "epoch_steps": data.num_train_batches(batch_size),
        "final_loss": last,
    }


def child_recbole(data_path: str, name: str) -> dict:
    """Load with RecBole's SequentialDataset and build its train / valid / test loaders."""
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.utils import init_seed

    import recbole_fork  # noqa: F401
    from recbole_fork.config import ForkConfig

    base = _rss_mb()
    work = tempfile.TemporaryDirectory(prefix="rb-")  # RecBole's checkpoint_dir, removed on exit
    settings = {
        "data_path": data_path,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": 50,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
        "train_neg_sample_args": None,
        "loss_type": "CE",
        "checkpoint_dir": work.name,
        "use_gpu": False,
        "show_progress": False,
    }
    config = ForkConfig(model=SASRec, dataset=name, config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    t0 = time.perf_counter()
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    load_s = time.perf_counter() - t0
    rows = len(train.dataset)
    batches = sum(1 for _ in train)  # one epoch of its training loader, no model
    return {
        "path": "recbole_SequentialDataset",
        "interactions": int(dataset.inter_num),
        "train_rows": rows,
        "loader_batches": batches,
        "baseline_rss_mb": base,
        "peak_data_mb": _peak_mb(),
        "peak_rss_mb": _peak_mb(),
        "load_s": load_s,
    }


def run_child(args: list[str]) -> dict:
    """Run this file as a child process and parse its JSON result line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args[:2]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--interactions", type=int, default=10_000_000, help="size of the big set")
    p.add_argument(
        "--recbole-interactions", type=int, default=1_000_000, help="size of the comparison set"
    )
    p.add_argument("--length", type=int, default=50, help="interactions per synthetic user")
    p.add_argument(
        "--inter",
        type=Path,
        help="an existing DATA_PATH/NAME/NAME.inter to use as the big set instead",
    )
    p.add_argument(
        "--work-dir", type=Path, help="where synthetic files go (default: a temp folder)"
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-steps", type=int, default=0, help="stop the epoch early (0 = full epoch)")
    p.add_argument("--skip-recbole", action="store_true")
    p.add_argument("--child", choices=["fork", "recbole"], help=argparse.SUPPRESS)
    p.add_argument("--data-path", help=argparse.SUPPRESS)
    p.add_argument("--name", help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.child == "fork":
        print(json.dumps(child_ours(a.data_path, a.name, a.batch_size, a.max_steps)))
        return {}
    if a.child == "recbole":
        print(json.dumps(child_recbole(a.data_path, a.name)))
        return {}

    scratch = None if a.work_dir else tempfile.TemporaryDirectory(prefix="training-memory-")
    try:
        return _measure(a, argv, a.work_dir or Path(scratch.name))
    finally:
        if scratch is not None:
            scratch.cleanup()  # the synthetic files (~250 MB at 10M) are not kept


def _measure(a: argparse.Namespace, argv: list[str] | None, work: Path) -> dict:
    """Write (or reuse) the data sets, run the measurements, print and save the figures."""
    if a.inter:
        big_root, big_name = str(a.inter.resolve().parents[1]), a.inter.stem
    else:
        big_name = f"syn{a.interactions}"
        big_root = str(write_synthetic(work, big_name, a.interactions, a.length, seed=0))
    small_name = f"syn{a.recbole_interactions}"
    small_root = str(write_synthetic(work, small_name, a.recbole_interactions, a.length, seed=1))

    common = ["--batch-size", str(a.batch_size), "--max-steps", str(a.max_steps)]
    results: dict = {"command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])}
    results["fork_big"] = run_child(
        ["--child", "fork", "--data-path", big_root, "--name", big_name, *common]
    )
    results["fork_small"] = run_child(
        ["--child", "fork", "--data-path", small_root, "--name", small_name, *common]
    )
    if not a.skip_recbole:
        results["recbole_small"] = run_child(
            ["--child", "recbole", "--data-path", small_root, "--name", small_name]
        )
    sizes = {"fork_big": a.interactions, "fork_small": a.recbole_interactions}
    sizes["recbole_small"] = a.recbole_interactions
    for key in ("fork_big", "fork_small", "recbole_small"):
        if key not in results:
            continue
        r = results[key]
        n = r["interactions"] if key == "fork_big" and a.inter else sizes[key]
        # Per interaction of the input file: RecBole reports fewer after its split.
        r["data_delta_mb"] = r["peak_data_mb"] - r["baseline_rss_mb"]
        r["data_bytes_per_interaction"] = r["data_delta_mb"] * 2**20 / n
        train = f"  with training {r['peak_rss_mb']:6.0f} MB" if "train_s" in r else ""
        print(
            f"{key:14s} {n:>11,d} interactions  data peak {r['peak_data_mb']:6.0f} MB "
            f"(+{r['data_delta_mb']:.0f} over imports, {r['data_bytes_per_interaction']:.0f} B per "
            f"interaction)  load {r['load_s']:.1f} s{train}"
        )
    big = results["fork_big"]
    results["big_within_6gb"] = big["peak_rss_mb"] <= 6 * 1024
    if "recbole_small" in results:
        ratio = (
            results["recbole_small"]["data_bytes_per_interaction"]
            / results["fork_small"]["data_bytes_per_interaction"]
        )
        results["recbole_over_fork_per_interaction"] = ratio
        print(
            f"RecBole / fork data memory per interaction at {a.recbole_interactions:,d}: {ratio:.1f}x (target >= 5)"
        )
    print(
        f"fork peak, load + one training epoch, {big['interactions']:,d} interactions: "
        f"{big['peak_rss_mb']:.0f} MB (target <= 6144)"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, RESULTS)
    return results


if __name__ == "__main__":
    main()
