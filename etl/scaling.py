"""Step `build_scaling_datasets`: nested, deterministic samples of whole users.

Each pool user gets a key = seeded stable hash of the user id; users are sorted by
(key, user id) and a size of N interactions takes the shortest prefix whose interaction
count reaches N. The sets are therefore nested, and the same seed gives the same users
whatever the workers, engine, partition count or PYTHONHASHSEED. Rows are written users
by key, each history by (timestamp, input order).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from etl.atomic_files import write_inter, write_item
from etl.engine import DEFAULT_ENGINE, Engine
from etl.errors import EtlError
from etl.hashing import sample_keys
from etl.manifest import staging_dir

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KkMmGg]?)\s*$")
_UNITS = {"": 1, "K": 1_000, "M": 1_000_000, "G": 1_000_000_000}


def parse_size(text: str) -> int:
    """'100K' -> 100000, '1.5M' -> 1500000, '2000' -> 2000.

    Raises:
        ValueError: not a positive number with an optional K/M/G suffix.
    """
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"bad dataset size {text!r}; write sizes like 2K, 100K, 1M or 5000")
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if value < 1 or value != int(value):
        raise ValueError(f"bad dataset size {text!r}; it must be a positive whole number")
    return int(value)


def size_label(size: int) -> str:
    """The dataset name suffix of a size: 100000 -> '100K', 1000000 -> '1M', 1500 -> '1500'."""
    for unit, factor in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def choose_users(
    users: pa.Array, counts: np.ndarray, sizes: list[int], seed: int
) -> tuple[np.ndarray, list[int]]:
    """Order users by (key, id) and find each size's prefix length.

    Args:
        users: user ids [U]; counts: their interaction counts int64 [U].

    Returns:
        (indices of users in sampling order [U], number of users for each size).

    Raises:
        EtlError: a size exceeds the pool's interactions.
    """
    keys = sample_keys(users, seed)  # [U]
    table = pa.table({"key": pa.array(keys, pa.uint64()), "user": users})
    perm = pc.sort_indices(
        table, sort_keys=[("key", "ascending"), ("user", "ascending")]
    ).to_numpy()
    cumulative = np.cumsum(counts[perm])  # [U]
    total = int(cumulative[-1]) if len(cumulative) else 0
    n_users = []
    for size in sizes:
        if size > total:
            raise EtlError(
                f"dataset size {size_label(size)} exceeds the pre-training pool of {total} "
                "interactions; pass smaller --sizes"
            )
        n_users.append(int(np.searchsorted(cumulative, size, side="left")) + 1)
    return perm, n_users


# Users are first counted in KEY_BUCKETS ranges of their sampling key (the top bits), so that
# the parent only ever holds the users of the buckets the largest dataset reaches into: its
# memory follows the dataset sizes, not the pool (whose users all fit in memory no longer).
KEY_BUCKET_BITS = 16


def _part_users(path: str, seed: int) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """(distinct users [U], their interaction counts int64 [U], key buckets int64 [U])."""
    users = pq.read_table(path, columns=["user"]).column("user").combine_chunks()
    encoded = pc.dictionary_encode(users)
    counts = np.bincount(encoded.indices.to_numpy(), minlength=len(encoded.dictionary))
    buckets = (sample_keys(encoded.dictionary, seed) >> np.uint64(64 - KEY_BUCKET_BITS)).astype(
        np.int64
    )
    return encoded.dictionary, counts.astype(np.int64), buckets


@dataclass(frozen=True)
class _CountTask:
    path: str
    seed: int


def _bucket_counts_task(task: _CountTask) -> np.ndarray:
    """Interactions per key bucket of one pool part: int64 [2**KEY_BUCKET_BITS]."""
    _, counts, buckets = _part_users(task.path, task.seed)
    return np.bincount(buckets, weights=counts, minlength=1 << KEY_BUCKET_BITS).astype(np.int64)


@dataclass(frozen=True)
class _CandidateTask:
    path: str
    seed: int
    last_bucket: int


def _candidates_task(task: _CandidateTask) -> tuple[pa.Array, np.ndarray]:
    """The part's users whose key bucket is at most `last_bucket`, and their counts."""
    users, counts, buckets = _part_users(task.path, task.seed)
    keep = np.flatnonzero(buckets <= task.last_bucket)
    return users.take(pa.array(keep)), counts[keep]


@dataclass(frozen=True)
class _SelectTask:
    path: str
    users: pa.Array
    ranks: np.ndarray


def _select_task(task: _SelectTask) -> pa.Table:
    table = pq.read_table(task.path)
    index = pc.index_in(table.column("user"), value_set=task.users)
    keep = pc.is_valid(index)
    table = table.filter(keep)
    rank = task.ranks[pc.filter(index, keep).to_numpy()]
    return table.append_column("rank", pa.array(rank, pa.int64()))


def lookup_items(items_path: Path, asins: pa.Array) -> pa.Table:
    """Rows of `items.parquet` for `asins` (read batch by batch to bound memory), by asin."""
    dataset = ds.dataset(items_path, format="parquet")
    table = dataset.to_table(filter=pc.field("asin").isin(asins))
    return table.take(pc.sort_indices(table, sort_keys=[("asin", "ascending")]))


