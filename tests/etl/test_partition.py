"""The partition step: parts by user hash in file order, whatever the chunking, workers or part count."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from etl.engine import Engine
from etl.hashing import partition_of
from etl.partition import partition_big_files

# One line of each kind of bad row, and how it is counted.
BAD_LINES = {
    b'I1,"U1,5.0,1': "bad_id",
    b"I2,U\t2,5.0,1": "bad_id",
    b",U3,5.0,1": "missing_field",
    b"I4,U4,abc,1": "bad_rating",
    b"I5,U5,5.0,1.5": "bad_timestamp",
    b"I6,U6,5.0": "wrong_column_count",
    b"I7,U\xff7,5.0,1": "non_utf8",
    b"I8,U8, 5.0,1": "bad_rating",
    b"I9,U9,5.0,99999999999999999999": "bad_timestamp",
}


def _raw(tmp_path: Path) -> tuple[Path, list[tuple[str, str, float, int]]]:
    """RAW with 600 good ratings (user ids of 2 to 21 characters), the bad lines among them."""
    good = [
        (f"B{i % 53:09d}", "A" * (1 + i % 20) + str(i % 7), float(1 + i % 5), i) for i in range(600)
    ]
    bad = list(BAD_LINES)
    lines = []
    for i, (item, user, rating, ts) in enumerate(good):
        lines.append(f"{item},{user},{rating},{ts}".encode())
        if i % 50 == 49 and bad:
            lines.append(bad.pop())
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "all_csv_files.csv").write_bytes(b"\n".join(lines) + b"\n")
    (raw / "All_Amazon_Meta.json").write_text(json.dumps({"asin": "B000000001"}) + "\n")
    return raw, good


def _parts(work: Path) -> list[list[dict]]:
    """Each part's rows in the order its pieces are read back, without `order`."""
    out = []
    for part in sorted((work / "ratings").glob("part-*")):
        tables = [pq.read_table(f) for f in sorted(part.glob("*.parquet"))]
        table = pa.concat_tables(tables) if tables else None
        if table is not None:
            order = table.column("order").to_pylist()
            assert order == sorted(order)  # file order inside a part
        out.append([] if table is None else table.drop_columns(["order"]).to_pylist())
    return out


@pytest.mark.parametrize(("chunk_bytes", "workers"), [(1 << 20, 1), (700, 1), (64, 2), (3000, 2)])
def test_parts_same_whatever_the_chunking(tmp_path: Path, chunk_bytes: int, workers: int) -> None:
    raw, good = _raw(tmp_path)
    summary = partition_big_files(
        raw,
        tmp_path / "w",
        n_parts=4,
        chunk_bytes=chunk_bytes,
        engine=Engine(workers=workers, progress=False),
    )
    users = pa.array([u for _, u, _, _ in good])
    expected: list[list[dict]] = [[] for _ in range(4)]
    for (item, user, rating, ts), p in zip(good, partition_of(users, 4)):
        expected[p].append({"user": user, "item": item, "rating": rating, "timestamp": ts})
    assert _parts(tmp_path / "w") == expected
    counts: dict[str, int] = {}
    for reason in BAD_LINES.values():
        counts[reason] = counts.get(reason, 0) + 1
    assert summary["bad_rows"]["all_csv_files.csv"] == dict(sorted(counts.items()))
    assert summary["counts"][0]["interactions"] == len(good)


def test_one_part_holds_everything_in_file_order(tmp_path: Path) -> None:
    raw, good = _raw(tmp_path)
    partition_big_files(
        raw, tmp_path / "w", n_parts=1, chunk_bytes=500, engine=Engine(progress=False)
    )
    (rows,) = _parts(tmp_path / "w")
    assert [(r["item"], r["user"], r["rating"], r["timestamp"]) for r in rows] == good


def test_balanced_chunk_bytes_gives_every_worker_enough_chunks(tmp_path):
    from etl.partition import MIN_CHUNK_BYTES, balanced_chunk_bytes

    big = tmp_path / "all_csv_files.csv"
    with open(big, "wb") as f:
        f.truncate(800 << 20)  # sparse: 800 MB on paper, nothing on disk
    cap = 64 << 20
    assert balanced_chunk_bytes([big], cap, 1) == cap  # one worker: the cap (13 chunks)
    # Two workers: 800 MB / (8 x 2) = 50 MB, so 16 chunks, 8 per worker.
    assert balanced_chunk_bytes([big], cap, 2) == 50 << 20
    assert balanced_chunk_bytes([big], cap, 64) == MIN_CHUNK_BYTES  # never below the floor
    small = tmp_path / "small.csv"
    small.write_bytes(b"i,u,5,1\n" * 10)
    assert balanced_chunk_bytes([small], cap, 2) == MIN_CHUNK_BYTES
