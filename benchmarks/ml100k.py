"""Stock RecBole SASRec (CE) and the fork's three models on ml-100k: one protocol, seeds.

Every run is scored by the same evaluator: the fork's leave-one-out split, full ranking
over every item with the user's earlier items excluded, HR@10 / NDCG@10 on test with the
weights of the best valid NDCG@10 epoch. Stock SASRec trains through RecBole's own data
pipeline and trainer (``StockTrainer``) and is scored by the fork's evaluator
(``stock_evaluator: fork``, ``recbole_fork/stock_eval.py``: the same users, targets and
input windows; ml-100k has no user with exactly 3 interactions, so RecBole's split and the
fork's agree everywhere); the fork's models train through ``SeqTrainer``. ml-100k ships
inside the recbole wheel, so nothing is downloaded.

Two modes (``--mode``):

``equal``
    every run trains exactly ``--epochs`` epochs (no early stopping; ``stopping_step`` =
    epochs), each config's own LR schedule, evaluated every epoch.
``early``
    every run trains until ``--patience`` evaluations in a row bring no better valid
    NDCG@10 (at most ``--max-epochs``), evaluated every epoch, with a constant LR: a
    schedule planned over ``epochs`` makes no sense when early stopping decides the length.

Seeds: the configs' seed (2020), then 2021, ... (``--seeds N``). Results are merged into
``benchmarks/results/ml100k.json`` as ``[mode][run]``: the config and overrides, one entry
per seed (test HR@10 / NDCG@10, best valid NDCG@10, best epoch, epochs run, wall and CPU
seconds of the process (every thread), per-epoch history from MLflow, load average, date,
command) and the mean, std and standard error over the seeds.

Resumable: a seed already recorded is skipped; a killed seed resumes from its checkpoint
(``WORK/<mode>-<run>-s<seed>.pth``) in the same MLflow run, its wall and CPU seconds adding
the killed process's (saved every 30 s in ``WORK/<mode>-<run>-s<seed>.clock.json``).

    python benchmarks/ml100k.py --mode equal --epochs 10 --seeds 3 --threads 1
    python benchmarks/ml100k.py --mode early --seeds 3 --runs recbole-sasrec --threads 1
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

from benchmarks.quality import seed_stats  # noqa: E402  (after the path insert)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "ml100k.json"
DEFAULT_WORK = Path(os.environ.get("TMPDIR", "/tmp")) / "recbole_fork-ml100k"
CONFIGS = {
    "recbole-sasrec": "confs/pre_train/ml-100k-recbole-sasrec.yaml",
    "sasrec": "confs/pre_train/ml-100k-sasrec.yaml",
    "hstu": "confs/pre_train/ml-100k-hstu.yaml",
    "wukong": "confs/pre_train/ml-100k-wukong.yaml",
}
MODES = ("equal", "early")
SUMMARY = ("test_hr_at_10", "test_ndcg_at_10", "valid_ndcg_at_10", "best_epoch", "wall_s", "cpu_s")
FIRST_SEED = 2020


def mode_overrides(mode: str, epochs: int, max_epochs: int, patience: int) -> list[str]:
    """The ``--set`` items every run of ``mode`` gets (besides seed and paths)."""
    common = ["show_progress=false", "eval_step=1"]
    if mode == "equal":
        return [*common, f"epochs={epochs}", f"stopping_step={epochs}"]
    return [*common, f"epochs={max_epochs}", f"stopping_step={patience}", "scheduler.type=constant"]


class _Clock:
    """Wall and process CPU seconds of a run, saved every ``every`` s so that a resumed run
    adds the killed process's share (to within ``every`` seconds)."""

    def __init__(self, path: Path, every: float = 30.0) -> None:
        self.path = path
        self.every = every
        saved = json.loads(path.read_text()) if path.is_file() else {}
        self.base_wall = float(saved.get("wall_s", 0.0))
        self.base_cpu = float(saved.get("cpu_s", 0.0))
        self.resumed = bool(saved)
        self._stop = threading.Event()

    def now(self) -> tuple[float, float]:
        wall = self.base_wall + time.perf_counter() - self._wall0
        return wall, self.base_cpu + time.process_time() - self._cpu0

    def _save(self) -> None:
        wall, cpu = self.now()
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"wall_s": wall, "cpu_s": cpu}))
        os.replace(tmp, self.path)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._save()

    def __enter__(self) -> _Clock:
        self._wall0, self._cpu0 = time.perf_counter(), time.process_time()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._save()


