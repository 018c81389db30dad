"""Command line of the ETL: `python scripts/scaling_datasets.py --step STEP --raw-dir RAW --out-dir OUT`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from etl.engine import ENGINES, Engine
from etl.errors import EtlError
from etl.pipeline import STEPS, EtlOptions, counts_table, run_pipeline
from etl.readers import CHUNK_BYTES
from etl.scaling import parse_size
from etl.text import DEFAULT_VOCAB


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(parse_size(s) for s in text.split(",") if s.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="scaling_datasets",
        description="Amazon 2018 ratings/metadata and 2014 5-core reviews to RecBole atomic files.",
    )
    parser.add_argument("--step", required=True, choices=[*STEPS, "all"])
    parser.add_argument(
        "--raw-dir", required=True, type=Path, help="raw Amazon files (gzip or plain)"
    )
    parser.add_argument(
        "--out-dir", required=True, type=Path, help="outputs, intermediates, manifests"
    )
    parser.add_argument(
        "--sizes", type=_sizes, default="100K,500K,1M,5M,10M", help="e.g. 2K,100K,1M"
    )
    parser.add_argument("--workers", type=int, default=1, help="processes (or Ray CPUs)")
    parser.add_argument("--engine", choices=ENGINES, default="multiprocess")
    parser.add_argument("--ray-address", default=None, help="passed to ray.init(address=...)")
    parser.add_argument(
        "--seed", type=int, default=42, help="user sampling and SentencePiece sample"
    )
    parser.add_argument("--force", action="store_true", help="redo steps even when fresh")
    parser.add_argument(
        "--vocab-size", type=int, default=DEFAULT_VOCAB, help="SentencePiece pieces"
    )
    parser.add_argument(
        "--partitions", type=int, default=16, help="parts the ratings are split into"
    )
    parser.add_argument(
        "--chunk-mb", type=float, default=CHUNK_BYTES / (1 << 20), help="input chunk size"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv`, run the step(s), print the counting table. Returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.workers < 1 or args.partitions < 1:
        print("error: --workers and --partitions must be at least 1", file=sys.stderr)
        return 2
    options = EtlOptions(
        raw_dir=args.raw_dir,
        out_dir=args.out_dir,
        sizes=args.sizes,
        engine=Engine(
            kind=args.engine,
            workers=args.workers,
            ray_address=args.ray_address,
            progress=not args.no_progress,
        ),
        seed=args.seed,
        force=args.force,
        vocab_size=args.vocab_size,
        partitions=args.partitions,
        chunk_bytes=max(1, int(args.chunk_mb * (1 << 20))),
    )
    try:
        results = run_pipeline(args.step, options)
    except (EtlError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for r in results:
        print(f"{r.step}: {r.status}" + (f" ({r.seconds:.1f} s)" if r.status == "ran" else ""))
    print(counts_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
