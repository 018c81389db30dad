"""Command line of the ETL: `python scripts/scaling_datasets.py --step STEP --raw-dir RAW --out-dir OUT`."""

from __future__ import annotations

import argparse
import errno
import math
import re
import sys
from pathlib import Path

from etl.amazon2023 import OPTIONAL_TEXT_FIELDS
from etl.engine import ENGINES, Engine
from etl.pipeline import STEPS, EtlOptions, counts_table, run_pipeline
from etl.readers import CHUNK_BYTES
from etl.scaling import parse_size
from etl.sources import SOURCES
from etl.text import DEFAULT_VOCAB
from recbole_fork.errors import UserError


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(parse_size(s) for s in text.split(",") if s.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if not sizes:
        raise argparse.ArgumentTypeError("no dataset size given; write sizes like 100K,1M")
    return sizes


def _chunk_mb(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0 and int(value * (1 << 20)) >= 1):
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive size in MB, e.g. 64")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of at least 1")
    return value


_OS_HINTS = {
    errno.ENOSPC: "free some disk space or pass another --out-dir",
    errno.EDQUOT: "free some disk space or pass another --out-dir",
    errno.EACCES: "check the permissions, or pass another --out-dir",
    errno.EPERM: "check the permissions, or pass another --out-dir",
    errno.EROFS: "the file system is read-only: pass another --out-dir",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "a folder stands where a file should be",
}


def describe_os_error(exc: OSError, out_dir: Path) -> str:
    """One line naming the path (the output folder when the error names none) and the cause."""
    where = exc.filename if exc.filename is not None else out_dir
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    cause = exc.strerror or str(exc)
    notes = "; ".join(getattr(exc, "__notes__", []))
    hint = _OS_HINTS.get(exc.errno or 0, "check the path")
    return f"{where}: {cause}" + (f" ({notes})" if notes else "") + f"; {hint}"


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    return () if names == ("none",) else names


_BYTES_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)


def _bytes(text: str) -> int:
    """'4G' -> 4 GiB in bytes (K, M, G, T are powers of 1024)."""
    match = _BYTES_RE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"bad memory budget {text!r}; write e.g. 4G or 512M")
    power = " KMGT".index(match.group(2).upper() or " ")
    return int(float(match.group(1)) * 1024**power)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="scaling_datasets",
        description="Amazon (2018 with the 2014 5-core sets, or 2023 with its official "
        "splits) or MovieLens raw files to RecBole atomic files.",
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
    parser.add_argument("--workers", type=_positive_int, default=1, help="processes (or Ray CPUs)")
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
        "--partitions", type=_positive_int, default=16, help="parts the ratings are split into"
    )
    parser.add_argument(
        "--chunk-mb", type=_chunk_mb, default=CHUNK_BYTES / (1 << 20), help="input chunk size"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")
    parser.add_argument(
        "--source", choices=SOURCES, default="amazon", help="amazon (default) or movielens"
    )
    parser.add_argument(
        "--release",
        default=None,
        help="amazon: 2018 (default) or 2023; movielens: ml-1m, ml-20m, ml-25m or ml-32m "
        "(default: the one in RAW, else ml-1m)",
    )
    parser.add_argument(
        "--categories",
        type=_names,
        default=(),
        help="Amazon 2023 categories to download, e.g. All_Beauty,Video_Games, or all",
    )
    parser.add_argument(
        "--benchmarks",
        type=_names,
        default="5core/last_out,5core/timestamp",
        help="Amazon 2023 official splits to download, from {5core,0core}/{last_out,timestamp}"
        "[_w_his]; 'none' for none",
    )
    parser.add_argument(
        "--item-text",
        type=_names,
        default=(),
        help="extra Amazon 2023 item text, from features,description (default: title, "
        "store and categories only)",
    )
    parser.add_argument(
        "--memory-budget",
        type=_bytes,
        default=None,
        help="memory all workers may use at once, e.g. 4G: the ratings are cut into parts "
        "small enough for it (default: parts of at most 64 MB of input)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv`, run the step(s), print the counting table. Returns the exit status.

    A user error (`UserError`: missing or corrupt input, a busy output folder, a killed
    worker) and an OSError (the path and its cause) print one line and return 1; Ctrl-C
    prints how to resume and returns 130. Anything else is a bug and keeps its traceback.
    """
    args = build_parser().parse_args(argv)
    if args.item_text and (args.source, args.release) != ("amazon", "2023"):
        print("error: --item-text is for Amazon 2023 items; add --release 2023", file=sys.stderr)
        return 2
    unknown = sorted(set(args.item_text) - set(OPTIONAL_TEXT_FIELDS))
    if unknown:
        print(
            f"error: unknown --item-text {','.join(unknown)}; choose from "
            f"{','.join(OPTIONAL_TEXT_FIELDS)}",
            file=sys.stderr,
        )
        return 2
    try:
        results = run_pipeline(args.step, _options(args))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {describe_os_error(exc, args.out_dir)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "interrupted: finished steps are kept and nothing half-written is published; "
            "rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    for r in results:
        print(f"{r.step}: {r.status}" + (f" ({r.seconds:.1f} s)" if r.status == "ran" else ""))
    print(counts_table(results))
    return 0


def _options(args: argparse.Namespace) -> EtlOptions:
    return EtlOptions(
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
        chunk_bytes=int(args.chunk_mb * (1 << 20)),
        source=args.source,
        release=args.release,
        item_text=args.item_text,
        memory_budget=args.memory_budget,
        categories=args.categories,
        benchmarks=args.benchmarks,
    )


if __name__ == "__main__":
    sys.exit(main())
