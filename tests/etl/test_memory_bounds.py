"""The memory bounds change how the steps hold data, never what they write."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import etl.metadata
import etl.scaling
from etl import synthetic
from etl.engine import Engine
from etl.hashing import sample_keys
from etl.metadata import first_per_key, load_metadata, load_metadata_sample, training_sentences
from etl.pipeline import EtlOptions, run_pipeline

QUIET = Engine(progress=False)


def _outputs(out: Path) -> dict[str, str]:
    files = sorted(out.glob("amazon-*/*")) + sorted((out / "sentencepiece").glob("*"))
    return {str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _items(path: Path) -> list[dict]:
    table = pq.read_table(path)
    return table.take(pc.sort_indices(table, sort_keys=[("asin", "ascending")])).to_pylist()


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("raw")
    synthetic.generate(path, 6_000, seed=11, finetune_users=200)  # 100 leaves Sports empty
    return path


def test_buckets_and_parts_change_nothing_written(
    raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = EtlOptions(raw, tmp_path / "a", sizes=(2_000, 4_000), engine=QUIET, vocab_size=300)
    run_pipeline("all", base)
    # Tokenised items in buckets of 1,000 records, users chosen from 4 key buckets, and
    # parts of 5 KB of input (a part count from the input size).
    monkeypatch.setattr(etl.metadata, "RECORDS_PER_BUCKET", 1_000)
    monkeypatch.setattr(etl.scaling, "KEY_BUCKET_BITS", 2)
    monkeypatch.setattr("etl.pipeline.DEFAULT_PART_BYTES", 5_000)
    monkeypatch.setattr("etl.pipeline.MIN_PART_BYTES", 1)
    small = EtlOptions(raw, tmp_path / "b", sizes=(2_000, 4_000), engine=QUIET, vocab_size=300)
    results = run_pipeline("all", small)
    assert results[1].manifest["partitions"] > 16
    assert _outputs(tmp_path / "a") == _outputs(tmp_path / "b")
    items_a = _items(tmp_path / "a" / "work" / "items.parquet")
    assert items_a == _items(tmp_path / "b" / "work" / "items.parquet")
    assert len(items_a) == results[3].manifest["counts"][0]["items"]


def test_sentencepiece_sample_equals_the_whole_catalog_choice(raw: Path, tmp_path: Path) -> None:
    opts = EtlOptions(raw, tmp_path / "out", engine=QUIET)
    run_pipeline("partition_big_files", opts)
    whole = load_metadata(opts.work_dir)
    for max_items in (10, 500, 10**9):
        sample, n = load_metadata_sample(opts.work_dir, max_items, seed=3)
        assert n == whole.num_rows
        assert training_sentences(sample, max_items, 3) == training_sentences(whole, max_items, 3)
    keys = sample_keys(whole.column("asin"), 3)
    chosen = np.sort(np.argsort(keys, kind="stable")[:10])
    sample, _ = load_metadata_sample(opts.work_dir, 10, seed=3)
    assert (
        sample.column("asin").to_pylist() == whole.take(pa.array(chosen)).column("asin").to_pylist()
    )
    assert first_per_key(sample, "asin").num_rows == 10


def test_distinct_hashes_counted_range_by_range(tmp_path: Path) -> None:
    from etl.ratings import count_distinct_hashes

    rng = np.random.default_rng(0)
    values = rng.integers(0, 2**64 - 1, size=5_000, dtype=np.uint64)
    values[:10] = [0, 1, 2**58 - 1, 2**58, 2**63, 2**64 - 1, 5, 5, 2**58, 0]  # range edges
    files = []
    for k, part in enumerate(np.array_split(np.concatenate([values, values[::3]]), 7)):
        files.append(tmp_path / f"p{k}.npy")
        np.save(files[-1], np.unique(part))
    np.save(tmp_path / "empty.npy", np.zeros(0, np.uint64))
    assert count_distinct_hashes([*files, tmp_path / "empty.npy"]) == len(np.unique(values))
    assert count_distinct_hashes([]) == 0
