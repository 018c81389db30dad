"""Training-speed benchmarks of the fork's single-pass training (prints, writes JSON).

Parts (each runs alone; results are merged into ``benchmarks/results/training.json``):

``negatives``
    Time of one training step (forward, backward, Adam) of a SASRec-sized SASRecX (hidden 64,
    2 layers, length 50, batch 256, every position supervised) with K shared negatives,
    K = 1, 128, 1024, 8192. Target: t(K=1024) / t(K=1) <= 1.5. Against it, stock RecBole
    SASRec with BPR and 100 negatives, which duplicates each row once per negative: its
    ``calculate_loss`` + backward + Adam on the duplicated rows of a few sequences. Target:
    the fork trains >= 50x more sequences per second.
``positions``
    Time-to-quality, both sides scored by the same evaluator (the fork's: leave-one-out,
    full ranking, history excluded; ``recbole_fork/stock_eval.py``): stock RecBole SASRec
    with CE loss (``confs/pre_train/ml-100k-recbole-sasrec.yaml``) trained on ml-100k with
    early stopping (``benchmarks/ml100k.py --mode early``: constant LR, patience 5, seed
    2020) gives its best valid NDCG@10 and the time it took to reach it; then SASRecX
    (``confs/pre_train/ml-100k-sasrec.yaml``: stock's backbone, loss (CE over every item) and
    dropout, every position supervised) trains with the stock half's constant LR, for at
    most ``--epochs`` epochs (no early stopping), until its valid NDCG@10 reaches that figure.
    The ratio of the two times is the result (target: at most 1/10). The target is one noisy
    evaluation (the best of stock's), so ``levels`` also times both sides to 90%, 95% and 99%
    of it (training seconds). The stock half is the ml100k benchmark's early-stopping
    seed-2020 run: taken from ``benchmarks/results/ml100k.json``
    when recorded there, else trained (resumably) and recorded there first. Times: training
    seconds (sum of the epochs' ``epoch_time_s``), wall seconds with evaluation (stock: its
    valid evaluations; SASRecX: its train, valid and test evaluations, so an upper bound)
    and process CPU seconds.

Full run (the lead's):   python benchmarks/training.py
Tiny check (a minute):   python benchmarks/training.py --part negatives --ks 1 128 --batch 32 \
                             --steps 2 --stock-sequences 2 --n-items 2000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "training.json"
REPO = Path(__file__).resolve().parents[1]
LEVELS = (0.9, 0.95, 0.99, 1.0)  # positions: shares of stock's best valid NDCG@10 also timed
TARGET_RATIO = 0.1  # SASRecX's time to stock's best valid NDCG@10, over stock's own


class _Catalog:
    """The attributes of a RecBole dataset that model constructors read (no file needed)."""

    dataset_name = "bench"
    iid_field = "item_id"
    item_feat = None

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items
        self.hist_items = np.arange(1, n_items)  # uniform popularity

    def num(self, field: str) -> int:
        return self.n_items


def _time_steps(step, n_steps: int, warmup: int = 1) -> float:
    """Median seconds of ``step()`` over ``n_steps`` after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(n_steps):
        start = time.perf_counter()
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _fork_step_time(args, k: int, device: torch.device) -> float:
    from recbole_fork.config import build_config
    from recbole_fork.encoders import Catalog
    from recbole_fork.models.sasrec import SASRecX
    from recbole_fork.settings import RunSettings

    config = build_config(
        {
            "model": "SASRecX",
            "dataset": "bench",
            "num_negatives": k,
            "shared_negatives": True,
            "loss_type": "sampled_softmax",
            "max_seq_length": args.length,
            "use_gpu": device.type == "cuda",
        }
    )
    torch.manual_seed(0)
    spec = RunSettings.from_config(config).spec
    model = SASRecX(spec, Catalog(n_items=args.n_items, name="bench")).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator(device=device).manual_seed(0)
    items = torch.randint(
        1, args.n_items, (args.batch, args.length + 1), generator=gen, device=device
    )
    batch = {"item_seq": items[:, :-1], "target": items[:, 1:]}  # every position supervised

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.training_loss(batch, gen).backward()
        optimizer.step()

    return _time_steps(step, args.steps)


