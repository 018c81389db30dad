"""Model quality on the real Beauty 5-core benchmark over seeds (prints a table, writes JSON).

The standard Beauty 5-core set (22,363 users, 12,101 items, 198,502 interactions) is
rebuilt from ``../shared/data/seqrec_reference`` through the project's own ETL
(``etl.reference`` writes the 2014 raw files, then the ``build_beauty_and_sports_datasets``
step writes ``amazon-beauty``) into a work folder. Each chosen run then trains one frozen
config of ``confs/benchmarks/`` through ``recbole_fork.run.pre_train`` once per seed
(leave-one-out, full ranking over every item, history excluded), tracked in MLflow in
``WORK/mlruns.sqlite``.

A run is the config plus the ``--set`` overrides (its key in the JSON, e.g.
``hstu-id+hstu_time_bias=own``). ``--seeds N`` trains seeds ``seed, seed + 1, ...`` of the
config's ``seed`` (2020). Per seed, ``benchmarks/results/quality.json`` gets HR@10 / NDCG@10
on test at the best valid epoch, the best valid NDCG@10, epochs run, best epoch, wall and
CPU seconds, training seconds per epoch, the load average and the date; per run, the mean,
std (n - 1) and standard error of each metric over the finished seeds and the comparison
with the published figure (REFERENCE.md section 4, eSASRec benchmark):

* ``exceeds``: mean - 1 s.e. is above the published figure;
* ``matches``: the published figure is within one s.e. of the mean;
* ``below``: otherwise (mean + 1 s.e. under it);
* ``n/a``: fewer than 2 seeds (no standard error).

Resumable: a seed already in the JSON is skipped; a seed whose process was killed resumes
from its checkpoint (``WORK/checkpoints/<run>-s<seed>.pth``) in the same MLflow run.

The benchmark has no 2018 catalog, so the ETL's SentencePiece model is trained on the
Beauty items' own brand and category text (see ``_write_catalog_for_sentencepiece``).

Full benchmark (hours on 2 CPU cores; run at low priority):
    nice -n 19 python benchmarks/quality.py --runs sasrec-id --seeds 3 --threads 1
    nice -n 19 python benchmarks/quality.py --runs hstu-id --set hstu_time_bias=own --seeds 3
A check that every config runs (2 epochs each, results kept apart):
    nice -n 19 python benchmarks/quality.py --set epochs=2 --out /tmp/quality-check.json
Record the seeds still going (or killed) from their per-epoch MLflow metrics:
    python benchmarks/quality.py --runs sasrec-id --seeds 3 --collect
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

REPO = Path(__file__).resolve().parents[1]
CONFS = REPO / "confs" / "benchmarks"
RESULTS = REPO / "benchmarks" / "results" / "quality.json"
DEFAULT_SHARED = REPO.parent / "shared" / "data"
DEFAULT_WORK = Path(os.environ.get("TMPDIR", "/tmp")) / "recbole_fork-quality"
DATASET = "amazon-beauty"
RUNS = ("sasrec-id", "hstu-id", "wukong-id", "sasrec-text", "hstu-text", "wukong-text")
# Published full-ranking leave-one-out HR@10 / NDCG@10 on Beauty 5-core (REFERENCE section 4,
# eSASRec benchmark); the text-encoder runs have no published counterpart.
TARGETS: dict[str, tuple[float, float]] = {
    "sasrec-id": (0.0921, 0.0531),
    "hstu-id": (0.0788, 0.0439),
}
EXPECTED_COUNTS = (22_363, 12_101, 198_502)  # users, items, interactions (shared/data README)
# SentencePiece vocabulary for the benchmark's own small BPE model (brands only need a few
# thousand pieces; the ETL lowers it by itself when the corpus is smaller).
VOCAB_SIZE = 8000


class BenchmarkError(RuntimeError):
    """A user-caused problem (missing data, unknown run); the message says what to do."""


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_catalog_for_sentencepiece(meta_2014: Path, raw_dir: Path) -> Path:
    """A 2018-format metadata file holding the Beauty items' brand and categories.

    The ETL trains its SentencePiece model on the 2018 catalog (``train_sentence_piece``);
    the benchmark has no 2018 catalog, so the Beauty items' own text stands in for it. The
    asins are prefixed so that no Beauty item is found in the 2018 items: every item then
    takes its text from the 2014 metadata, the ETL's path for items absent from 2018.
    """
    import ast
    import gzip

    lines = []
    with gzip.open(meta_2014, "rt", encoding="utf-8") as f:
        for line in f:
            rec = ast.literal_eval(line)
            categories = rec["categories"][0] if rec.get("categories") else []
            record = {
                "asin": f"catalog-{rec['asin']}",
                "title": "",
                "brand": rec.get("brand", ""),
                "category": categories,
            }
            lines.append(json.dumps(record) + "\n")
    path = raw_dir / "All_Amazon_Meta.json"
    _atomic_write_text(path, "".join(lines))
    return path


def build_beauty(shared_data: Path, work_dir: Path) -> Path:
    """Build ``amazon-beauty`` from ``shared_data/seqrec_reference`` with the ETL.

    Steps: ``write_beauty_2014_from_reference`` (2014 raw files), a stand-in 2018 catalog
    and ratings file for the earlier steps, then ``partition_big_files``,
    ``train_sentence_piece``, ``tokenize_metadata`` and ``build_beauty_and_sports_datasets``.
    Fresh steps are skipped (the ETL's manifests), so a second call costs seconds.

    Args:
        shared_data: the ``shared/data`` folder holding ``seqrec_reference/``.
        work_dir: where ``raw/`` and ``data/`` are written.

    Returns:
        The data path (holds ``amazon-beauty/amazon-beauty.{inter,item}``).

    Raises:
        BenchmarkError: the reference data is absent, or the built counts are not the
            benchmark's.
    """
    from etl.engine import Engine
    from etl.pipeline import EtlOptions, run_step
    from etl.reference import REFERENCE, write_beauty_2014_from_reference

    if not (Path(shared_data) / REFERENCE / "Beauty.txt.gz").is_file():
        raise BenchmarkError(
            f"{Path(shared_data) / REFERENCE} not found; pass --shared-data pointing at "
            "shared/data (the folder holding seqrec_reference/)"
        )
    raw = work_dir / "raw"
    out = work_dir / "data"
    raw.mkdir(parents=True, exist_ok=True)
    meta = raw / "meta_Beauty.json.gz"
    if not (meta.is_file() and (raw / "reviews_Beauty_5.json.gz").is_file()):
        # Written once: rewriting them would make the ETL's manifests see new inputs.
        meta = write_beauty_2014_from_reference(Path(shared_data), raw)["meta"]
    if not (raw / "All_Amazon_Meta.json").is_file():
        _write_catalog_for_sentencepiece(meta, raw)
    ratings = raw / "all_csv_files.csv"
    if not ratings.is_file():
        # partition_big_files needs a ratings input; nothing downstream of it is used here.
        _atomic_write_text(ratings, "catalog-item,catalog-user,5.0,0\n")
    opts = EtlOptions(
        raw_dir=raw, out_dir=out, sizes=(1,), vocab_size=VOCAB_SIZE, engine=Engine(progress=False)
    )
    for step in (
        "partition_big_files",
        "train_sentence_piece",
        "tokenize_metadata",
        "build_beauty_and_sports_datasets",
    ):
        result = run_step(step, opts)
        print(f"etl {step}: {result.status}", flush=True)
    counts = result.manifest["counts"][-1]
    got = (counts["users"], counts["items"], counts["interactions"])
    if got != EXPECTED_COUNTS:
        raise BenchmarkError(
            f"{DATASET} built with (users, items, interactions) = {got}, expected "
            f"{EXPECTED_COUNTS}; delete {work_dir} and rebuild"
        )
    return out


def summarise(checkpoint: Path, uri: str) -> dict[str, Any]:
    """The figures of the run that wrote ``checkpoint``, read back from MLflow, finished or not.

    The best epoch is the first with the highest valid NDCG@10 among the epochs logged so
    far, and the test figures are those logged at that epoch (the trainer scores test with
    the same weights every epoch, so for a finished run they equal its final test).

    Raises:
        BenchmarkError: the run has no evaluated epoch yet.
    """
    from recbole_fork.checkpoint import load_checkpoint
    from recbole_fork.tracking import metric_history, search_runs

    ckpt = load_checkpoint(checkpoint)  # written after every epoch
    run_id, config = ckpt["mlflow_run_id"], ckpt["config"]
    # recbole_fork.run.experiment_name's rule, on the plain config the checkpoint holds.
    experiment = config.get("experiment") or f"pre_train-{config['dataset']}"

    def history(key: str) -> dict[int, float]:
        return dict(metric_history(run_id, key, tracking_uri=uri))

    valid = history("valid_ndcg_at_10")  # {epoch: value}
    if not valid:
        raise BenchmarkError(f"MLflow run {run_id} has no evaluated epoch yet; wait for one")
    best = max(valid, key=lambda e: (valid[e], -e))
    epoch_times = list(history("epoch_time_s").values())
    run = next(r for r in search_runs(experiment, uri) if r["run_id"] == run_id)
    params = run["params"]
    return {
        "test_hr_at_10": history("test_hr_at_10")[best],
        "test_ndcg_at_10": history("test_ndcg_at_10")[best],
        "valid_ndcg_at_10": valid[best],
        "best_epoch": best,
        "epochs": len(epoch_times),
        "train_s_per_epoch": round(sum(epoch_times) / max(len(epoch_times), 1), 2),
        "params_total": int(params["params_total"]) if "params_total" in params else None,
        "model": params.get("model_description"),
        "mlflow_status": run["status"],
        "mlflow_run_id": run_id,
    }


def run_key(name: str, overrides: list[str]) -> str:
    """The run's key in the JSON: the config name plus its overrides (``seed`` excluded)."""
    return "+".join([name, *overrides])


def _checkpoint(work_dir: Path, key: str, seed: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in key)
    return work_dir / "checkpoints" / f"beauty-{safe}-s{seed}.pth"


def run_one(
    name: str,
    data_path: Path,
    work_dir: Path,
    overrides: list[str],
    threads: int,
    seed: int,
) -> dict[str, Any]:
    """Train one seed of the run ``name`` (``confs/benchmarks/beauty-<name>.yaml``).

    A checkpoint of the same run and seed left by a killed process is resumed (same
    MLflow run); ``wall_s`` / ``cpu_s`` are then this process's share (``resumed``).

    Returns:
        The seed's entry (metrics as fractions, times in seconds).
    """
    import torch

    from recbole_fork.config import build_config
    from recbole_fork.run import pre_train

    torch.set_num_threads(threads)
    conf = CONFS / f"beauty-{name}.yaml"
    # No progress bars in a benchmark's log (not part of the run's key: it changes nothing).
    settings = ["show_progress=false", *overrides, f"seed={seed}", f"data_path={data_path}"]
    config = build_config(conf, settings)
    checkpoint = _checkpoint(work_dir, run_key(name, overrides), seed)
    resume = checkpoint.is_file()
    uri = f"sqlite:///{work_dir / 'mlruns.sqlite'}"
    load_start = os.getloadavg()
    start, cpu_start = time.perf_counter(), time.process_time()
    result = pre_train(config, checkpoint, resume=resume, tracking_uri=uri, config_file=conf)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    entry = summarise(checkpoint, uri)
    # The final figures of the run itself (best weights reloaded, test scored once more).
    entry.update(
        test_hr_at_10=result["best_test_hr_at_10"],
        test_ndcg_at_10=result["best_test_ndcg_at_10"],
        best_epoch=int(result["best_epoch"]),
    )
    return {
        **entry,
        "seed": seed,
        "finished": True,
        "resumed": resume,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "wall_s_per_epoch": round(wall / entry["epochs"], 2),
        "threads": threads,
        "load_average_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "date": _now(),
    }


def collect_unfinished(name: str, work_dir: Path, overrides: list[str], seed: int) -> dict:
    """The entry of a seed still going (or killed), from the MLflow run of its checkpoint.

    Raises:
        BenchmarkError: no checkpoint of that run and seed (nothing finished an epoch).
    """
    checkpoint = _checkpoint(work_dir, run_key(name, overrides), seed)
    if not checkpoint.is_file():
        raise BenchmarkError(
            f"{checkpoint} not found: seed {seed} of {run_key(name, overrides)} has not "
            "finished an epoch"
        )
    uri = f"sqlite:///{work_dir / 'mlruns.sqlite'}"
    entry = summarise(checkpoint, uri)
    return {
        **entry,
        "seed": seed,
        "finished": entry["mlflow_status"] == "FINISHED",
        "wall_s": None,  # not known from MLflow; see the run's log
        "wall_s_per_epoch": None,
        "date": _now(),
    }


SUMMARY_METRICS = ("test_hr_at_10", "test_ndcg_at_10", "valid_ndcg_at_10")


def seed_stats(values: list[float]) -> dict[str, float | int | None]:
    """Mean, sample std (n - 1), standard error std / sqrt(n) and n of one metric's seeds.

    std and se are None for fewer than 2 values.
    """
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "se": None, "n": 0}
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "std": None, "se": None, "n": n}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return {"mean": mean, "std": std, "se": std / math.sqrt(n), "n": n}


