"""Nested user fractions of a built dataset: `amazon-beauty` -> `amazon-beauty-25pct`, `-50pct`.

A data-size axis for a benchmark whose size is fixed (the Beauty 5-core): every user of the
dataset gets the ETL's seeded user key (`etl.hashing.sample_keys`, the key the scaled
pre-training sets sample users by); users are sorted by (key, user id) and a fraction f keeps
the first ceil(f * U) of them. The fractions are therefore nested (the 25% users are among
the 50% users), and the same seed gives the same users on every machine and run.

What a fraction holds:

- `<name>-<p>pct.inter`: every interaction of the chosen users, whole histories, byte for
  byte the source's lines in the source's order (no re-filtering: a 5-core user stays a
  user with at least 5 interactions, an item may fall below 5).
- `<name>-<p>pct.item`: the source's `.item` file unchanged, so every fraction has the
  same catalog and a full ranking is over the same items whatever the fraction.

Command line:

    python -m etl.user_fractions --data-path DATA --dataset amazon-beauty --percents 25,50

writes `DATA/amazon-beauty-25pct/` and `DATA/amazon-beauty-50pct/` (each replaced
atomically) and prints the counts as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.errors import EtlError
from etl.hashing import sample_keys
from etl.manifest import staging_dir


def fraction_name(dataset: str, percent: int) -> str:
    """The dataset name of a fraction: ('amazon-beauty', 25) -> 'amazon-beauty-25pct'."""
    return f"{dataset}-{percent}pct"


def _read_inter(path: Path) -> tuple[bytes, list[bytes], pa.Array]:
    """Header line, body lines (with their newlines) and the user id of each line."""
    with open(path, "rb") as f:
        header = f.readline()
        lines = f.readlines()
    columns = header.decode().rstrip("\n").split("\t")
    user_cols = [i for i, c in enumerate(columns) if c.split(":")[0] == "user_id"]
    if not user_cols:
        raise EtlError(f"{path}: no user_id column in the header {columns}; is it a .inter file?")
    col = user_cols[0]
    try:
        users = [line.rstrip(b"\n").split(b"\t")[col].decode() for line in lines]
    except IndexError:
        raise EtlError(f"{path}: a line has fewer columns than the header; rebuild it") from None
    return header, lines, pa.array(users, pa.string())


def user_order(users: pa.Array, seed: int) -> pa.Array:
    """Distinct users in sampling order: by (seeded key, user id). string [U]."""
    distinct = pc.unique(users)
    keys = sample_keys(distinct, seed)
    table = pa.table({"key": pa.array(keys, pa.uint64()), "user": distinct})
    order = pc.sort_indices(table, sort_keys=[("key", "ascending"), ("user", "ascending")])
    return distinct.take(order)


def write_user_fractions(
    data_path: Path, dataset: str, percents: list[int], *, seed: int = 42
) -> list[dict[str, int | str]]:
    """Write `data_path/<dataset>-<p>pct/` for every percent p (see the module docstring).

    Args:
        data_path: folder holding `<dataset>/<dataset>.inter` and `.item`.
        dataset: the source dataset's name.
        percents: whole percents in 1..99.
        seed: the user-sampling seed (the ETL's `--seed`).

    Returns:
        one dict per percent, smallest first: `dataset`, `users`, `interactions`, `items`
        (distinct items the interactions use; the `.item` file keeps them all).

    Raises:
        EtlError: the source files are missing or malformed, or a percent is out of range.
    """
    percents = sorted(set(percents))
    bad = [p for p in percents if not (isinstance(p, int) and 1 <= p <= 99)]
    if not percents or bad:
        raise EtlError(f"percents {bad or percents}: give whole numbers from 1 to 99, e.g. 25,50")
    source = Path(data_path) / dataset
    inter, item = source / f"{dataset}.inter", source / f"{dataset}.item"
    for path in (inter, item):
        if not path.is_file():
            raise EtlError(f"{path} not found; build {dataset} first (etl or benchmarks)")
    header, lines, users = _read_inter(inter)
    order = user_order(users, seed)
    item_bytes = item.read_bytes()
    # Rank of each line's user in the sampling order: a fraction keeps ranks below its cut.
    rank_of = pc.index_in(users, value_set=order).to_numpy()  # [rows]
    item_col = header.decode().rstrip("\n").split("\t")
    item_idx = next(i for i, c in enumerate(item_col) if c.split(":")[0] == "item_id")
    summary: list[dict[str, int | str]] = []
    for p in percents:
        n_users = math.ceil(len(order) * p / 100)
        keep = np.flatnonzero(rank_of < n_users)
        name = fraction_name(dataset, p)
        chosen = [lines[i] for i in keep.tolist()]
        with staging_dir(Path(data_path) / name) as tmp:
            (tmp / f"{name}.inter").write_bytes(header + b"".join(chosen))
            (tmp / f"{name}.item").write_bytes(item_bytes)
        items = {line.rstrip(b"\n").split(b"\t")[item_idx] for line in chosen}
        summary.append(
            {"dataset": name, "users": n_users, "interactions": len(chosen), "items": len(items)}
        )
    return summary


def main(argv: list[str] | None = None) -> int:
    """`python -m etl.user_fractions --data-path DATA --dataset NAME --percents 25,50`."""
    parser = argparse.ArgumentParser(
        prog="python -m etl.user_fractions",
        description="Write nested user fractions of a built dataset (same .item catalog).",
    )
    parser.add_argument("--data-path", type=Path, required=True, help="folder of the datasets")
    parser.add_argument("--dataset", required=True, help="source dataset, e.g. amazon-beauty")
    parser.add_argument("--percents", required=True, help="whole percents, e.g. 25,50")
    parser.add_argument("--seed", type=int, default=42, help="user-sampling seed (default 42)")
    args = parser.parse_args(argv)
    try:
        percents = [int(p) for p in args.percents.split(",") if p.strip()]
    except ValueError:
        parser.error(f"--percents {args.percents!r}: give whole numbers, e.g. 25,50")
    try:
        summary = write_user_fractions(args.data_path, args.dataset, percents, seed=args.seed)
    except EtlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
