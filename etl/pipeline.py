"""The ETL steps in order, their manifests, rerun skipping and the counting table.

Layout of OUT:
    work/ratings/part-PPPP/*.parquet   ratings split by user hash (partition_big_files)
    work/meta/chunk-*.parquet          2018 metadata records (partition_big_files)
    sentencepiece/spm.{model,vocab}    the BPE model (train_sentence_piece)
    work/items.parquet                 tokenised items, one per asin (tokenize_metadata)
    work/pool/part-PPPP.parquet        the filtered pre-training pool (post_process_ratings)
    amazon-<size>/, amazon-beauty/, amazon-sports/   RecBole atomic files
    manifests/<step>.json              one manifest per step
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from etl.engine import Engine
from etl.errors import EtlError
from etl.finetune import (
    build_beauty_and_sports_datasets,
    finetune_inputs,
    finetune_reviews_missing,
    finetune_users,
)
from etl.manifest import (
    DigestCache,
    fingerprint,
    is_fresh,
    load_manifest,
    output_lock,
    remove_stale_temporaries,
    write_manifest,
)
from etl.metadata import tokenize_metadata, train_sentence_piece
from etl.partition import metadata_sources, partition_big_files, ratings_sources
from etl.ratings import post_process_ratings
from etl.readers import CHUNK_BYTES, BadRows
from etl.scaling import build_scaling_datasets, size_label
from etl.text import DEFAULT_VOCAB

STEPS = (
    "download_raw_files",
    "partition_big_files",
    "train_sentence_piece",
    "tokenize_metadata",
    "post_process_ratings",
    "build_scaling_datasets",
    "build_beauty_and_sports_datasets",
)
DEFAULT_SIZES = (100_000, 500_000, 1_000_000, 5_000_000, 10_000_000)


@dataclass
class EtlOptions:
    """Everything a run needs; built once by the CLI (or a test) and passed down."""

    raw_dir: Path
    out_dir: Path
    sizes: tuple[int, ...] = DEFAULT_SIZES
    engine: Engine = field(default_factory=Engine)  # workers, Ray, progress bars
    seed: int = 42
    force: bool = False
    vocab_size: int = DEFAULT_VOCAB
    partitions: int = 16
    chunk_bytes: int = CHUNK_BYTES
    spm_max_items: int = 2_000_000  # items whose text trains SentencePiece (seeded choice above)

    @property
    def work_dir(self) -> Path:
        """Intermediate Parquet data."""
        return self.out_dir / "work"

    @property
    def spm_model(self) -> Path:
        """The SentencePiece model file."""
        return self.out_dir / "sentencepiece" / "spm.model"


@dataclass
class StepResult:
    """What one step did: 'ran' or 'skipped' (fresh manifest), its manifest and wall time."""

    step: str
    status: str
    manifest: dict = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class _Step:
    inputs: Callable[[EtlOptions], list[Path]]
    params: Callable[[EtlOptions], dict]
    outputs: Callable[[EtlOptions], list[Path]]
    run: Callable[[EtlOptions], dict]


def _raw_inputs(o: EtlOptions) -> list[Path]:
    return ratings_sources(o.raw_dir)[1] + metadata_sources(o.raw_dir)


def _run_post_process(o: EtlOptions) -> dict:
    bad = BadRows()
    excluded = finetune_users(o.raw_dir, bad)
    summary = post_process_ratings(o.work_dir, excluded, engine=o.engine)
    summary["bad_rows"] = bad.as_dict()
    # Without a 5-core file its users cannot be excluded: say so in the manifest and table.
    summary["finetune_reviews_missing"] = finetune_reviews_missing(o.raw_dir)
    return summary


def _scaling_names(o: EtlOptions) -> list[Path]:
    return [o.out_dir / f"amazon-{size_label(s)}" for s in sorted(set(o.sizes))]


_STEP_TABLE: dict[str, _Step] = {
    "partition_big_files": _Step(
        inputs=_raw_inputs,
        params=lambda o: {"partitions": o.partitions, "chunk_bytes": o.chunk_bytes},
        outputs=lambda o: [o.work_dir / "ratings", o.work_dir / "meta"],
        run=lambda o: partition_big_files(
            o.raw_dir,
            o.work_dir,
            n_parts=o.partitions,
            chunk_bytes=o.chunk_bytes,
            engine=o.engine,
        ),
    ),
    "train_sentence_piece": _Step(
        inputs=lambda o: [o.work_dir / "meta"],
        params=lambda o: {"vocab_size": o.vocab_size, "max_items": o.spm_max_items, "seed": o.seed},
        outputs=lambda o: [o.spm_model, o.spm_model.with_suffix(".vocab")],
        run=lambda o: train_sentence_piece(
            o.work_dir, o.spm_model, vocab_size=o.vocab_size, max_items=o.spm_max_items, seed=o.seed
        ),
    ),
    "tokenize_metadata": _Step(
        inputs=lambda o: [o.work_dir / "meta", o.spm_model],
        params=lambda o: {},
        outputs=lambda o: [o.work_dir / "items.parquet"],
        run=lambda o: tokenize_metadata(o.work_dir, o.spm_model, engine=o.engine),
    ),
    "post_process_ratings": _Step(
        inputs=lambda o: [
            o.work_dir / "ratings",
            o.work_dir / "items.parquet",
            *finetune_inputs(o.raw_dir),
        ],
        params=lambda o: {},
        outputs=lambda o: [o.work_dir / "pool"],
        run=_run_post_process,
    ),
    "build_scaling_datasets": _Step(
        inputs=lambda o: [o.work_dir / "pool", o.work_dir / "items.parquet"],
        params=lambda o: {"sizes": sorted(set(o.sizes)), "seed": o.seed},
        outputs=_scaling_names,
        run=lambda o: build_scaling_datasets(
            o.work_dir, o.out_dir, list(o.sizes), seed=o.seed, engine=o.engine
        ),
    ),
    "build_beauty_and_sports_datasets": _Step(
        inputs=lambda o: [*finetune_inputs(o.raw_dir), o.work_dir / "items.parquet", o.spm_model],
        params=lambda o: {},
        outputs=lambda o: [o.out_dir / name for name in ("amazon-beauty", "amazon-sports")],
        run=lambda o: build_beauty_and_sports_datasets(
            o.raw_dir, o.work_dir / "items.parquet", o.spm_model, o.out_dir
        ),
    ),
}


def _download(o: EtlOptions, only_if_missing: bool) -> StepResult:
    if only_if_missing and ratings_sources(o.raw_dir)[1] and metadata_sources(o.raw_dir):
        return StepResult("download_raw_files", "skipped", {"reason": "raw inputs already in RAW"})
    # Imported here so the other steps never depend on it; its DownloadError is an EtlError.
    from etl.download import download_raw_files

    start = time.perf_counter()
    files = download_raw_files(o.raw_dir, progress=o.engine.progress)
    return StepResult(
        "download_raw_files", "ran", {"files": [str(f) for f in files]}, time.perf_counter() - start
    )


def _check_prerequisites(step: str, o: EtlOptions) -> None:
    """Fail early, in one line, when an earlier step's output is missing."""
    produced_by = {
        o.work_dir / "ratings": "partition_big_files",
        o.work_dir / "meta": "partition_big_files",
        o.spm_model: "train_sentence_piece",
        o.work_dir / "items.parquet": "tokenize_metadata",
        o.work_dir / "pool": "post_process_ratings",
    }
    for path in _STEP_TABLE[step].inputs(o):
        if path in produced_by and not path.exists():
            raise EtlError(
                f"step {step} needs {path}; run --step {produced_by[path]} first (or all)"
            )