def verdict(stats: dict[str, Any], published: float) -> str:
    """``exceeds`` if mean - se > published, ``matches`` if |mean - published| <= se,
    ``below`` otherwise; ``n/a`` without a standard error (fewer than 2 seeds)."""
    if stats.get("se") is None:
        return "n/a"
    mean, se = stats["mean"], stats["se"]
    if mean - se > published:
        return "exceeds"
    if mean + se >= published:
        return "matches"
    return "below"


def summarise_seeds(name: str, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per metric, the statistics over the finished seeds, and the verdicts against the
    published HR@10 / NDCG@10 of the config ``name`` (none for runs without one)."""
    done = [r for _, r in sorted(runs.items()) if r.get("finished")]
    out: dict[str, Any] = {
        "seeds": sorted(int(r["seed"]) for r in done),
        "stats": {m: seed_stats([float(r[m]) for r in done]) for m in SUMMARY_METRICS},
    }
    target = TARGETS.get(name)
    if target is not None:
        out["published"] = {"test_hr_at_10": target[0], "test_ndcg_at_10": target[1]}
        out["verdict"] = {
            m: verdict(out["stats"][m], out["published"][m]) for m in out["published"]
        }
    return out


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _pm(stats: dict[str, Any]) -> str:
    if stats["mean"] is None:
        return "-"
    if stats["std"] is None:
        return f"{stats['mean']:.4f}"
    return f"{stats['mean']:.4f} ± {stats['std']:.4f}"


def table(results: dict[str, dict[str, Any]]) -> str:
    """The runs (mean ± std over seeds) beside the published targets, as fixed-width text."""
    rows = [("run", "seeds", "test HR@10", "test NDCG@10", "valid NDCG@10", "published", "verdict")]
    for key, entry in results.items():
        if "runs" not in entry:  # an entry of the single-seed format before --seeds
            continue
        summary = entry["summary"]
        stats = summary["stats"]
        published = summary.get("published")
        verdicts = summary.get("verdict")
        rows.append(
            (
                key,
                ",".join(map(str, summary["seeds"])) or "-",
                _pm(stats["test_hr_at_10"]),
                _pm(stats["test_ndcg_at_10"]),
                _pm(stats["valid_ndcg_at_10"]),
                "{test_hr_at_10:.4f} / {test_ndcg_at_10:.4f}".format(**published)
                if published
                else "-",
                " / ".join(verdicts.values()) if verdicts else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def markdown(results: dict[str, dict[str, Any]]) -> str:
    """The seeded runs as a Markdown table for BENCHMARKS.md."""
    lines = [
        "| run | seeds | test HR@10 | test NDCG@10 | valid NDCG@10 | published HR / NDCG | verdict HR / NDCG | epochs (best) |",  # fmt: skip
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for key, entry in results.items():
        if "runs" not in entry:
            continue
        summary, runs = entry["summary"], entry["runs"]
        stats, published = summary["stats"], summary.get("published")
        done = [r for _, r in sorted(runs.items()) if r.get("finished")]
        epochs = ", ".join(f"{r['epochs']} ({r['best_epoch']})" for r in done) or "-"
        lines.append(
            f"| {key} | {','.join(map(str, summary['seeds'])) or '-'} | "
            f"{_pm(stats['test_hr_at_10'])} | {_pm(stats['test_ndcg_at_10'])} | "
            f"{_pm(stats['valid_ndcg_at_10'])} | "
            + (
                "{test_hr_at_10:.4f} / {test_ndcg_at_10:.4f}".format(**published)
                if published
                else "-"
            )
            + " | "
            + (" / ".join(summary["verdict"].values()) if published else "-")
            + f" | {epochs} |"
        )
    return "\n".join(lines)


def _parse_runs(text: str) -> list[str]:
    runs = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in runs if r not in RUNS]
    if unknown or not runs:
        raise argparse.ArgumentTypeError(f"unknown run(s) {unknown}; choose from {','.join(RUNS)}")
    return runs


def main(argv: list[str] | None = None) -> int:
    """Build the data, train the chosen runs, merge them into the JSON, print the table."""
    p = argparse.ArgumentParser(prog="quality.py", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=_parse_runs, default=list(RUNS), help=",".join(RUNS))
    p.add_argument("--shared-data", type=Path, default=DEFAULT_SHARED, help="shared/data folder")
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK, help="data, MLflow, checkpoints")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key of every run (e.g. epochs=2 for a check); repeatable",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument(
        "--seeds", type=int, default=1,
        help="seeds per run: the config's seed, seed + 1, ... (finished seeds are skipped)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=RESULTS, help="results JSON (merged, atomic)")
    p.add_argument(
        "--collect", action="store_true",
        help="train nothing: record the seeds still going (or killed) in WORK from MLflow",
    )  # fmt: skip
    p.add_argument(
        "--report", action="store_true",
        help="train nothing: print every seeded run of the JSON as a Markdown table",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.report:
        print(markdown(_load(args.out)))
        return 0
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    if any(o.split("=", 1)[0].strip() == "seed" for o in args.overrides):
        p.error("set the seeds with --seeds, not --set seed=...")
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    keys = []
    try:
        data_path = None if args.collect else build_beauty(args.shared_data, args.work_dir)
        for name in args.runs:
            key = run_key(name, args.overrides)
            keys.append(key)
            first_seed = _config_seed(name)
            for seed in range(first_seed, first_seed + args.seeds):
                done = _load(args.out).get(key, {}).get("runs", {}).get(str(seed))
                if done and done.get("finished"):
                    print(f"{key} seed {seed}: recorded, skipped", flush=True)
                    continue
                if args.collect:
                    try:
                        entry = collect_unfinished(name, args.work_dir, args.overrides, seed)
                    except BenchmarkError as e:
                        print(f"skipped: {e}", file=sys.stderr)
                        continue
                else:
                    entry = run_one(
                        name, data_path, args.work_dir, args.overrides, args.threads, seed
                    )
                entry["command"] = command
                _record(args.out, name, key, args.overrides, entry)
                print(table({key: _load(args.out)[key]}), flush=True)
    except BenchmarkError as e:
        print(f"skipped: {e}", file=sys.stderr)
        return 2
    results = _load(args.out)
    print(table({k: results[k] for k in keys if k in results}))
    return 0


def _config_seed(name: str) -> int:
    from recbole_fork.config import load_config_file

    return int(load_config_file(CONFS / f"beauty-{name}.yaml").get("seed", 2020))


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _record(out: Path, name: str, key: str, overrides: list[str], entry: dict) -> None:
    """Merge one seed's entry into the JSON and recompute the run's summary (atomic).

    Re-read before merging: another benchmark process may have written its runs
    meanwhile. Written after every seed, so a long benchmark keeps what it finished.
    """
    results = _load(out)
    run = results.get(key)
    if run is None or "runs" not in run:  # new, or the single-seed format before --seeds
        run = {"runs": {}}
    run.update(config=str((CONFS / f"beauty-{name}.yaml").relative_to(REPO)), overrides=overrides)
    run["runs"][str(entry["seed"])] = entry
    run["summary"] = summarise_seeds(name, run["runs"])
    results[key] = run
    _atomic_write_text(out, json.dumps(results, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    sys.exit(main())
