"""De-duplication and history order, and step `post_process_ratings` (the pre-training pool).

Filters, in order, each counted: (user, item) duplicates -> items without usable metadata
-> users of the Beauty/Sports 5-core files -> users with fewer than 5 ratings.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from etl.engine import DEFAULT_ENGINE, Engine
from etl.hashing import stable_hash64
from etl.manifest import staging_dir
from etl.readers import RATINGS_SCHEMA

MIN_USER_RATINGS = 5


def _sorted_codes(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Integer codes of a string column whose order is the strings' order (int64 [N])."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    encoded = pc.dictionary_encode(column)
    dictionary_rank = np.empty(len(encoded.dictionary), dtype=np.int64)
    dictionary_rank[pc.array_sort_indices(encoded.dictionary).to_numpy()] = np.arange(
        len(encoded.dictionary)
    )
    return dictionary_rank[encoded.indices.to_numpy(zero_copy_only=False)]


def dedup_and_order(table: pa.Table) -> tuple[pa.Table, int]:
    """Keep the earliest row of each (user, item) pair and order each user's history.

    Earliest = smallest timestamp, ties broken by input order (`order`). Rows come out
    grouped by user (users in string order), each history by (timestamp, input order): a
    stable sort, so ties keep the order of the input file.

    Args:
        table: columns user, item, rating, timestamp, order.

    Returns:
        (the de-duplicated, ordered table, the number of duplicate rows dropped).
    """
    if table.num_rows == 0:
        return table, 0
    user = _sorted_codes(table.column("user"))  # [N]
    item = _sorted_codes(table.column("item"))  # [N]
    ts = table.column("timestamp").to_numpy()
    order = table.column("order").to_numpy()
    perm = np.lexsort((order, ts, item, user))  # pairs together, earliest first
    first = np.ones(len(perm), dtype=bool)
    first[1:] = (user[perm][1:] != user[perm][:-1]) | (item[perm][1:] != item[perm][:-1])
    kept = perm[first]
    kept = kept[np.lexsort((order[kept], ts[kept], user[kept]))]  # history order per user
    return table.take(pa.array(kept)), int(len(perm) - len(kept))


def _stage(table: pa.Table) -> tuple[int, int, np.ndarray]:
    """(rows, distinct users, distinct item hashes) of a table, for the counting table."""
    users = pc.count_distinct(table.column("user")).as_py() if table.num_rows else 0
    items = (
        np.unique(stable_hash64(table.column("item"))) if table.num_rows else np.zeros(0, np.uint64)
    )
    return table.num_rows, users, items


@dataclass(frozen=True)
class _PoolTask:
    part_dir: str
    items_path: str
    excluded_users: pa.Array
    out_path: str
    keep_all: bool = False  # MovieLens: only (user, item) duplicates go
    hash_dir: str = ""  # where the part's distinct item hashes per stage go (.npy)


STAGES = (
    "ratings after bad rows",
    "after de-duplicating (user, item)",
    "after dropping items without metadata",
    "after removing Beauty/Sports users",
    f"after keeping users with >= {MIN_USER_RATINGS} ratings",
)


def _pool_task(task: _PoolTask) -> list[tuple[int, int, np.ndarray]]:
    files = sorted(Path(task.part_dir).glob("*.parquet"))
    tables = [pq.read_table(f) for f in files]
    table = pa.concat_tables(tables) if tables else RATINGS_SCHEMA.empty_table()
    stages = [_stage(table)]
    table, _ = dedup_and_order(table)
    stages.append(_stage(table))
    if task.keep_all:
        pq.write_table(table, task.out_path)
        return _spill(stages, task)
    # Look up only this part's items, scanning items.parquet batch by batch: a worker never
    # holds the whole catalog (15M asins on the full data).
    part_items = pc.unique(table.column("item"))
    usable = ds.dataset(task.items_path, format="parquet").to_table(
        columns=["asin"], filter=pc.field("asin").isin(part_items) & pc.field("usable")
    )
    table = table.filter(pc.is_in(table.column("item"), value_set=usable.column("asin")))
    stages.append(_stage(table))
    if len(task.excluded_users):
        table = table.filter(
            pc.invert(pc.is_in(table.column("user"), value_set=task.excluded_users))
        )
    stages.append(_stage(table))
    if table.num_rows:
        # Rows are grouped by user: run lengths give each row's user count.
        user = _sorted_codes(table.column("user"))
        counts = np.bincount(user)
        table = table.filter(pa.array(counts[user] >= MIN_USER_RATINGS))
    stages.append(_stage(table))
    pq.write_table(table, task.out_path)
    return _spill(stages, task)


def _spill(stages: list[tuple[int, int, np.ndarray]], task: _PoolTask) -> list[tuple[int, int]]:
    """Write each stage's sorted distinct item hashes to `hash_dir`; return (rows, users).

    The parent counts distinct items over all parts from these files, range by range, instead
    of receiving every part's hashes (parts x catalog: 2 GB at 80M ratings in 49 parts).
    """
    name = Path(task.out_path).stem
    for i, (_, _, items) in enumerate(stages):
        np.save(Path(task.hash_dir) / f"{name}.stage{i}.npy", items)
    return [(rows, users) for rows, users, _ in stages]


HASH_RANGES = 64  # the parent holds about 1/64 of all parts' item hashes at a time


def count_distinct_hashes(files: list[Path]) -> int:
    """Distinct values over sorted, distinct uint64 arrays saved in `files` (.npy).

    The files are memory-mapped and merged one range of hash values at a time.
    """
    arrays = [np.load(f, mmap_mode="r") for f in files]
    bounds = [np.uint64(0)] + [np.uint64(k << 58) for k in range(1, HASH_RANGES)]
    total = 0
    for lo_i, lo in enumerate(bounds):
        hi = bounds[lo_i + 1] if lo_i + 1 < len(bounds) else None
        pieces = []
        for a in arrays:
            start = int(np.searchsorted(a, lo, side="left"))
            end = len(a) if hi is None else int(np.searchsorted(a, hi, side="left"))
            pieces.append(np.asarray(a[start:end]))
        if pieces:
            total += len(np.unique(np.concatenate(pieces)))
    return total


def post_process_ratings(
    work_dir: Path,
    excluded_users: pa.Array,
    *,
    engine: Engine = DEFAULT_ENGINE,
    keep_all: bool = False,
) -> dict:
    """Build the pre-training pool `work_dir/pool/part-*.parquet` from the ratings parts.

    Args:
        work_dir: holds `ratings/part-*` (partition step) and `items.parquet` (tokenise step).
        excluded_users: reviewerIDs of the fine-tuning 5-core files (string array).
        keep_all: keep every rating but a repeated (user, item) pair's later ones, with or
            without item text (MovieLens); else the Amazon filters of the module docstring.

    Returns:
        summary dict with `counts`: rows, users and items after every filter.
    """
    part_dirs = sorted((work_dir / "ratings").glob("part-*"))
    stages = STAGES[:2] if keep_all else STAGES
    counts = []
    with (
        tempfile.TemporaryDirectory(prefix=".items.", suffix=".tmp", dir=work_dir) as hashes,
        staging_dir(work_dir / "pool") as tmp,
    ):
        tasks = [
            _PoolTask(
                str(d),
                str(work_dir / "items.parquet"),
                excluded_users,
                str(tmp / f"{d.name}.parquet"),
                keep_all,
                hashes,
            )
            for d in part_dirs
        ]
        results = engine.map(
            _pool_task,
            tasks,
            desc="post-process ratings",
        )
        for i, stage in enumerate(stages):
            rows = sum(r[i][0] for r in results)
            users = sum(r[i][1] for r in results)  # users never span parts
            files = sorted(Path(hashes).glob(f"*.stage{i}.npy"))
            items = count_distinct_hashes(files)
            counts.append({"stage": stage, "users": users, "items": items, "interactions": rows})
    return {"counts": counts, "excluded_users": len(excluded_users)}
