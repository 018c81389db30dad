"""The standard Beauty benchmark rebuilt from `seqrec_reference` through the fine-tuning step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from etl.engine import Engine
from etl.pipeline import EtlOptions, run_step
from etl.reference import reference_sequences, write_beauty_2014_from_reference


@pytest.mark.slow
def test_beauty_matches_the_benchmark(shared_data: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    paths = write_beauty_2014_from_reference(shared_data, raw)
    assert sorted(p.name for p in paths.values()) == [
        "meta_Beauty.json.gz",
        "reviews_Beauty_5.json.gz",
    ]
    # A tiny 2018 catalog so the earlier steps (SentencePiece, items) have something to read.
    (raw / "all_csv_files.csv").write_text(
        "".join(f"I{i % 7},U{i % 3},5.0,{i}\n" for i in range(30))
    )
    (raw / "All_Amazon_Meta.json").write_text(
        "".join(
            json.dumps({"asin": f"I{i}", "title": f"hair shampoo {i}", "brand": "acme"}) + "\n"
            for i in range(7)
        )
    )
    opts = EtlOptions(
        raw_dir=raw,
        out_dir=tmp_path / "out",
        sizes=(10,),
        vocab_size=40,
        engine=Engine(progress=False),
    )
    for step in ("partition_big_files", "train_sentence_piece", "tokenize_metadata"):
        run_step(step, opts)
    result = run_step("build_beauty_and_sports_datasets", opts)
    counts = result.manifest["counts"][-1]
    assert (counts["users"], counts["items"], counts["interactions"]) == (22_363, 12_101, 198_502)
    sequences: dict[str, list[str]] = {}
    lines = (opts.out_dir / "amazon-beauty" / "amazon-beauty.inter").read_text().splitlines()
    for line in lines[1:]:
        user, item, _, _ = line.split("\t")
        sequences.setdefault(user, []).append(item)
    assert sequences == reference_sequences(shared_data)
    item_lines = (opts.out_dir / "amazon-beauty" / "amazon-beauty.item").read_text().splitlines()
    assert len(item_lines) == 1 + 12_101
