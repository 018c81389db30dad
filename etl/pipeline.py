"""The ETL steps in order, their manifests, rerun skipping and the counting table.

Layout of OUT:
    work/ratings/part-PPPP/*.parquet   ratings split by user hash (partition_big_files)
    work/meta/chunk-*.parquet          2018 metadata records (partition_big_files)
    sentencepiece/spm.{model,vocab}    the BPE model (train_sentence_piece)
    work/items.parquet                 tokenised items, one per asin (tokenize_metadata)
    work/pool/part-PPPP.parquet        the filtered pre-training pool (post_process_ratings)
    amazon-<size>/, amazon-beauty/, amazon-sports/   RecBole atomic files
    amazon2023-<size>/, amazon2023-<Category>-<k>core-<split>/   (--release 2023)
    ml-1m/, ml-1m-<size>/              (--source movielens: the release, then its subsets)
    manifests/<step>.json              one manifest per step

Every source runs the same steps (see `etl.sources` for what differs); a step that has
nothing to do for a source (the 2014 fine-tuning sets outside Amazon 2018, the official
splits outside Amazon 2023) runs empty and says so in its manifest.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from etl.amazon2023 import BenchmarkSet, find_benchmark_sets, input_bytes, parts_for
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
from etl.official_splits import build_benchmark_datasets
from etl.partition import metadata_sources, partition_big_files, ratings_sources
from etl.ratings import post_process_ratings
from etl.raw_files import download_selection
from etl.readers import CHUNK_BYTES, BadRows
from etl.scaling import build_scaling_datasets, size_label
from etl.sources import (
    FileSet,
    SourceSpec,
    check_2018_inputs,
    metadata_files,
    missing_inputs_message,
    ratings_files,
    resolve,
)
from etl.text import DEFAULT_VOCAB

STEPS = (
    "download_raw_files",
    "partition_big_files",
    "train_sentence_piece",
    "tokenize_metadata",
    "post_process_ratings",
    "build_scaling_datasets",
    "build_beauty_and_sports_datasets",
    "build_benchmark_datasets",
)
DEFAULT_SIZES = (100_000, 500_000, 1_000_000, 5_000_000, 10_000_000)
# Ratings input bytes per part. Without --memory-budget a part is at most this big (the 16
# default parts of the 818 MB 20M-row file are 51 MB); with it, the budget decides.
DEFAULT_PART_BYTES = 64 << 20
MIN_PART_BYTES = 4 << 20
# Peak memory of a worker per byte of its part's input: post_process_ratings on the 80M-row
# synthetic file (49 parts of 67 MB, 2 workers) peaked at 1.68 GiB for the parent (0.26 GiB)
# and two workers, about 0.7 GiB a worker, 0.2 GiB of it imports: (0.7 - 0.2) / 0.067 = 7.5.
PART_MEMORY_FACTOR = 8.0


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
    source: str = "amazon"  # or "movielens"
    release: str | None = None  # amazon: 2018 (default) or 2023; movielens: ml-1m, ml-20m, ...
    item_text: tuple[str, ...] = ()  # optional Amazon 2023 text: features, description
    memory_budget: int | None = None  # bytes all workers may hold at once (None: default parts)
    categories: tuple[str, ...] = ()  # Amazon 2023 categories to download ('all': every one)
    benchmarks: tuple[str, ...] = ("5core/last_out", "5core/timestamp")  # 2023 splits to fetch

    @property
    def spec(self) -> SourceSpec:
        """The source and release, resolved against RAW (see `etl.sources.resolve`)."""
        return resolve(self.source, self.release, self.raw_dir)

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


def _is_2018(o: EtlOptions) -> bool:
    return o.source == "amazon" and o.release in (None, "2018")


def _source_params(o: EtlOptions) -> dict:
    """Source, release and item text for the manifests (none for Amazon 2018, the default,
    so that its manifests stay as they were)."""
    if _is_2018(o):
        return {}
    spec = o.spec
    return {"source": spec.source, "release": spec.release, "item_text": list(o.item_text)}


def _inputs(o: EtlOptions) -> tuple[FileSet, FileSet]:
    spec = o.spec
    return ratings_files(spec, o.raw_dir), metadata_files(spec, o.raw_dir, o.item_text)


def _raw_inputs(o: EtlOptions) -> list[Path]:
    if _is_2018(o):
        return ratings_sources(o.raw_dir)[1] + metadata_sources(o.raw_dir)
    ratings, meta = _inputs(o)
    return [*ratings.paths, *meta.paths]


def _rating_input_paths(o: EtlOptions) -> list[Path]:
    return ratings_sources(o.raw_dir)[1] if _is_2018(o) else list(_inputs(o)[0].paths)


def part_bytes(o: EtlOptions) -> int:
    """Input bytes of ratings per part, so that `workers` parts in memory at once fit the
    memory budget (`PART_MEMORY_FACTOR` bytes of memory per input byte, measured)."""
    if o.memory_budget is None:
        return DEFAULT_PART_BYTES
    per_worker = o.memory_budget // o.engine.workers
    return max(MIN_PART_BYTES, int(per_worker / PART_MEMORY_FACTOR))


def partition_count(o: EtlOptions) -> int:
    """`--partitions`, raised when the ratings input is larger than that many parts of
    `part_bytes` (so a part, which the later steps hold whole, stays bounded)."""
    return parts_for(input_bytes(_rating_input_paths(o)), part_bytes(o), o.partitions)


def _run_partition(o: EtlOptions) -> dict:
    n_parts = partition_count(o)
    if _is_2018(o):
        check_2018_inputs(o.raw_dir)
        summary = partition_big_files(
            o.raw_dir, o.work_dir, n_parts=n_parts, chunk_bytes=o.chunk_bytes, engine=o.engine
        )
    else:
        ratings, meta = _inputs(o)
        for files, what in ((ratings, "ratings"), (meta, "metadata")):
            if not files.paths:
                raise EtlError(missing_inputs_message(o.spec, o.raw_dir, what))
        summary = partition_big_files(
            o.raw_dir, o.work_dir, n_parts=n_parts, chunk_bytes=o.chunk_bytes, engine=o.engine,
            inputs=(ratings, meta),
        )  # fmt: skip
    summary["partitions"] = n_parts
    return summary


def _run_post_process(o: EtlOptions) -> dict:
    spec = o.spec
    bad = BadRows()
    # Only the 2018 pool excludes the 2014 fine-tuning users; Amazon 2023 ids are another
    # namespace and MovieLens has no fine-tuning set.
    excluded = finetune_users(o.raw_dir, bad) if spec.finetune_2014 else pa.array([], pa.string())
    summary = post_process_ratings(
        o.work_dir, excluded, engine=o.engine, keep_all=not spec.amazon_rules
    )
    summary["bad_rows"] = bad.as_dict()
    # Without a 5-core file its users cannot be excluded: say so in the manifest and table.
    if spec.finetune_2014:
        summary["finetune_reviews_missing"] = finetune_reviews_missing(o.raw_dir)
    return summary


def _scaling_names(o: EtlOptions) -> list[Path]:
    spec = o.spec
    names = [f"{spec.prefix}-{size_label(s)}" for s in sorted(set(o.sizes))]
    if spec.whole_dataset:
        names.append(spec.whole_dataset)
    return [o.out_dir / n for n in names]


def _run_scaling(o: EtlOptions) -> dict:
    spec = o.spec
    return build_scaling_datasets(
        o.work_dir, o.out_dir, list(o.sizes), seed=o.seed, engine=o.engine, prefix=spec.prefix,
        millis=spec.millis, whole=spec.whole_dataset, skip_too_big=spec.source == "movielens",
    )  # fmt: skip


def _finetune_inputs(o: EtlOptions) -> list[Path]:
    return finetune_inputs(o.raw_dir) if o.spec.finetune_2014 else []


def _run_finetune(o: EtlOptions) -> dict:
    spec = o.spec
    if not spec.finetune_2014:
        return {"counts": [], "datasets": [], "not_for": f"{spec.source} {spec.release}"}
    return build_beauty_and_sports_datasets(
        o.raw_dir, o.work_dir / "items.parquet", o.spm_model, o.out_dir
    )


def _benchmark_sets(o: EtlOptions) -> list[BenchmarkSet]:
    return find_benchmark_sets(o.raw_dir) if o.spec.official_splits else []


def _run_benchmarks(o: EtlOptions) -> dict:
    spec = o.spec
    if not spec.official_splits:
        return {"counts": [], "datasets": [], "not_for": f"{spec.source} {spec.release}"}
    return build_benchmark_datasets(
        _benchmark_sets(o), o.work_dir / "items.parquet", o.out_dir, o.work_dir,
        part_bytes=part_bytes(o), chunk_bytes=o.chunk_bytes, engine=o.engine,
    )  # fmt: skip


_STEP_TABLE: dict[str, _Step] = {
    "partition_big_files": _Step(
        inputs=_raw_inputs,
        params=lambda o: {
            "partitions": partition_count(o),
            "chunk_bytes": o.chunk_bytes,
            **_source_params(o),
        },  # fmt: skip
        outputs=lambda o: [o.work_dir / "ratings", o.work_dir / "meta"],
        run=_run_partition,
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
            *_finetune_inputs(o),
        ],
        params=_source_params,
        outputs=lambda o: [o.work_dir / "pool"],
        run=_run_post_process,
    ),
    "build_scaling_datasets": _Step(
        inputs=lambda o: [o.work_dir / "pool", o.work_dir / "items.parquet"],
        params=lambda o: {"sizes": sorted(set(o.sizes)), "seed": o.seed, **_source_params(o)},
        outputs=_scaling_names,
        run=_run_scaling,
    ),
    "build_beauty_and_sports_datasets": _Step(
        inputs=lambda o: [*_finetune_inputs(o), o.work_dir / "items.parquet", o.spm_model],
        params=_source_params,
        outputs=lambda o: (
            [o.out_dir / name for name in ("amazon-beauty", "amazon-sports")]
            if o.spec.finetune_2014
            else []
        ),
        run=_run_finetune,
    ),
    "build_benchmark_datasets": _Step(
        inputs=lambda o: [
            *(p for s in _benchmark_sets(o) for p in s.files),
            o.work_dir / "items.parquet",
        ],  # fmt: skip
        params=lambda o: {**_source_params(o)},
        outputs=lambda o: [o.out_dir / s.name for s in _benchmark_sets(o)],
        run=_run_benchmarks,
    ),
}


def _raw_present(o: EtlOptions) -> bool:
    """True when RAW holds the rating and item inputs of the source."""
    if _is_2018(o):
        return bool(ratings_sources(o.raw_dir)[1] and metadata_sources(o.raw_dir))
    ratings, meta = _inputs(o)
    return bool(ratings.paths and meta.paths)


def _download(o: EtlOptions, only_if_missing: bool) -> StepResult:
    if only_if_missing and _raw_present(o):
        return StepResult("download_raw_files", "skipped", {"reason": "raw inputs already in RAW"})
    # Imported here so the other steps never depend on it; its DownloadError is an EtlError.
    from etl.download import download_raw_files

    spec = o.spec
    try:
        names = download_selection(spec.source, spec.release, o.categories, o.benchmarks)
    except ValueError as exc:
        raise EtlError(str(exc)) from exc
    start = time.perf_counter()
    files = download_raw_files(o.raw_dir, files=names, progress=o.engine.progress)
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


def _release_memory() -> None:
    """Hand memory the finished step freed back to the system: the steps run one after the
    other in this process, and the allocators otherwise keep every step's peak for the next
    (measured: 2.3 GiB still held after the 20M-row build, see BENCHMARKS.md)."""
    pa.default_memory_pool().release_unused()
    if sys.platform.startswith("linux"):
        # numpy and Python buffers (glibc); another C library has nothing to trim.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


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
    _release_memory()
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
        for skip in r.manifest.get("skipped_sizes", []):
            stage = f"skipped {skip['dataset']}: the pool has {skip['pool_interactions']:,}"
            rows.append((r.step, stage, "", "", "", r.status))
        for name, check in r.manifest.get("checks", {}).items():
            wrong = {k: check[k] for k in ("split_mismatch", "history_mismatch") if check[k]}
            if wrong:
                stage = f"warning: {name} rows not in the official order: {wrong}"
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
