"""The raw file table: one home for the names, used by readers, downloader and generators."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from etl import synthetic
from etl.finetune import finetune_inputs, finetune_reviews_missing
from etl.partition import metadata_sources, ratings_sources
from etl.raw_files import (
    CONTAINER_FORMATS,
    FORMATS,
    RAW_FILES,
    RELEASES,
    ROLES,
    RawFile,
    _check,
    download_selection,
    finetune_set,
    finetune_sets,
    the_file,
)
from etl.readers import PARSERS, BadRows


def test_every_format_has_a_parser() -> None:
    assert set(PARSERS) == set(FORMATS) - set(CONTAINER_FORMATS)
    # Parsers of the new sources live in their modules, imported on first use.
    assert PARSERS["ml_dat_ratings"](b"1::2::5::9\n", "r", BadRows()).num_rows == 1
    for entry in RAW_FILES.values():
        assert entry.format in FORMATS


def test_the_table() -> None:
    study = [f for f in RAW_FILES.values() if f.release in ("amazon-2018", "amazon-2014")]
    assert [(f.name, f.release, f.format, f.role, f.dataset) for f in study] == [
        ("all_csv_files.csv", "amazon-2018", "ratings_csv", "ratings", None),
        ("All_Amazon_Meta.json.gz", "amazon-2018", "meta_json", "metadata", None),
        (
            "reviews_Beauty_5.json.gz",
            "amazon-2014",
            "reviews_json",
            "finetune_reviews",
            "amazon-beauty",
        ),
        (
            "reviews_Sports_and_Outdoors_5.json.gz",
            "amazon-2014",
            "reviews_json",
            "finetune_reviews",
            "amazon-sports",
        ),
        ("meta_Beauty.json.gz", "amazon-2014", "meta_literal", "finetune_meta", "amazon-beauty"),
        (
            "meta_Sports_and_Outdoors.json.gz",
            "amazon-2014",
            "meta_literal",
            "finetune_meta",
            "amazon-sports",
        ),
    ]
    assert the_file("metadata", "amazon-2018").stem == "All_Amazon_Meta.json"
    assert RAW_FILES["reviews_Beauty_5.json.gz"].read_by == (
        "post_process_ratings",
        "build_beauty_and_sports_datasets",
    )
    assert RAW_FILES["all_csv_files.csv"].url == (
        RELEASES["amazon-2018"].base_url + "categoryFilesSmall/all_csv_files.csv"
    )
    sets = [(s.dataset, s.reviews.name, s.meta and s.meta.name) for s in finetune_sets()]
    assert sets == [
        ("amazon-beauty", "reviews_Beauty_5.json.gz", "meta_Beauty.json.gz"),
        (
            "amazon-sports",
            "reviews_Sports_and_Outdoors_5.json.gz",
            "meta_Sports_and_Outdoors.json.gz",
        ),
    ]
    with pytest.raises(LookupError, match="no fine-tuning set amazon-toys"):
        finetune_set("amazon-toys")
    with pytest.raises(LookupError, match="0 raw files of role ratings in release amazon-2014"):
        the_file("ratings", "amazon-2014")


def test_a_bad_entry_is_refused() -> None:
    good = RAW_FILES["all_csv_files.csv"]
    with pytest.raises(ValueError, match="listed twice"):
        _check([good, good])
    with pytest.raises(ValueError, match="unknown release, format or role"):
        _check([RawFile("x.csv", "amazon-2018", "xml", "ratings", None)])
    with pytest.raises(ValueError, match="needs its dataset"):
        _check([RawFile("x.json", "amazon-2014", "reviews_json", "finetune_reviews", None)])
    assert set(ROLES) >= {f.role for f in RAW_FILES.values()}


def test_generator_writes_the_table_and_the_readers_find_it(tmp_path: Path) -> None:
    synthetic.generate(tmp_path, 500, seed=3, finetune_users=30)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        download_selection("amazon", "2018")
    )
    assert ratings_sources(tmp_path) == ("csv", [tmp_path / "all_csv_files.csv"])
    assert metadata_sources(tmp_path) == [tmp_path / "All_Amazon_Meta.json.gz"]
    assert [p.name for p in finetune_inputs(tmp_path)] == [
        "reviews_Beauty_5.json.gz",
        "meta_Beauty.json.gz",
        "reviews_Sports_and_Outdoors_5.json.gz",
        "meta_Sports_and_Outdoors.json.gz",
    ]
    (tmp_path / "reviews_Beauty_5.json.gz").unlink()
    assert finetune_reviews_missing(tmp_path) == ["reviews_Beauty_5.json.gz"]


def test_the_table_loads_without_pyarrow() -> None:
    """scripts/demo.py reads the table in its parent process: no heavy import."""
    code = "import sys, etl.raw_files; print('pyarrow' in sys.modules, 'numpy' in sys.modules)"
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False"]
