"""Step `build_benchmark_datasets`: the official Amazon 2023 splits as whole atomic datasets.

Each set found under `RAW/benchmark` (see `etl.amazon2023.find_benchmark_sets`) becomes
`OUT/<name>/<name>.{inter,item}` holding every good row of its train, valid and test files:

1. the three files are read chunk by chunk (file order: train, valid, test) and their rows
   split by a range of the user-id hash into parts, so each user lives in one part;
2. each part, in parallel, keeps the earliest row of a repeated (user, item) pair (counted
   as `duplicate`; the release has none), orders each user's rows by (timestamp, file,
   row in file) and checks them: the split rule applied to that order must give back the
   file each row came from (`split_mismatch`), and in `_w_his` files the history column
   must list exactly the rows before it (`history_mismatch`); rows are kept either way;
3. the parts' rows are appended in part order: users ordered by (hash of the id, id), the
   same bytes whatever the number of parts or workers.

Memory per worker is bounded by the part size (`part_bytes` of input per part).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from etl.amazon2023 import (
    DUPLICATE,
    TEST_CUT_MS,
    VALID_CUT_MS,
    BenchmarkSet,
    benchmark_parser,
    copy_into,
    input_bytes,
    parts_for,
    range_part,
    seconds_text,
)
from etl.atomic_files import INTER_HEADER, write_item
from etl.engine import DEFAULT_ENGINE, Engine
from etl.hashing import stable_hash64
from etl.manifest import staging_dir
from etl.partition import _parse, _Work, count_work, iter_work
from etl.ratings import dedup_and_order
from etl.readers import CHUNK_BYTES, BadRows
from etl.scaling import items_with_text, lookup_items

PART_BYTES = 256 << 20  # input bytes per part (about 3.5M rows of a file without history)
_WRITE_ROWS = 1 << 20


@dataclass(frozen=True)
class _SplitTask:
    work: _Work
    history: bool
    file_index: int  # 0 train, 1 valid, 2 test
    n_parts: int
    out_dir: str


def _split_task(task: _SplitTask) -> tuple[int, BadRows]:
    bad = BadRows()
    table = _parse(task.work, benchmark_parser(task.history), bad)
    if table.num_rows == 0:
        return 0, bad
    hashes = stable_hash64(table.column("user"))  # [N]
    table = table.append_column("hash", pa.array(hashes, pa.uint64()))
    table = table.append_column(
        "file", pa.array(np.full(table.num_rows, task.file_index, np.int8), pa.int8())
    )
    part = range_part(hashes, task.n_parts)
    perm = np.argsort(part, kind="stable")
    table = table.take(pa.array(perm))
    bounds = np.searchsorted(part[perm], np.arange(task.n_parts + 1))
    for p in range(task.n_parts):
        lo, hi = int(bounds[p]), int(bounds[p + 1])
        if hi > lo:
            path = Path(task.out_dir) / f"part-{p:04d}" / f"chunk-{task.work.index:06d}.parquet"
            pq.write_table(table.slice(lo, hi - lo), path, compression="none")
    return table.num_rows, bad


@dataclass(frozen=True)
class _PartTask:
    part_dir: str
    split: str  # "last_out" or "timestamp"
    history: bool
    out_path: str


def _checks(table: pa.Table, split: str, history: bool) -> tuple[int, int, int]:
    """(users, split mismatches, history mismatches) of rows grouped by user in final order."""
    n = table.num_rows
    user = table.column("user").combine_chunks()
    same = np.zeros(n, dtype=bool)
    if n > 1:
        same[1:] = pc.equal(user.slice(1), user.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(~same)  # first row of each user
    user_of = np.cumsum(~same) - 1  # [N]
    pos = np.arange(n) - starts[user_of]
    size = np.diff(np.append(starts, n))[user_of]
    file = table.column("file").to_numpy()
    if split == "last_out":
        expected = np.where(pos == size - 1, 2, np.where(pos == size - 2, 1, 0))
    else:
        ts = table.column("timestamp").to_numpy()
        expected = np.where(ts >= TEST_CUT_MS, 2, np.where(ts >= VALID_CUT_MS, 1, 0))
    split_bad = int((file != expected).sum())
    his_bad = 0
    if history and n:
        item = table.column("item").combine_chunks()
        previous = pa.concat_arrays([pa.array([""], pa.string()), item.slice(0, n - 1)])
        previous = pc.if_else(pa.array(pos == 0), "", previous)
        ok = pc.and_(
            pc.equal(table.column("his_len"), pa.array(pos, pa.int64())),
            pc.equal(table.column("his_last"), previous),
        )
        his_bad = int(n - pc.sum(pc.cast(ok, pa.int64())).as_py())
    return len(starts), split_bad, his_bad


def _write_rows(path: Path, table: pa.Table) -> None:
    """user, item, rating, timestamp (seconds, 3 decimals) lines without header."""
    with open(path, "wb") as f:
        for start in range(0, table.num_rows, _WRITE_ROWS):
            batch = table.slice(start, _WRITE_ROWS)
            lines = pc.binary_join_element_wise(
                batch.column("user"),
                batch.column("item"),
                pc.cast(batch.column("rating"), pa.string()),
                seconds_text(batch.column("timestamp")),
                "\t",
            )
            f.write(("\n".join(lines.to_pylist()) + "\n").encode())


def _part_task(task: _PartTask) -> dict[str, Any]:
    files = sorted(Path(task.part_dir).glob("*.parquet"))
    out: dict[str, Any] = {
        "rows_in": 0, "rows": 0, "duplicates": 0, "users": 0, "split_mismatch": 0,
        "history_mismatch": 0, "items": pa.array([], pa.string()),
    }  # fmt: skip
    if not files:
        Path(task.out_path).write_bytes(b"")
        return out
    table = pa.concat_tables([pq.read_table(f) for f in files])
    out["rows_in"] = table.num_rows
    # Pairs keep their earliest row; users come out in id order, rows by (timestamp, order),
    # and `order` grows with the file (train, valid, test) and the row in it.
    table, out["duplicates"] = dedup_and_order(table)
    # Users by (hash, id): a stable sort by hash keeps the id order among equal hashes.
    table = table.take(pa.array(np.argsort(table.column("hash").to_numpy(), kind="stable")))
    out["users"], out["split_mismatch"], out["history_mismatch"] = _checks(
        table, task.split, task.history
    )
    out["rows"] = table.num_rows
    out["items"] = pc.unique(table.column("item"))
    _write_rows(Path(task.out_path), table)
    return out


def build_one(
    bench: BenchmarkSet,
    items_path: Path,
    out_dir: Path,
    work_dir: Path,
    *,
    part_bytes: int = PART_BYTES,
    chunk_bytes: int = CHUNK_BYTES,
    engine: Engine = DEFAULT_ENGINE,
) -> dict:
    """Write `out_dir/<bench.name>/` from one official split (see the module docstring).

    Args:
        items_path: tokenised items (`items.parquet` of step tokenize_metadata); an item
            without metadata gets empty text, and no row is dropped for it.
        work_dir: scratch space for the parts (removed afterwards).
        part_bytes: input bytes per part: bounds the memory of each worker.

    Returns:
        summary dict: counts, bad rows, duplicates, users, split and history mismatches.

    Raises:
        EtlError: a file is unreadable or a truncated gzip (nothing is published).
    """
    files = list(bench.files)
    labels = [p.name for p in files]
    n_parts = parts_for(input_bytes(files), part_bytes)
    name = bench.name
    bad = BadRows()
    work_dir.mkdir(parents=True, exist_ok=True)
    # Scratch parts are no output: a temporary folder (`.tmp`, so a killed run's is removed).
    with tempfile.TemporaryDirectory(prefix=f".bench-{name}.", suffix=".tmp", dir=work_dir) as tmp:
        scratch = Path(tmp)
        for p in range(n_parts):
            (scratch / f"part-{p:04d}").mkdir()
        tasks = (
            _SplitTask(w, bench.history, labels.index(w.label), n_parts, str(scratch))
            for w in iter_work(files, chunk_bytes)
        )
        results = engine.map(
            _split_task, tasks, desc=f"read {name}", total=count_work(files, chunk_bytes)
        )
        rows_read = sum(n for n, _ in results)
        for _, b in results:
            bad.merge(b)
        part_tasks = [
            _PartTask(str(scratch / f"part-{p:04d}"), bench.split, bench.history,
                      str(scratch / f"rows-{p:04d}.tsv"))
            for p in range(n_parts)
        ]  # fmt: skip
        parts = engine.map(_part_task, part_tasks, desc=f"order {name}")
        items = pc.unique(pa.concat_arrays([r["items"] for r in parts]))
        items = items.take(pc.array_sort_indices(items))
        item_table = items_with_text(items_path, items)
        n_known = lookup_items(items_path, items).num_rows
        with staging_dir(out_dir / name) as final:
            with open(final / f"{name}.inter", "wb") as f:
                f.write(("\t".join(INTER_HEADER) + "\n").encode())
                for task in part_tasks:
                    copy_into(f, Path(task.out_path))
            write_item(final / f"{name}.item", item_table)
    total = {k: sum(r[k] for r in parts) for k in ("rows_in", "rows", "duplicates", "users")}
    bad.add(name, DUPLICATE, total["duplicates"])
    return {
        "name": name,
        "files": [str(p) for p in files],
        "history_column": bench.history,
        "parts": n_parts,
        "counts": [
            {
                "stage": f"{name}: rows read",
                "users": None,
                "items": None,
                "interactions": rows_read,
            },
            {
                "stage": f"{name}: after de-duplicating",
                "users": total["users"],
                "items": len(items),
                "interactions": total["rows"],
            },
        ],  # fmt: skip
        "duplicates": total["duplicates"],
        "split_mismatch": sum(r["split_mismatch"] for r in parts),
        "history_mismatch": sum(r["history_mismatch"] for r in parts),
        "items_without_metadata": len(items) - n_known,
        "bad_rows": bad.as_dict(),
    }


def build_benchmark_datasets(
    sets: list[BenchmarkSet], items_path: Path, out_dir: Path, work_dir: Path, **kwargs: Any
) -> dict:
    """Build every official set in `sets` (see `build_one` for the arguments).

    Returns:
        summary dict: `counts`, `bad_rows`, `datasets`, and per dataset its checks.
    """
    summary: dict[str, Any] = {"counts": [], "bad_rows": {}, "datasets": [], "checks": {}}
    for bench in sets:
        one = build_one(bench, items_path, out_dir, work_dir, **kwargs)
        summary["counts"] += one["counts"]
        BadRows(summary["bad_rows"]).merge(BadRows(one["bad_rows"]))
        summary["datasets"].append(one["name"])
        summary["checks"][one["name"]] = {
            k: one[k]
            for k in ("duplicates", "split_mismatch", "history_mismatch",
                      "items_without_metadata", "parts", "history_column")
        }  # fmt: skip
    return summary
