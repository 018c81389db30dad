"""Model quality on the real Beauty 5-core benchmark (prints a table, writes JSON).

The standard Beauty 5-core set (22,363 users, 12,101 items, 198,502 interactions) is
rebuilt from ``../shared/data/seqrec_reference`` through the project's own ETL
(``etl.reference`` writes the 2014 raw files, then the ``build_beauty_and_sports_datasets``
step writes ``amazon-beauty``) into a work folder. Each chosen run then trains one frozen
config of ``confs/benchmarks/`` through ``recbole_fork.run.pre_train`` (leave-one-out, full
ranking over every item, history excluded), tracked in MLflow in ``WORK/mlruns.sqlite``.

Per run, ``benchmarks/results/quality.json`` gets (merged with the runs already there):
HR@10 / NDCG@10 on test at the best valid epoch, the best valid NDCG@10, epochs run, best
epoch, wall time, training seconds per epoch (mean ``epoch_time_s``) and wall seconds per
epoch (training + the train/valid/test evaluations), the overrides used, the date and the
command. Published targets (REFERENCE.md section 4, eSASRec benchmark) are printed beside.

The benchmark has no 2018 catalog, so the ETL's SentencePiece model is trained on the
Beauty items' own brand and category text (see ``_write_catalog_for_sentencepiece``).

Full benchmark (hours on 2 CPU cores; run at low priority):
    nice -n 19 python benchmarks/quality.py --runs sasrec-id
A check that every config runs (2 epochs each, results kept apart):
    nice -n 19 python benchmarks/quality.py --set epochs=2 --out /tmp/quality-check.json
Record a run that is still going, or was killed, from its per-epoch MLflow metrics:
    python benchmarks/quality.py --runs sasrec-id --collect
"""

from __future__ import annotations

import argparse
import datetime
import json
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


def run_one(
    name: str, data_path: Path, work_dir: Path, overrides: list[str], threads: int
) -> dict[str, Any]:
    """Train the run ``name`` (``confs/benchmarks/beauty-<name>.yaml``) and summarise it.

    Returns:
        The run's entry of ``quality.json`` (metrics as fractions, times in seconds).
    """
    import torch

    from recbole_fork.config import build_config
    from recbole_fork.run import pre_train

    torch.set_num_threads(threads)
    conf = CONFS / f"beauty-{name}.yaml"
    config = build_config(conf, [*overrides, f"data_path={data_path}"])
    checkpoint = work_dir / "checkpoints" / f"beauty-{name}.pth"
    if checkpoint.exists():
        checkpoint.unlink()  # a fresh run each time; --resume is the CLI's business
    uri = f"sqlite:///{work_dir / 'mlruns.sqlite'}"
    start = time.perf_counter()
    result = pre_train(config, checkpoint, tracking_uri=uri, config_file=conf)
    wall = time.perf_counter() - start
    entry = summarise(checkpoint, uri)
    # The final figures of the run itself (best weights reloaded, test scored once more).
    entry.update(
        test_hr_at_10=result["best_test_hr_at_10"],
        test_ndcg_at_10=result["best_test_ndcg_at_10"],
        best_epoch=int(result["best_epoch"]),
    )
    return {
        "config": str(conf.relative_to(REPO)),
        "overrides": list(overrides),
        **entry,
        "finished": True,
        "wall_s": round(wall, 1),
        "wall_s_per_epoch": round(wall / entry["epochs"], 2),
        "threads": threads,
        "date": _now(),
    }


def collect_unfinished(name: str, work_dir: Path) -> dict[str, Any]:
    """The entry of a run still going (or killed), from the MLflow run of its checkpoint.

    Raises:
        BenchmarkError: no checkpoint of ``name`` in ``work_dir`` (nothing finished an epoch).
    """
    checkpoint = work_dir / "checkpoints" / f"beauty-{name}.pth"
    if not checkpoint.is_file():
        raise BenchmarkError(f"{checkpoint} not found: run {name} has not finished an epoch")
    uri = f"sqlite:///{work_dir / 'mlruns.sqlite'}"
    entry = summarise(checkpoint, uri)
    return {
        "config": str((CONFS / f"beauty-{name}.yaml").relative_to(REPO)),
        **entry,
        "finished": entry["mlflow_status"] == "FINISHED",
        "wall_s": None,  # not known from MLflow; see the run's log
        "wall_s_per_epoch": None,
        "date": _now(),
    }


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def table(results: dict[str, dict[str, Any]]) -> str:
    """The runs beside the published targets, as fixed-width text."""
    rows = [("run", "HR@10", "NDCG@10", "target", "met", "epochs", "best", "train s/ep", "wall s")]
    for name, r in results.items():
        target = TARGETS.get(name)
        met = ""
        if target is not None:
            hit = r["test_hr_at_10"] >= target[0] and r["test_ndcg_at_10"] >= target[1]
            met = "yes" if hit else "no"
            # A run cut short is not a result: say so rather than "no".
            met = met if r.get("finished", True) else f"{met} (unfinished)"
        rows.append(
            (
                name,
                f"{r['test_hr_at_10']:.4f}",
                f"{r['test_ndcg_at_10']:.4f}",
                f"{target[0]:.4f} / {target[1]:.4f}" if target else "-",
                met or "-",
                str(r["epochs"]),
                str(r["best_epoch"]),
                f"{r['train_s_per_epoch']:.1f}",
                "-" if r["wall_s"] is None else f"{r['wall_s']:.0f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


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
    p.add_argument("--out", type=Path, default=RESULTS, help="results JSON (merged, atomic)")
    p.add_argument(
        "--collect", action="store_true",
        help="train nothing: record the runs still going (or killed) in WORK from MLflow",
    )  # fmt: skip
    args = p.parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    try:
        data_path = None if args.collect else build_beauty(args.shared_data, args.work_dir)
        for name in args.runs:
            if args.collect:
                entry = collect_unfinished(name, args.work_dir)
            else:
                entry = run_one(name, data_path, args.work_dir, args.overrides, args.threads)
            entry["command"] = command
            # Re-read before merging: another benchmark process may have written its runs
            # meanwhile. Written after every run, so a long benchmark keeps what it finished.
            results = json.loads(args.out.read_text()) if args.out.is_file() else {}
            results[name] = entry
            _atomic_write_text(args.out, json.dumps(results, indent=2, sort_keys=True) + "\n")
            print(table({name: entry}), flush=True)
    except BenchmarkError as e:
        print(f"skipped: {e}", file=sys.stderr)
        return 2
    print(table({n: results[n] for n in RUNS if n in results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