def history(checkpoint: Path, uri: str) -> list[dict[str, float]]:
    """Per evaluated epoch: valid NDCG@10 and, where logged, the epoch's training seconds,
    the stock trainer's valid-evaluation seconds and CPU seconds (from MLflow)."""
    from recbole_fork.checkpoint import load_checkpoint
    from recbole_fork.tracking import metric_history

    run_id = load_checkpoint(checkpoint)["mlflow_run_id"]
    keys = ("valid_ndcg_at_10", "epoch_time_s", "valid_time_s", "epoch_cpu_s")
    series = {k: dict(metric_history(run_id, k, tracking_uri=uri)) for k in keys}
    rows = []
    for epoch in sorted(series["valid_ndcg_at_10"]):
        row = {"epoch": epoch}
        row.update({k: series[k][epoch] for k in keys if epoch in series[k]})
        rows.append(row)
    return rows


def ml100k_data_path() -> str:
    """The folder holding RecBole's bundled ml-100k atomic files (``<it>/ml-100k/``): the
    fork reads only the ``data_path`` it is given (issue 17), so the benchmarks name it."""
    import recbole

    return str(Path(recbole.__file__).resolve().parent / "dataset_example")


def run_seed(
    mode: str,
    name: str,
    seed: int,
    work: Path,
    threads: int,
    overrides: list[str],
) -> dict[str, Any]:
    """Train run ``name`` with ``seed`` in ``mode`` (resuming a killed one); its entry."""
    import torch

    from recbole_fork.config import build_config
    from recbole_fork.run import pre_train

    torch.set_num_threads(threads)
    conf = REPO / CONFIGS[name]
    settings = [*overrides, f"seed={seed}"]
    if "data_path" not in (yaml.safe_load(conf.read_text(encoding="utf-8")) or {}):
        settings.append(f"data_path={ml100k_data_path()}")  # the shipped ml-100k configs
    if name == "recbole-sasrec":
        # RecBole's own keys: its checkpoint and log folders go under the work folder.
        settings.append(f"checkpoint_dir={work / 'saved'}")
    config = build_config(conf, settings)
    stem = f"{mode}-{name}-s{seed}"
    checkpoint = work / f"{stem}.pth"
    resume = checkpoint.is_file()
    uri = f"sqlite:///{work / 'mlruns.sqlite'}"
    load_start = os.getloadavg()[0]
    with _Clock(work / f"{stem}.clock.json") as clock:
        result = pre_train(config, checkpoint, resume=resume, tracking_uri=uri, config_file=conf)
    wall, cpu = clock.now()
    rows = history(checkpoint, uri)
    best = max(rows, key=lambda r: (r["valid_ndcg_at_10"], -r["epoch"]))
    return {
        "seed": seed,
        "test_hr_at_10": result["best_test_hr_at_10"],
        "test_ndcg_at_10": result["best_test_ndcg_at_10"],
        "valid_ndcg_at_10": result["best_valid_ndcg_at_10"],
        "best_epoch": best["epoch"],
        "epochs": len(rows),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "resumed": resume or clock.resumed,
        "threads": threads,
        "history": rows,
        "load_average_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def load_results(path: Path = RESULTS) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def record(out: Path, mode: str, name: str, overrides: list[str], entry: dict) -> dict:
    """Merge one seed's entry and recompute the run's summary; written atomically, re-read
    first (another benchmark process may have written meanwhile). Returns the run."""
    results = load_results(out)
    runs = results.setdefault(mode, {})
    run = runs.get(name) or {"runs": {}}
    run.update(config=CONFIGS[name], overrides=overrides)
    run["runs"][str(entry["seed"])] = entry
    done = [r for _, r in sorted(run["runs"].items())]
    run["summary"] = {
        "seeds": sorted(int(r["seed"]) for r in done),
        **{key: seed_stats([float(r[key]) for r in done]) for key in SUMMARY},
    }
    runs[name] = run
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return run


def recorded(out: Path, mode: str, name: str, seed: int) -> dict | None:
    """The entry of a seed already in the JSON, or None."""
    return load_results(out).get(mode, {}).get(name, {}).get("runs", {}).get(str(seed))


def _pm(stats: dict[str, Any], digits: int = 4) -> str:
    if stats["mean"] is None:
        return "-"
    if stats["std"] is None:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def table(runs: dict[str, dict[str, Any]]) -> str:
    """One mode's runs, mean ± std over the seeds, as fixed-width text."""
    rows = [("run", "seeds", "test HR@10", "test NDCG@10", "valid NDCG@10", "best ep", "wall s", "CPU s")]  # fmt: skip
    for name, run in runs.items():
        s = run["summary"]
        rows.append(
            (
                name,
                str(len(s["seeds"])),
                _pm(s["test_hr_at_10"]),
                _pm(s["test_ndcg_at_10"]),
                _pm(s["valid_ndcg_at_10"]),
                _pm(s["best_epoch"], 1),
                _pm(s["wall_s"], 0),
                _pm(s["cpu_s"], 0),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def markdown(runs: dict[str, dict[str, Any]]) -> str:
    """One mode's runs as a Markdown table for BENCHMARKS.md (mean ± std over the seeds)."""
    head = "| run | config | seeds | test HR@10 | test NDCG@10 | valid NDCG@10 | best epoch | wall s | CPU s |"  # fmt: skip
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, run in runs.items():
        s = run["summary"]
        lines.append(
            f"| {name} | `{run['config']}` | {len(s['seeds'])} | {_pm(s['test_hr_at_10'])} | "
            f"{_pm(s['test_ndcg_at_10'])} | {_pm(s['valid_ndcg_at_10'])} | "
            f"{_pm(s['best_epoch'], 1)} | {_pm(s['wall_s'], 0)} | {_pm(s['cpu_s'], 0)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ml100k.py", description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=MODES, default="equal")
    p.add_argument("--epochs", type=int, default=10, help="equal: epochs of every run")
    p.add_argument("--max-epochs", type=int, default=100, help="early: most epochs")
    p.add_argument("--patience", type=int, default=5, help="early: evaluations without gain")
    p.add_argument("--seeds", type=int, default=1, help="seeds 2020, 2021, ...")
    p.add_argument(
        "--runs", default=",".join(CONFIGS), help=f"comma-separated subset of {','.join(CONFIGS)}"
    )
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK, help="MLflow, checkpoints")
    p.add_argument("--out", type=Path, default=RESULTS, help="results JSON (merged, atomic)")
    p.add_argument(
        "--report", action="store_true", help="train nothing: print the mode's Markdown table"
    )
    args = p.parse_args(argv)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = [r for r in runs if r not in CONFIGS]
    if unknown or not runs:
        p.error(f"unknown run(s) {unknown}; choose from {','.join(CONFIGS)}")
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    if args.report:
        results = load_results(args.out).get(args.mode, {})
        print(markdown({n: results[n] for n in CONFIGS if n in results and n in runs}))
        return 0
    args.work_dir.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    overrides = mode_overrides(args.mode, args.epochs, args.max_epochs, args.patience)
    for seed in range(FIRST_SEED, FIRST_SEED + args.seeds):
        for name in runs:
            if recorded(args.out, args.mode, name, seed):
                print(f"{args.mode} {name} seed {seed}: recorded, skipped", flush=True)
                continue
            entry = run_seed(args.mode, name, seed, args.work_dir, args.threads, overrides)
            entry["command"] = command
            run = record(args.out, args.mode, name, overrides, entry)
            print(table({name: run}), flush=True)
    results = load_results(args.out).get(args.mode, {})
    print(table({n: results[n] for n in CONFIGS if n in results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
