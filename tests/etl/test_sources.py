"""`--source movielens` and `--release 2023` through every step, on handwritten raw files.

The expected atomic files are written out by hand: users in the order of their seeded
sampling key (seed 42: MovieLens users 2, 1, 3; Amazon users AU2, AU1, AU3, AU4), each
history by (timestamp, line in the file).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zipfile
from pathlib import Path

import pytest
from test_amazon2023 import EXPECTED_INTER, write_official  # tests/etl is on sys.path

from etl.cli import main
from etl.engine import Engine
from etl.errors import EtlError
from etl.pipeline import STEPS, EtlOptions, run_pipeline
from etl.synthetic_formats import generate_amazon2023, generate_movielens

QUIET = Engine(progress=False)


def read_atomic(path: Path) -> list[list[str]]:
    """An atomic file as rows of fields, header first."""
    return [line.split("\t") for line in path.read_text().splitlines()]


def decode_pieces(field: str) -> str:
    """SentencePiece pieces of a token_seq field back to the words they spell."""
    return "".join(field.split(" ")).replace("\u2581", " ").strip()


# ml-1m ratings.dat: user 1 has a tie (movies 10 and 30 at 978300760, file order kept) and
# a repeated movie 10 (the earliest rating stays); user 2 a tie (20, 40); two bad lines.
ML_RATINGS = (
    b"1::10::5::978300760\n"
    b"1::20::3::978300700\n"
    b"1::30::4::978300760\n"
    b"1::10::2::978300800\n"
    b"2::20::4::978298709\n"
    b"2::40::1::978298709\n"
    b"2::10::3::978299000\n"
    b"3::x::4::978301000\n"
    b"3::20::4\n"
    b"3::30::5::978301000\n"
)
ML_MOVIES = (
    b"10::Toy Story (1995)::Animation|Children's|Comedy\n"
    b"20::Mis\xe9rables, Les (1995)::Drama|Musical\n"
    b"30::Heat (1995)::Action|Crime|Thriller|Film-Noir\n"
    b"40::Sabrina (1995)::Comedy|Romance\n"
    b"50::Unrated Movie (1995)::Drama\n"
)
ML_INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "2\t20\t4\t978298709\n"
    "2\t40\t1\t978298709\n"
    "2\t10\t3\t978299000\n"
    "1\t20\t3\t978300700\n"
    "1\t10\t5\t978300760\n"
    "1\t30\t4\t978300760\n"
    "3\t30\t5\t978301000\n"
)


def _ml_raw(raw: Path, as_zip: bool) -> Path:
    raw.mkdir(parents=True)
    if as_zip:
        with zipfile.ZipFile(raw / "ml-1m.zip", "w") as zf:
            zf.writestr("ml-1m/ratings.dat", ML_RATINGS)
            zf.writestr("ml-1m/movies.dat", ML_MOVIES)
    else:
        (raw / "ml-1m").mkdir()
        (raw / "ml-1m" / "ratings.dat").write_bytes(ML_RATINGS)
        (raw / "ml-1m" / "movies.dat").write_bytes(ML_MOVIES)
    return raw


@pytest.mark.parametrize("as_zip", [True, False])
def test_movielens_release_whole_and_scaled(tmp_path: Path, as_zip: bool) -> None:
    raw = _ml_raw(tmp_path / "raw", as_zip)
    out = tmp_path / "out"
    opts = EtlOptions(raw, out, sizes=(3, 100), engine=QUIET, vocab_size=60, source="movielens")
    results = run_pipeline("all", opts)
    assert [r.status for r in results] == ["skipped"] + ["ran"] * (len(STEPS) - 1)
    assert (out / "ml-1m" / "ml-1m.inter").read_text() == ML_INTER
    # The first users in sampling order until 3 ratings: user 2 alone.
    assert (out / "ml-1m-3" / "ml-1m-3.inter").read_text() == "".join(ML_INTER.splitlines(True)[:4])
    assert not (out / "ml-1m-100").exists()
    scaling = results[STEPS.index("build_scaling_datasets")].manifest
    assert scaling["skipped_sizes"] == [
        {"dataset": "ml-1m-100", "size": 100, "pool_interactions": 7}
    ]
    item = read_atomic(out / "ml-1m" / "ml-1m.item")
    assert item[0] == [
        "item_id:token", "title:token_seq", "brand:token_seq", "category_l1:token",
        "category_l2:token", "category_l3:token", "genres:token_seq",
    ]  # fmt: skip
    assert [[r[0], decode_pieces(r[1]), *r[2:]] for r in item[1:]] == [
        ["10", "toy story 1995", "", "Animation", "Children's", "Comedy",
         "Animation Children's Comedy"],
        ["20", "misérables les 1995", "", "Drama", "Musical", "", "Drama Musical"],
        ["30", "heat 1995", "", "Action", "Crime", "Thriller", "Action Crime Thriller Film-Noir"],
        ["40", "sabrina 1995", "", "Comedy", "Romance", "", "Comedy Romance"],
    ]  # fmt: skip
    partition = results[STEPS.index("partition_big_files")].manifest
    label = "ml-1m.zip:ml-1m/ratings.dat" if as_zip else "ratings.dat"
    assert partition["bad_rows"] == {label: {"bad_id": 1, "wrong_column_count": 1}}
    pool = results[STEPS.index("post_process_ratings")].manifest["counts"]
    assert [c["interactions"] for c in pool] == [8, 7]  # the repeated (1, 10) goes
    assert results[STEPS.index("build_beauty_and_sports_datasets")].manifest["not_for"] == (
        "movielens ml-1m"
    )


def test_movielens_truncated_zip_publishes_nothing(tmp_path: Path, capsys) -> None:
    raw = _ml_raw(tmp_path / "raw", as_zip=True)
    data = (raw / "ml-1m.zip").read_bytes()
    (raw / "ml-1m.zip").write_bytes(data[: len(data) - 30])
    code = main(["--step", "all", "--raw-dir", str(raw), "--out-dir", str(tmp_path / "out"),
                 "--source", "movielens", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.startswith("error: ") and "ml-1m.zip" in err and "\n" not in err
    assert not (tmp_path / "out" / "work" / "ratings").exists()
    assert not (tmp_path / "out" / "manifests" / "partition_big_files.json").exists()


def _review(user: str, item: str, rating: float, ts: int) -> str:
    return json.dumps({"rating": rating, "title": "t", "text": "x", "images": [], "asin": item,
                       "parent_asin": item, "user_id": user, "timestamp": ts,
                       "helpful_vote": 0, "verified_purchase": True})  # fmt: skip


def _meta(asin: str, title: str, store: str | None, cats: list[str]) -> str:
    return json.dumps({"main_category": "All Beauty", "title": title, "average_rating": 4.0,
                       "rating_number": 3, "features": ["Soft"], "description": [],
                       "price": None, "images": [], "videos": [], "store": store,
                       "categories": cats, "details": {}, "parent_asin": asin,
                       "bought_together": None})  # fmt: skip


T = 1_600_000_000_000
REVIEWS_2023 = [
    ("AU1", "P1", 5.0, T + 5),
    ("AU1", "P2", 4.0, T + 1),
    ("AU1", "P3", 3.0, T + 5),  # a tie with P1 to the millisecond: file order kept
    ("AU1", "P4", 2.0, T + 9),
    ("AU1", "P5", 1.0, T + 10),
    ("AU1", "P2", 5.0, T + 20),  # a repeated review: the earliest stays
    ("AU2", "P1", 5.0, T + 100),
    ("AU2", "P2", 5.0, T + 200),
    ("AU2", "P3", 5.0, T + 300),
    ("AU2", "P4", 5.0, T + 400),
    ("AU2", "PX", 5.0, T + 450),  # no metadata: dropped
    ("AU2", "P6", 5.0, T + 500),
    ("AU3", "P1", 4.0, T),  # 3 ratings: dropped (fewer than 5)
    ("AU3", "P2", 4.0, T),
    ("AU3", "P3", 4.0, T),
]
META_2023 = [
    _meta("P1", "Rose Shampoo", "Acme", ["Beauty", "Hair Care", "Shampoo", "Extra"]),
    _meta("P2", "Lip Balm", None, []),
    _meta("P3", "Face Cream", "Glow", ["Beauty"]),
    _meta("P4", "Nail Polish", "Acme", ["Beauty", "Nails"]),
    _meta("P5", "Hair Dryer", "Windy", ["Beauty", "Tools"]),
    _meta("P6", "Bath Salt", "Sea", ["Beauty", "Bath"]),
]
AMAZON_2023_INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "AU2\tP1\t5\t1600000000.100\n"
    "AU2\tP2\t5\t1600000000.200\n"
    "AU2\tP3\t5\t1600000000.300\n"
    "AU2\tP4\t5\t1600000000.400\n"
    "AU2\tP6\t5\t1600000000.500\n"
    "AU1\tP2\t4\t1600000000.001\n"
    "AU1\tP1\t5\t1600000000.005\n"
    "AU1\tP3\t3\t1600000000.005\n"
    "AU1\tP4\t2\t1600000000.009\n"
    "AU1\tP5\t1\t1600000000.010\n"
)


def _amazon_2023_raw(raw: Path) -> Path:
    raw.mkdir(parents=True)
    lines = [_review(*r) for r in REVIEWS_2023] + ['{"user_id": "AU9", "parent_as']
    (raw / "All_Beauty.jsonl.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    (raw / "meta_All_Beauty.jsonl").write_text("\n".join(META_2023) + "\n")
    write_official(raw, "last_out", True, category="All_Beauty")
    return raw


def test_amazon_2023_pool_and_official_split(tmp_path: Path) -> None:
    raw = _amazon_2023_raw(tmp_path / "raw")
    out = tmp_path / "out"
    opts = EtlOptions(raw, out, sizes=(5, 10), engine=QUIET, vocab_size=60, release="2023",
                      item_text=("features",))  # fmt: skip
    results = run_pipeline("all", opts)
    assert [r.status for r in results] == ["skipped"] + ["ran"] * (len(STEPS) - 1)
    assert (out / "amazon2023-10" / "amazon2023-10.inter").read_text() == AMAZON_2023_INTER
    assert (out / "amazon2023-5" / "amazon2023-5.inter").read_text() == "".join(
        AMAZON_2023_INTER.splitlines(True)[:6]
    )
    item = read_atomic(out / "amazon2023-10" / "amazon2023-10.item")
    assert item[0][-1] == "features:token_seq"
    assert [[r[0], decode_pieces(r[1]), decode_pieces(r[2]), *r[3:6], decode_pieces(r[6])]
            for r in item[1:]] == [
        ["P1", "rose shampoo", "acme", "Beauty", "Hair Care", "Shampoo", "soft"],
        ["P2", "lip balm", "", "", "", "", "soft"],
        ["P3", "face cream", "glow", "Beauty", "", "", "soft"],
        ["P4", "nail polish", "acme", "Beauty", "Nails", "", "soft"],
        ["P5", "hair dryer", "windy", "Beauty", "Tools", "", "soft"],
        ["P6", "bath salt", "sea", "Beauty", "Bath", "", "soft"],
    ]  # fmt: skip
    name = "amazon2023-All_Beauty-5core-last_out"
    assert (out / name / f"{name}.inter").read_text() == EXPECTED_INTER
    bench = results[STEPS.index("build_benchmark_datasets")].manifest
    assert bench["datasets"] == [name]
    assert bench["checks"][name]["split_mismatch"] == 0
    assert bench["checks"][name]["history_mismatch"] == 0
    partition = results[STEPS.index("partition_big_files")].manifest
    assert partition["bad_rows"] == {"All_Beauty.jsonl.gz": {"malformed_json": 1}}
    pool = results[STEPS.index("post_process_ratings")].manifest["counts"]
    assert [c["interactions"] for c in pool] == [15, 14, 13, 13, 10]
    assert "finetune_reviews_missing" not in results[STEPS.index("post_process_ratings")].manifest


def test_amazon_2023_bad_inputs_are_named(tmp_path: Path, capsys) -> None:
    raw = _amazon_2023_raw(tmp_path / "raw")
    args = ["--step", "all", "--raw-dir", str(raw), "--out-dir", str(tmp_path / "out"),
            "--release", "2023", "--no-progress", "--vocab-size", "60", "--sizes", "5"]  # fmt: skip
    data = (raw / "All_Beauty.jsonl.gz").read_bytes()
    (raw / "All_Beauty.jsonl.gz").write_bytes(data[: len(data) // 2])
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "All_Beauty.jsonl.gz: truncated or corrupt gzip" in err and "\n" not in err
    assert not (tmp_path / "out" / "work" / "ratings").exists()
    (raw / "All_Beauty.jsonl.gz").write_bytes(data)
    old = {"reviewerID": "A1", "asin": "B1", "overall": 5.0, "unixReviewTime": 1}
    (raw / "Books.jsonl").write_text(json.dumps(old) + "\n")  # a 2018 file among the 2023 ones
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "Books.jsonl holds Amazon 2014/2018 review JSON lines" in err
    assert main([*args, "--release", "2024"]) == 1
    assert "unknown Amazon release '2024'" in capsys.readouterr().err


def test_download_of_2023_needs_categories(tmp_path: Path, capsys) -> None:
    code = main(["--step", "download_raw_files", "--raw-dir", str(tmp_path / "raw"),
                 "--out-dir", str(tmp_path / "out"), "--release", "2023", "--no-progress"])  # fmt: skip
    assert code == 1
    assert "pass --categories" in capsys.readouterr().err


def _digests(out: Path) -> dict[str, str]:
    files = sorted(p for p in out.glob("*/*") if p.parent.name not in ("work", "manifests"))
    return {str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _cli_all(raw: Path, out: Path, workers: int, extra: list[str], capsys) -> list[str]:
    code = main(["--step", "all", "--raw-dir", str(raw), "--out-dir", str(out),
                 "--workers", str(workers), "--vocab-size", "300", "--partitions", "3",
                 "--chunk-mb", "0.05", "--no-progress", *extra])  # fmt: skip
    assert code == 0
    return [line.split(": ")[1] for line in capsys.readouterr().out.splitlines()[: len(STEPS)]]


@pytest.mark.parametrize(
    ("fmt", "extra", "datasets"),
    [
        ("amazon2023", ["--release", "2023", "--sizes", "2K,5K"],
         ["amazon2023-2K", "amazon2023-5K", "amazon2023-All_Beauty-0core-last_out",
          "amazon2023-All_Beauty-5core-timestamp"]),
        ("movielens-1m", ["--source", "movielens", "--sizes", "2K"], ["ml-1m", "ml-1m-2K"]),
        ("movielens-csv", ["--source", "movielens", "--sizes", "2K"], ["ml-20m", "ml-20m-2K"]),
    ],
)  # fmt: skip
def test_step_all_same_bytes_with_1_and_2_workers(
    tmp_path: Path, capsys, fmt: str, extra: list[str], datasets: list[str]
) -> None:
    raw = tmp_path / "raw"
    if fmt == "amazon2023":
        generate_amazon2023(raw, 12_000, seed=5)
    else:
        generate_movielens(raw, 8_000, seed=5, release="ml-1m" if fmt.endswith("1m") else "ml-20m")
    _cli_all(raw, tmp_path / "w1", 1, extra, capsys)
    _cli_all(raw, tmp_path / "w2", 2, extra, capsys)
    d1, d2 = _digests(tmp_path / "w1"), _digests(tmp_path / "w2")
    for name in datasets:
        assert f"{name}/{name}.inter" in d1 and f"{name}/{name}.item" in d1
    assert d1 == d2
    assert _cli_all(raw, tmp_path / "w1", 2, extra, capsys) == ["skipped"] * len(STEPS)
    assert _digests(tmp_path / "w1") == d1


def test_memory_budget_sets_the_part_count(tmp_path: Path) -> None:
    from etl.pipeline import DEFAULT_PART_BYTES, PART_MEMORY_FACTOR, partition_count

    raw = _ml_raw(tmp_path / "raw", as_zip=False)
    opts = EtlOptions(raw, tmp_path / "out", engine=QUIET, source="movielens", partitions=2)
    assert partition_count(opts) == 2  # a tiny input: --partitions
    copies = -(-5 * DEFAULT_PART_BYTES // (2 * len(ML_RATINGS)))  # 2.5 default parts
    (raw / "ml-1m" / "ratings.dat").write_bytes(ML_RATINGS * copies)
    assert partition_count(opts) == 3
    opts.memory_budget = 1 << 30
    opts.engine = Engine(workers=2, progress=False)
    per_part = int((1 << 29) / PART_MEMORY_FACTOR)  # half the budget for each worker
    assert partition_count(opts) == max(2, -(-len(ML_RATINGS) * copies // per_part))


def test_movielens_release_choice_is_clear(tmp_path: Path) -> None:
    raw = _ml_raw(tmp_path / "raw", as_zip=True)
    (raw / "ml-20m").mkdir()
    (raw / "ml-20m" / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,2,3.5,4\n")
    (raw / "ml-20m" / "movies.csv").write_text("movieId,title,genres\n2,X (1990),Drama\n")
    opts = EtlOptions(raw, tmp_path / "out", engine=QUIET, source="movielens")
    with pytest.raises(EtlError, match=r"several MovieLens releases .* pass --release"):
        run_pipeline("partition_big_files", opts)
    opts.release = "ml-20m"
    assert run_pipeline("partition_big_files", opts)[0].status == "ran"


def test_other_release_in_a_2018_raw_is_named(tmp_path: Path, capsys) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    args = ["--step", "partition_big_files", "--raw-dir", str(raw), "--out-dir",
            str(tmp_path / "out"), "--no-progress"]  # fmt: skip
    # A 2023 official split file saved as a 2018 per-category ratings CSV.
    (raw / "Beauty.csv").write_text("user_id,parent_asin,rating,timestamp\nAE1,B01,5.0,1\n")
    (raw / "meta_Beauty.json").write_text('{"asin": "B01", "title": "x"}\n')
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Beauty.csv holds an Amazon Reviews 2023 benchmark CSV without history column" in err
    (raw / "Beauty.csv").unlink()
    (raw / "Books.jsonl.gz").write_bytes(gzip.compress(_review("AU1", "P1", 5.0, T).encode()))
    assert main(args) == 1
    assert (
        "holds Amazon 2023 reviews (Books.jsonl.gz) but no 2018 ratings; pass --release 2023"
        in (capsys.readouterr().err)
    )
    (raw / "Books.jsonl.gz").unlink()
    _ml_raw(raw / "x", as_zip=True)
    (raw / "x" / "ml-1m.zip").rename(raw / "ml-1m.zip")
    assert main(args) == 1
    assert "holds MovieLens ml-1m but no Amazon ratings; pass --source movielens" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("fmt", ["amazon2023", "movielens-1m", "movielens-csv"])
def test_synthetic_command_line_same_bytes_for_a_seed(tmp_path: Path, fmt: str) -> None:
    from etl import synthetic

    for out in ("a", "b"):
        args = ["--format", fmt, "--out", str(tmp_path / out), "--interactions", "3000"]
        assert synthetic.main([*args, "--seed", "4"]) == 0
    a = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").rglob("*.*")}
    b = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in (tmp_path / "b").rglob("*.*")}
    assert a == b and a
    expected = {
        "amazon2023": "All_Beauty.jsonl.gz",
        "movielens-1m": "ml-1m.zip",
        "movielens-csv": "ml-20m.zip",
    }[fmt]
    assert Path(expected) in a


def test_item_text_is_checked_first(tmp_path: Path, capsys) -> None:
    base = ["--step", "all", "--raw-dir", str(tmp_path), "--out-dir", str(tmp_path / "o")]
    assert main([*base, "--item-text", "features"]) == 2
    assert "--item-text is for Amazon 2023 items" in capsys.readouterr().err
    assert main([*base, "--release", "2023", "--item-text", "price"]) == 2
    assert "unknown --item-text price; choose from features,description" in capsys.readouterr().err
