"""The fork's three models against stock RecBole SASRec (CE) on ml-100k, same epochs.

Each run trains one config of ``confs/pre_train/`` through ``recbole_fork.run.pre_train``
for exactly ``--epochs`` epochs (early stopping off: ``stopping_step`` = epochs) with its
own protocol: full ranking over every item, leave-one-out by time, test scored with the
weights of the best valid NDCG@10 epoch. Stock SASRec runs through RecBole's own data
pipeline and trainer (``StockTrainer``), the fork's models through ``SeqTrainer``.
ml-100k ships inside the recbole wheel, so nothing is downloaded.

Prints a table and merges it into ``benchmarks/results/ml100k.json`` (one entry per run:
test HR@10 / NDCG@10 at the best valid epoch, best epoch, wall seconds, the command).

    python benchmarks/ml100k.py --epochs 10                  # all four (stock: ~25 min on 2 cores)
    python benchmarks/ml100k.py --epochs 10 --runs sasrec,hstu,wukong
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "ml100k.json"
CONFIGS = {
    "recbole-sasrec": "confs/pre_train/ml-100k-recbole-sasrec.yaml",
    "sasrec": "confs/pre_train/ml-100k-sasrec.yaml",
    "hstu": "confs/pre_train/ml-100k-hstu.yaml",
    "wukong": "confs/pre_train/ml-100k-wukong.yaml",
}


def run_one(name: str, epochs: int, work: Path, threads: int) -> dict[str, Any]:
    """Train run ``name`` for ``epochs`` epochs; its entry of the results JSON."""
    import torch

    from recbole_fork.config import build_config
    from recbole_fork.run import pre_train

    torch.set_num_threads(threads)
    conf = REPO / CONFIGS[name]
    overrides = [f"epochs={epochs}", f"stopping_step={epochs}", "show_progress=false"]
    if name == "recbole-sasrec":
        # RecBole's own keys: its checkpoint and log folders go under the work folder.
        overrides += [f"checkpoint_dir={work / 'saved'}"]
    config = build_config(conf, overrides)
    checkpoint = work / f"{name}.pth"
    start = time.perf_counter()
    result = pre_train(
        config, checkpoint, tracking_uri=f"sqlite:///{work / 'mlruns.sqlite'}", config_file=conf
    )
    wall = time.perf_counter() - start
    # RecBole's stock trainer names HR ``hit`` (``best_test_hit_at_10``); the fork's ``hr``.
    hr = "best_test_hr_at_10" if "best_test_hr_at_10" in result else "best_test_hit_at_10"
    return {
        "config": CONFIGS[name],
        "epochs": epochs,
        "test_hr_at_10": result[hr],
        "test_ndcg_at_10": result["best_test_ndcg_at_10"],
        "valid_ndcg_at_10": result["best_valid_ndcg_at_10"],
        "best_epoch": result.get("best_epoch"),
        "wall_s": round(wall, 1),
        "threads": threads,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    rows = [("run", "epochs", "test HR@10", "test NDCG@10", "best epoch", "wall s")]
    for name, r in results.items():
        rows.append(
            (
                name,
                str(r["epochs"]),
                f"{r['test_hr_at_10']:.4f}",
                f"{r['test_ndcg_at_10']:.4f}",
                str(r["best_epoch"]),
                f"{r['wall_s']:.0f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ml100k.py", description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10, help="epochs of every run (no early stop)")
    p.add_argument(
        "--runs", default=",".join(CONFIGS), help=f"comma-separated subset of {','.join(CONFIGS)}"
    )
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument(
        "--work-dir", type=Path, help="MLflow store and checkpoints (default: a temp dir)"
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="results JSON (merged, atomic)")
    args = p.parse_args(argv)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = [r for r in runs if r not in CONFIGS]
    if unknown or not runs:
        p.error(f"unknown run(s) {unknown}; choose from {','.join(CONFIGS)}")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="ml100k-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for name in runs:
        entry = run_one(name, args.epochs, work, args.threads)
        entry["command"] = command
        results[name] = entry
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, args.out)  # written after every run: a long benchmark keeps its work
        print(table({name: entry}), flush=True)
    print(table({n: results[n] for n in CONFIGS if n in results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