def _stock_step_time(args, device: torch.device) -> tuple[float, int]:
    """Seconds per step of stock SASRec (BPR) on ``stock_sequences`` x 100 duplicated rows."""
    from recbole.data.interaction import Interaction
    from recbole.model.sequential_recommender.sasrec import SASRec

    from recbole_fork.config import build_config

    config = build_config(
        {
            "model": "SASRec",
            "dataset": "bench",
            "loss_type": "BPR",
            "train_neg_sample_args": {
                "distribution": "uniform",
                "sample_num": args.stock_negatives,
            },
            "max_seq_length": args.length,
            "use_gpu": device.type == "cuda",
        }
    )
    torch.manual_seed(0)
    model = SASRec(config, _Catalog(args.n_items)).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator(device=device).manual_seed(0)
    rows = args.stock_sequences * args.stock_negatives  # RecBole: one row per negative
    seqs = torch.randint(
        1, args.n_items, (args.stock_sequences, args.length + 1), generator=gen, device=device
    )
    seqs = seqs.repeat_interleave(args.stock_negatives, dim=0)  # [rows, L + 1]
    interaction = Interaction(
        {
            model.ITEM_SEQ: seqs[:, :-1],
            model.ITEM_SEQ_LEN: torch.full((rows,), args.length, device=device),
            model.POS_ITEM_ID: seqs[:, -1],
            model.NEG_ITEM_ID: torch.randint(
                1, args.n_items, (rows,), generator=gen, device=device
            ),
        }
    )

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.calculate_loss(interaction).backward()
        optimizer.step()

    return _time_steps(step, args.steps), rows


def part_negatives(args, device: torch.device) -> dict[str, Any]:
    """Step time against K, and sequences per second against stock RecBole."""
    out: dict[str, Any] = {
        "batch": args.batch,
        "length": args.length,
        "n_items": args.n_items,
        "hidden_size": 64,
        "n_layers": 2,
        "step_s": {},
    }
    for k in args.ks:
        if k > args.n_items - 1:
            print(f"skip K={k}: larger than the catalog ({args.n_items - 1} items)")
            continue
        t = _fork_step_time(args, k, device)
        out["step_s"][str(k)] = t
        print(f"fork  K={k:>5}: {t * 1000:8.1f} ms/step, {args.batch / t:8.1f} sequences/s")
    steps = out["step_s"]
    if "1" in steps and "1024" in steps:
        out["ratio_k1024_k1"] = steps["1024"] / steps["1"]
        print(f"t(K=1024)/t(K=1) = {out['ratio_k1024_k1']:.2f} (target <= 1.5)")
    if args.stock_sequences > 0:
        t_stock, rows = _stock_step_time(args, device)
        stock_seq_s = args.stock_sequences / t_stock
        out["stock"] = {
            "sequences": args.stock_sequences,
            "negatives": args.stock_negatives,
            "rows": rows,
            "step_s": t_stock,
            "sequences_per_s": stock_seq_s,
        }
        print(
            f"stock SASRec BPR-{args.stock_negatives}: {rows} rows in {t_stock:.3f} s = {stock_seq_s:.2f} sequences/s"
        )
        ref = "100" if "100" in steps else ("128" if "128" in steps else next(iter(steps), None))
        if ref is not None:
            fork_seq_s = args.batch / steps[ref]
            out["speedup_sequences_per_s"] = fork_seq_s / stock_seq_s
            out["speedup_reference_k"] = int(ref)
            print(
                f"fork (K={ref}) / stock sequences per second = {out['speedup_sequences_per_s']:.0f}x "
                f"(target >= 50x; the fork also supervises every position, stock only the last)"
            )
    return out


class _Reached(Exception):
    """Raised from the tracker to stop training once the target is reached."""


class _Watch:
    """A tracker that timestamps each evaluation and stops when the target is reached."""

    run_id = None
    run_name = "benchmark"

    def __init__(self, target: float) -> None:
        self.target = target
        self.start = time.perf_counter()
        self.cpu_start = time.process_time()
        self.train_s = 0.0
        self.history: list[dict[str, float]] = []

    def log_params(self, params) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        if step is None or "valid_ndcg_at_10" not in metrics:
            return
        self.train_s += metrics["epoch_time_s"]
        row = {
            "epoch": step,
            "valid_ndcg_at_10": metrics["valid_ndcg_at_10"],
            "epoch_time_s": metrics["epoch_time_s"],
            "train_s": self.train_s,
            "wall_s": time.perf_counter() - self.start,
            "cpu_s": time.process_time() - self.cpu_start,
        }
        self.history.append(row)
        print(
            f"epoch {step}: valid NDCG@10 {row['valid_ndcg_at_10']:.4f} after "
            f"{row['train_s']:.0f} s training, {row['wall_s']:.0f} s wall",
            flush=True,
        )
        if row["valid_ndcg_at_10"] >= self.target:
            raise _Reached