def _check_folders(o: EtlOptions) -> None:
    """RAW and OUT must be folders (or not exist yet); OUT is created."""
    for flag, path in (("--raw-dir", o.raw_dir), ("--out-dir", o.out_dir)):
        if os.path.lexists(path) and not path.is_dir():
            raise EtlError(f"{flag} {path} is not a folder; pass a folder path")
    o.out_dir.mkdir(parents=True, exist_ok=True)


def run_step(step: str, options: EtlOptions) -> StepResult:
    """Run one step unless its manifest shows it is fresh (or `options.force`).

    Holds the lock of `options.out_dir` while it runs.

    Raises:
        EtlError: unknown step name; missing, empty or corrupt input; another run holds
            the output folder; a worker process died (nothing is published for the step).
        OSError: the output folder cannot be written (read-only, full disk); the exception
            carries a note naming the step.
    """
    if step != "download_raw_files" and step not in _STEP_TABLE:
        raise EtlError(f"unknown step {step!r}; choose one of {', '.join(STEPS)} or all")
    _check_folders(options)
    with output_lock(options.out_dir):
        try:
            if step == "download_raw_files":
                return _download(options, only_if_missing=False)
            return _run_step(step, options)
        except OSError as exc:
            exc.add_note(f"step {step}, output folder {options.out_dir}")
            raise