def build_scaling_datasets(
    work_dir: Path,
    out_dir: Path,
    sizes: list[int],
    *,
    seed: int,
    engine: Engine = DEFAULT_ENGINE,
    prefix: str = "amazon",
    millis: bool = False,
    whole: str | None = None,
    skip_too_big: bool = False,
) -> dict:
    """Write `out_dir/<prefix>-<size>/<prefix>-<size>.{inter,item}` for every size.

    Args:
        prefix: dataset name prefix (`amazon`, `amazon2023`, `ml-1m`, ...).
        millis: the pool's timestamps are milliseconds (Amazon 2023): written as seconds
            with three decimals.
        whole: also write the whole pool (every user, in the same order) under this name.
        skip_too_big: a size above the pool's interactions is skipped and listed in the
            summary (`skipped_sizes`) instead of failing the step.

    Returns:
        summary dict with `counts` (users, items, interactions per dataset), `datasets` and
        `skipped_sizes`.

    Raises:
        EtlError: no size, or a size exceeds the pool (unless `skip_too_big`).
    """
    sizes = sorted(set(sizes))
    if not sizes and whole is None:
        raise EtlError("no dataset size given; pass --sizes such as 100K,1M")
    parts = sorted((work_dir / "pool").glob("part-*.parquet"))
    histograms = engine.map(
        _bucket_counts_task, [_CountTask(str(p), seed) for p in parts], desc="count users"
    )
    per_bucket = np.sum(histograms, axis=0) if histograms else np.zeros(1, np.int64)
    total = int(per_bucket.sum())
    skipped = []
    if skip_too_big:
        skipped = [
            {"dataset": f"{prefix}-{size_label(s)}", "size": s, "pool_interactions": total}
            for s in sizes
            if s > total
        ]
        sizes = [s for s in sizes if s <= total]
    too_big = [s for s in sizes if s > total]
    if too_big:
        raise EtlError(
            f"dataset size {size_label(too_big[0])} exceeds the pre-training pool of {total} "
            "interactions; pass smaller --sizes"
        )
    names = [f"{prefix}-{size_label(s)}" for s in sizes]
    if whole is not None:
        if total == 0:
            raise EtlError(f"no interaction left to write {whole}; check the raw files")
        sizes.append(total)  # every user: the largest set, so the others are its prefixes
        names.append(whole)
    if not sizes:
        return {"counts": [], "datasets": [], "skipped_sizes": skipped}
    # The users in key order up to the largest size lie in the buckets up to the first one
    # where the interactions counted so far reach that size.
    last_bucket = int(np.searchsorted(np.cumsum(per_bucket), sizes[-1], side="left"))
    per_part = engine.map(
        _candidates_task,
        [_CandidateTask(str(p), seed, last_bucket) for p in parts],
        desc="choose users",
    )
    users = pa.concat_arrays([u for u, _ in per_part]) if per_part else pa.array([], pa.string())
    counts = np.concatenate([c for _, c in per_part]) if per_part else np.zeros(0, np.int64)
    part_of_user = np.repeat(np.arange(len(per_part)), [len(c) for _, c in per_part])
    perm, n_users = choose_users(users, counts, sizes, seed)
    selected = perm[: n_users[-1]]  # the largest set; smaller ones are its prefixes
    rank = np.empty(len(users), dtype=np.int64)
    rank[selected] = np.arange(len(selected))
    tasks = []
    for p, path in enumerate(parts):
        mine = selected[part_of_user[selected] == p]
        tasks.append(_SelectTask(str(path), users.take(pa.array(mine)), rank[mine]))
    rows = engine.map(
        _select_task,
        tasks,
        desc="select users",
    )
    table = pa.concat_tables(rows)
    order = np.lexsort(
        (
            table.column("order").to_numpy(),
            table.column("timestamp").to_numpy(),
            table.column("rank").to_numpy(),
        )
    )
    table = table.take(pa.array(order))
    row_ends = np.cumsum(counts[selected])  # rows of the first k users = row_ends[k-1]
    summary_counts, datasets = [], []
    for name, n in zip(names, n_users):
        inter = table.slice(0, int(row_ends[n - 1]))
        items = items_with_text(work_dir / "items.parquet", pc.unique(inter.column("item")))
        with staging_dir(out_dir / name) as tmp:
            write_inter(tmp / f"{name}.inter", inter, millis=millis)
            write_item(tmp / f"{name}.item", items)
        summary_counts.append(
            {
                "stage": f"{name}",
                "users": n,
                "items": items.num_rows,
                "interactions": inter.num_rows,
            }
        )
        datasets.append(name)
    return {"counts": summary_counts, "datasets": datasets, "skipped_sizes": skipped}


def items_with_text(items_path: Path, asins: pa.Array) -> pa.Table:
    """`lookup_items`, plus a row of empty text for each asin that `items.parquet` lacks
    (none in an Amazon pool, whose items all have text; a MovieLens movie may have none)."""
    known = lookup_items(items_path, asins)
    missing = pc.filter(asins, pc.invert(pc.is_in(asins, value_set=known.column("asin"))))
    if not len(missing):
        return known
    empty = {
        f.name: missing
        if f.name == "asin"
        else pa.nulls(len(missing), f.type).fill_null(False if f.type == pa.bool_() else "")
        for f in known.schema
    }
    table = pa.concat_tables([known, pa.table(empty, schema=known.schema)])
    return table.take(pc.sort_indices(table, sort_keys=[("asin", "ascending")]))