def _stock_half(args) -> dict[str, Any]:
    """Stock SASRec's early-stopping run (seed ``args.seed``) from ml100k.json, trained and
    recorded there first when absent."""
    import shlex
    import sys

    from benchmarks import ml100k

    overrides = ml100k.mode_overrides("early", 0, args.stock_max_epochs, args.patience)
    entry = ml100k.recorded(args.ml100k_results, "early", "recbole-sasrec", args.seed)
    if entry is not None:
        print(f"stock half: ml100k.json early/recbole-sasrec seed {args.seed} ({entry['date']})")
        return entry
    args.work_dir.mkdir(parents=True, exist_ok=True)
    threads = args.threads or torch.get_num_threads()
    entry = ml100k.run_seed("early", "recbole-sasrec", args.seed, args.work_dir, threads, overrides)
    entry["command"] = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    ml100k.record(args.ml100k_results, "early", "recbole-sasrec", overrides, entry)
    return entry


def _time_to_levels(
    stock: list[dict[str, Any]], fork: list[dict[str, Any]], target: float
) -> dict[str, Any]:
    """Training seconds each side took to first reach ``LEVELS`` shares of ``target`` (valid
    NDCG@10), and their ratio: how the ratio depends on where the bar is set, since the
    target is one noisy evaluation (the stock run's best). None where a side never got there."""
    out: dict[str, Any] = {}
    for share in LEVELS:
        goal = share * target
        hit = next((i for i, h in enumerate(stock) if h["valid_ndcg_at_10"] >= goal), None)
        mine = next((h for h in fork if h["valid_ndcg_at_10"] >= goal), None)
        if hit is None or mine is None:
            out[f"{share:g}"] = None
            continue
        stock_train = sum(h.get("epoch_time_s", 0.0) for h in stock[: hit + 1])
        out[f"{share:g}"] = {
            "valid_ndcg_at_10": goal,
            "stock_epoch": stock[hit]["epoch"],
            "stock_train_s": stock_train,
            "sasrecx_epoch": mine["epoch"],
            "sasrecx_train_s": mine["train_s"],
            "train_ratio": mine["train_s"] / stock_train if stock_train else None,
        }
    return out


def part_positions(args, device: torch.device) -> dict[str, Any]:
    """Time for SASRecX on ml-100k to reach stock SASRec's best valid NDCG@10, as a ratio
    of stock's own time to it, both under the fork's evaluator."""
    from recbole_fork.config import build_config
    from recbole_fork.session import train

    stock = _stock_half(args)
    target, best = stock["valid_ndcg_at_10"], stock["best_epoch"]
    upto = [h for h in stock["history"] if h["epoch"] <= best]
    stock_side = {
        "best_valid_ndcg_at_10": target,
        "best_epoch": best,
        "epochs_to_best": len(upto),
        "train_s": sum(h.get("epoch_time_s", 0.0) for h in upto),
        "valid_eval_s": sum(h.get("valid_time_s", 0.0) for h in upto),
        "cpu_s": sum(h.get("epoch_cpu_s", 0.0) for h in upto),
        "date": stock["date"],
        "load_average_start_end": stock.get("load_average_start_end"),
    }
    stock_side["wall_s"] = stock_side["train_s"] + stock_side["valid_eval_s"]

    from benchmarks.ml100k import ml100k_data_path

    overrides = {
        "epochs": args.epochs,
        "scheduler": {"type": "constant"},  # as the stock half (ml100k --mode early)
        "stopping_step": args.epochs,  # no early stop: it runs until the target or --epochs
        "show_progress": False,
        "use_gpu": device.type == "cuda",
        "seed": args.seed,
        "data_path": ml100k_data_path(),
    }
    config = build_config(REPO / "confs" / "pre_train" / "ml-100k-sasrec.yaml", overrides)
    watch = _Watch(target)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            train(config, Path(tmp) / "bench.pth", tracker=watch)
            reached = False
        except _Reached:
            reached = True
    last = watch.history[-1] if watch.history else {}
    fork_side = {
        "config": "confs/pre_train/ml-100k-sasrec.yaml",
        "scheduler": "constant",
        "max_epochs": args.epochs,
        "reached": reached,
        "epochs": len(watch.history),
        "best_valid_ndcg_at_10": max((h["valid_ndcg_at_10"] for h in watch.history), default=None),
        "train_s": last.get("train_s"),
        "wall_s": last.get("wall_s"),
        "cpu_s": last.get("cpu_s"),
        "history": watch.history,
        "load_average_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
    }
    out: dict[str, Any] = {
        "protocol": "fork evaluator: leave-one-out, full ranking, history excluded",
        "target_valid_ndcg_at_10": target,
        "target_ratio": TARGET_RATIO,
        "stock": stock_side,
        "sasrecx": fork_side,
    }
    out["levels"] = _time_to_levels(stock["history"], watch.history, target)
    for share, row in out["levels"].items():
        if row is None:
            print(f"{share} x stock's best: not reached by both sides")
        else:
            print(
                f"{share} x stock's best ({row['valid_ndcg_at_10']:.4f}): SASRecX "
                f"{row['sasrecx_train_s']:.0f} s (epoch {row['sasrecx_epoch']}), stock "
                f"{row['stock_train_s']:.0f} s (epoch {row['stock_epoch']}): training-time "
                f"ratio {row['train_ratio']:.4f}"
            )
    if reached:
        out["ratios"] = {
            k: fork_side[k] / stock_side[k] if stock_side[k] else None
            for k in ("train_s", "wall_s", "cpu_s")
        }
        out["met"] = out["ratios"]["wall_s"] <= TARGET_RATIO
        print(
            f"SASRecX reached stock's best valid NDCG@10 {target:.4f} at epoch {last['epoch']}: "
            f"{fork_side['wall_s']:.0f} s wall against stock's {stock_side['wall_s']:.0f} s "
            f"(epoch {best}): ratio {out['ratios']['wall_s']:.4f} (target <= {TARGET_RATIO}); "
            f"training only {out['ratios']['train_s']:.4f}, CPU {out['ratios']['cpu_s']:.4f}"
        )
    else:
        out["met"] = False
        print(
            f"SASRecX did not reach stock's {target:.4f} in {args.epochs} epochs (best "
            f"{fork_side['best_valid_ndcg_at_10']:.4f}, {fork_side['wall_s']:.0f} s wall)"
        )
    return out