def _run_step(step: str, options: EtlOptions) -> StepResult:
    spec = _STEP_TABLE[step]
    out = options.out_dir
    for directory in (out, options.work_dir, options.spm_model.parent, out / "manifests"):
        remove_stale_temporaries(directory)
    _check_prerequisites(step, options)
    params = spec.params(options)
    digests = DigestCache(out, workers=options.engine.workers)
    inputs = fingerprint(spec.inputs(options), out, digests, content_under=options.raw_dir)
    digests.save()
    if not options.force and is_fresh(out, step, params, inputs):
        return StepResult(step, "skipped", load_manifest(out, step) or {})
    start = time.perf_counter()
    summary = spec.run(options)
    seconds = time.perf_counter() - start
    summary["seconds"] = round(seconds, 3)
    outputs = [p for p in spec.outputs(options) if p.exists()]
    manifest = write_manifest(out, step, params, inputs, outputs, summary)
    return StepResult(step, "ran", manifest, seconds)


def run_pipeline(step: str, options: EtlOptions) -> list[StepResult]:
    """Run `step`, or every step in order for 'all' (download only when RAW lacks inputs).

    Holds the lock of `options.out_dir` throughout, so a second run on the same output
    folder fails at once (see `run_step` for what it raises).
    """
    if step != "all":
        return [run_step(step, options)]
    _check_folders(options)
    with output_lock(options.out_dir):
        try:
            results = [_download(options, only_if_missing=True)]
        except OSError as exc:
            exc.add_note(f"step download_raw_files, output folder {options.out_dir}")
            raise
        for name in STEPS[1:]:
            results.append(run_step(name, options))
    return results


def _cell(value: object) -> str:
    return "" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def counts_table(results: list[StepResult]) -> str:
    """The counts before and after every filter, as a fixed-width text table."""
    rows = [("step", "stage", "users", "items", "interactions", "status")]
    for r in results:
        for c in r.manifest.get("counts", []):
            rows.append(
                (
                    r.step,
                    c["stage"],
                    _cell(c.get("users")),
                    _cell(c.get("items")),
                    _cell(c.get("interactions")),
                    r.status,
                )
            )
        bad = sum(
            n for reasons in r.manifest.get("bad_rows", {}).values() for n in reasons.values()
        )
        if bad:
            rows.append(
                (r.step, "rows skipped as bad (see manifest)", "", "", _cell(bad), r.status)
            )
        for name in r.manifest.get("finetune_reviews_missing", []):
            stage = f"warning: {name} absent, its users not excluded"
            rows.append((r.step, stage, "", "", "", r.status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        cells = [
            c.ljust(w) if j < 2 or j == 5 else c.rjust(w)
            for j, (c, w) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