def _write(results: dict[str, Any], out: Path = RESULTS) -> None:
    """Merge ``results`` into the JSON file ``out`` (temporary name, then rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    merged = json.loads(out.read_text()) if out.is_file() else {}
    merged.update(results)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".training.", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(merged, f, indent=2)
    os.replace(tmp, out)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--part", choices=["negatives", "positions", "all"], default="all")
    p.add_argument(
        "--ks", type=int, nargs="+", default=[1, 128, 1024, 8192], help="shared negatives K"
    )
    p.add_argument("--batch", type=int, default=256, help="sequences per training batch")
    p.add_argument("--length", type=int, default=50, help="max sequence length")
    p.add_argument(
        "--n-items", type=int, default=20000, help="synthetic catalog size (negatives part)"
    )
    p.add_argument(
        "--steps", type=int, default=5, help="timed steps per setting (after one warm-up)"
    )
    p.add_argument(
        "--stock-sequences", type=int, default=4, help="sequences per stock step (0 = skip)"
    )
    p.add_argument("--stock-negatives", type=int, default=100)
    p.add_argument(
        "--epochs",
        type=int,
        default=100,
        help="positions: SASRecX's most epochs (constant LR, as the stock half)",
    )
    p.add_argument("--seed", type=int, default=2020, help="positions: seed of both halves")
    p.add_argument(
        "--stock-max-epochs", type=int, default=100, help="positions: stock's most epochs"
    )
    p.add_argument("--patience", type=int, default=5, help="positions: stock's early stopping")
    p.add_argument("--out", type=Path, default=RESULTS, help="results JSON (merged, atomic)")
    p.add_argument(
        "--ml100k-results", type=Path, default=REPO / "benchmarks" / "results" / "ml100k.json",
        help="positions: the ml100k benchmark's JSON holding (or receiving) the stock half",
    )  # fmt: skip
    p.add_argument(
        "--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "recbole_fork-ml100k",
        help="positions: where the stock half's checkpoint and MLflow store go (resumable)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)

    import sys

    sys.path.insert(0, str(REPO))  # benchmarks.ml100k, when run as a script
    import recbole_fork  # noqa: F401  (applies the compatibility fixes)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = {
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"cpu x{torch.get_num_threads()}"
    }
    print(f"device: {env['device']}")
    results: dict[str, Any] = {}
    if args.part in ("negatives", "all"):
        results["negatives"] = {**env, **part_negatives(args, device)}
        _write(results, args.out)
    if args.part in ("positions", "all"):
        results["positions"] = {**env, **part_positions(args, device)}
        _write(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
