"""The steps end to end on handwritten inputs: exact outputs, one check per rule, reruns, faults."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

import etl.scaling
from etl.cli import main
from etl.engine import Engine
from etl.errors import EtlError
from etl.pipeline import STEPS, EtlOptions, counts_table, run_pipeline, run_step
from etl.scaling import parse_size, size_label

INTER_HEADER = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
ITEM_HEADER = [
    "item_id:token",
    "title:token_seq",
    "brand:token_seq",
    "category_l1:token",
    "category_l2:token",
    "category_l3:token",
]
# Seed 42 puts U5 before U1 (pinned in test_hashing); each history by (time, file order).
U5_ROWS = [
    ["U5", "C", "4", "300"],
    ["U5", "E", "4", "400"],
    ["U5", "D", "4", "400"],
    ["U5", "F", "4", "500"],
    ["U5", "B", "4", "700"],
]
U1_ROWS = [
    ["U1", "A", "3", "50"],
    ["U1", "D", "2", "150"],
    ["U1", "B", "4", "200"],
    ["U1", "C", "5", "200"],
    ["U1", "E", "1", "300"],
]


def read_atomic(path: Path) -> list[list[str]]:
    """An atomic file as rows of fields, header first."""
    return [line.split("\t") for line in path.read_text().splitlines()]


def decode(field: str) -> str:
    """SentencePiece pieces back to the words they spell."""
    return "".join(field.split(" ")).replace("\u2581", " ").strip()


def options(raw: Path, out: Path, workers: int = 1, **kw) -> EtlOptions:
    kw = {"sizes": (5, 10), "vocab_size": 60, **kw}
    return EtlOptions(
        raw_dir=raw, out_dir=out, engine=Engine(workers=workers, progress=False), **kw
    )


@pytest.fixture
def built(handwritten_raw: Path, tmp_path: Path) -> tuple[EtlOptions, list]:
    opts = options(handwritten_raw, tmp_path / "out")
    return opts, run_pipeline("all", opts)


def test_scaling_datasets_exact(built) -> None:
    opts, _ = built
    small = read_atomic(opts.out_dir / "amazon-5" / "amazon-5.inter")
    big = read_atomic(opts.out_dir / "amazon-10" / "amazon-10.inter")
    assert small == [INTER_HEADER, *U5_ROWS]
    assert big == [INTER_HEADER, *U5_ROWS, *U1_ROWS]  # nested: amazon-5 is a prefix
    items = read_atomic(opts.out_dir / "amazon-10" / "amazon-10.item")
    assert items[0] == ITEM_HEADER
    assert [r[0] for r in items[1:]] == ["A", "B", "C", "D", "E", "F"]
    a = items[1]
    assert (decode(a[1]), decode(a[2]), a[3:]) == (
        "shampoo conditioner set",
        "acme",
        ["Beauty", "Hair Care", "Shampoo"],
    )
    assert items[2][2] == ""  # B has no brand: an empty field
    assert [r[0] for r in read_atomic(opts.out_dir / "amazon-5" / "amazon-5.item")[1:]] == list(
        "BCDEF"
    )


def test_rules_counted(built) -> None:
    _, results = built
    post = next(r for r in results if r.step == "post_process_ratings").manifest["counts"]
    assert [(c["users"], c["items"], c["interactions"]) for c in post] == [
        (5, 8, 25),  # good rows
        (5, 8, 24),  # U1's duplicate A goes
        (5, 6, 22),  # X (no metadata) and H (no usable text) go
        (4, 6, 17),  # U3, a Beauty 5-core user, goes
        (2, 6, 10),  # U2 (4 left) and U4 (3) go
    ]
    part = next(r for r in results if r.step == "partition_big_files").manifest
    assert part["bad_rows"] == {
        "All_Amazon_Meta.json.gz": {"malformed_json": 1, "missing_field": 1},
        "all_csv_files.csv": {"bad_rating": 1, "bad_timestamp": 1, "wrong_column_count": 1},
    }
    missing = next(r for r in results if r.step == "post_process_ratings").manifest
    assert missing["finetune_reviews_missing"] == ["reviews_Sports_and_Outdoors_5.json.gz"]
    table = counts_table(results)
    assert "warning: reviews_Sports_and_Outdoors_5.json.gz absent, its users not excluded" in table
    assert "after keeping users with >= 5 ratings" in table
    assert "rows skipped as bad (see manifest)" in table


def test_finetune_kept_whole_with_text_fallbacks(built) -> None:
    opts, results = built
    inter = read_atomic(opts.out_dir / "amazon-beauty" / "amazon-beauty.inter")
    assert inter == [
        INTER_HEADER,
        ["R1", "A", "4", "5"],  # the earlier of the duplicated (R1, A)
        ["R1", "K", "3", "20"],  # K before L: a tie keeps file order
        ["R1", "L", "2", "20"],
        ["R1", "H", "1", "30"],
        ["U3", "K", "4", "1"],  # U3 has 2 reviews and stays: no re-filtering
        ["U3", "A", "5", "2"],
    ]
    items = {
        r[0]: r for r in read_atomic(opts.out_dir / "amazon-beauty" / "amazon-beauty.item")[1:]
    }
    assert sorted(items) == ["A", "H", "K", "L"]  # no item dropped
    assert decode(items["A"][1]) == "shampoo conditioner set"  # 2018 metadata
    assert (decode(items["H"][1]), items["H"][3:]) == (
        "hair band",
        ["Beauty", "Hair Care", ""],
    )  # 2014
    assert (decode(items["K"][1]), decode(items["K"][2])) == ("makeup kit", "kbrand")  # 2014
    assert items["L"][1:] == ["", "", "", "", ""]  # no text anywhere
    manifest = next(r for r in results if r.step == "build_beauty_and_sports_datasets").manifest
    assert manifest["text_sources"] == {
        "amazon-beauty": {"no_text": 1, "text_from_2014": 2, "text_from_2018": 1}
    }
    assert manifest["missing"] == ["reviews_Sports_and_Outdoors_5.json.gz"]


def test_rerun_skips_and_param_change_redoes_only_what_depends(built) -> None:
    opts, first = built
    assert [r.status for r in first] == ["skipped"] + ["ran"] * (len(STEPS) - 1)
    mtime = (opts.out_dir / "amazon-5" / "amazon-5.inter").stat().st_mtime_ns
    again = run_pipeline("all", opts)
    assert [r.status for r in again] == ["skipped"] * len(STEPS)
    assert (opts.out_dir / "amazon-5" / "amazon-5.inter").stat().st_mtime_ns == mtime
    opts.sizes = (5, 7)
    changed = {r.step: r.status for r in run_pipeline("all", opts)}
    assert [s for s, st in changed.items() if st == "ran"] == ["build_scaling_datasets"]
    assert len(read_atomic(opts.out_dir / "amazon-7" / "amazon-7.inter")) == 11  # 2 users


def test_same_bytes_with_workers_and_partitions(
    built, handwritten_raw: Path, tmp_path: Path
) -> None:
    opts, _ = built
    other = options(handwritten_raw, tmp_path / "out2", workers=2, partitions=3, chunk_bytes=64)
    run_pipeline("all", other)
    for name in ("amazon-5", "amazon-10", "amazon-beauty"):
        for ext in ("inter", "item"):
            rel = Path(name) / f"{name}.{ext}"
            assert (opts.out_dir / rel).read_bytes() == (other.out_dir / rel).read_bytes()
    assert (opts.spm_model).read_bytes() == other.spm_model.read_bytes()


def test_killed_step_publishes_nothing_and_rerun_completes(
    handwritten_raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opts = options(handwritten_raw, tmp_path / "out")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if the process were stopped while writing

    monkeypatch.setattr(etl.scaling, "write_item", killed)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline("all", opts)
    assert not (opts.out_dir / "amazon-5").exists()
    assert not (opts.out_dir / "manifests" / "build_scaling_datasets.json").exists()
    assert not list(opts.out_dir.glob(".*"))  # the temporary folder was removed
    monkeypatch.undo()
    statuses = {r.step: r.status for r in run_pipeline("all", opts)}
    assert statuses["build_scaling_datasets"] == "ran"
    assert statuses["post_process_ratings"] == "skipped"
    assert read_atomic(opts.out_dir / "amazon-5" / "amazon-5.inter")[1:] == U5_ROWS


def test_truncated_input_fails_step_and_publishes_nothing(
    handwritten_raw: Path, tmp_path: Path
) -> None:
    meta = handwritten_raw / "All_Amazon_Meta.json.gz"
    data = gzip.compress(
        b"".join(json.dumps({"asin": f"I{i}"}).encode() + b"\n" for i in range(5000))
    )
    meta.write_bytes(data[: len(data) // 2])
    opts = options(handwritten_raw, tmp_path / "out")
    with pytest.raises(EtlError, match="All_Amazon_Meta.json.gz: truncated or corrupt gzip"):
        run_step("partition_big_files", opts)
    assert not (opts.work_dir / "meta").exists()
    assert not (opts.out_dir / "manifests" / "partition_big_files.json").exists()


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "raw").mkdir()
    code = main(
        [
            "--step",
            "partition_big_files",
            "--raw-dir",
            str(tmp_path / "raw"),
            "--out-dir",
            str(tmp_path / "out"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.startswith("error: no 2018 ratings in") and "\n" not in err
    with pytest.raises(SystemExit):
        main(["--step", "all", "--raw-dir", "r", "--out-dir", "o", "--sizes", "12Q"])
    assert "bad dataset size '12Q'" in capsys.readouterr().err


def test_step_out_of_order_is_clear(handwritten_raw: Path, tmp_path: Path) -> None:
    opts = options(handwritten_raw, tmp_path / "out")
    with pytest.raises(
        EtlError, match="step tokenize_metadata needs .*meta; run --step partition_big_files first"
    ):
        run_step("tokenize_metadata", opts)


def test_size_too_big_is_clear(built) -> None:
    opts, _ = built
    opts.sizes = (11,)
    with pytest.raises(EtlError, match="dataset size 11 exceeds the pre-training pool of 10"):
        run_step("build_scaling_datasets", opts)


def test_sizes_parse() -> None:
    assert [parse_size(s) for s in ("2K", "100K", "1.5M", "10M", "5000", "1g")] == [
        2_000,
        100_000,
        1_500_000,
        10_000_000,
        5_000,
        1_000_000_000,
    ]
    assert [size_label(n) for n in (2_000, 100_000, 1_500_000, 1_000_000, 1234)] == [
        "2K",
        "100K",
        "1500K",
        "1M",
        "1234",
    ]
    for bad in ("", "K", "-5", "1.5", "3X"):
        with pytest.raises(ValueError, match="bad dataset size"):
            parse_size(bad)


def test_download_step_offline_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import etl.download

    def offline(raw_dir, **kwargs):
        raise etl.download.DownloadError("no network: place all_csv_files.csv, ... in RAW by hand")

    monkeypatch.setattr(etl.download, "download_raw_files", offline)
    code = main(
        [
            "--step",
            "download_raw_files",
            "--raw-dir",
            str(tmp_path),
            "--out-dir",
            str(tmp_path / "o"),
        ]
    )
    assert code == 1
    assert (
        capsys.readouterr().err
        == "error: no network: place all_csv_files.csv, ... in RAW by hand\n"
    )


@pytest.mark.slow
def test_real_2018_files_through_the_steps(shared_data: Path, tmp_path: Path) -> None:
    """2018 review files as the ratings source, 2018 metadata as the catalog."""
    raw = tmp_path / "raw"
    raw.mkdir()
    names = ["All_Beauty_5", "Gift_Cards_5", "Magazine_Subscriptions_5"]
    for name in [*names, "meta_Gift_Cards", "meta_Magazine_Subscriptions"]:
        (raw / f"{name}.json.gz").symlink_to(shared_data / "amazon2018" / f"{name}.json.gz")
    pairs: dict[tuple[str, str], int] = {}
    for name in names:
        with gzip.open(raw / f"{name}.json.gz", "rt") as f:
            for line in f:
                rec = json.loads(line)
                pairs[(rec["reviewerID"], rec["asin"])] = 1
    catalog = set()
    for name in ["meta_Gift_Cards", "meta_Magazine_Subscriptions"]:
        with gzip.open(raw / f"{name}.json.gz", "rt") as f:
            catalog |= {json.loads(line)["asin"] for line in f}
    opts = options(raw, tmp_path / "out", vocab_size=500)
    for step in STEPS[1:5]:
        run_step(step, opts)
    counts = json.loads((opts.out_dir / "manifests" / "post_process_ratings.json").read_text())
    stages = [c["interactions"] for c in counts["counts"]]
    assert stages[0] == 5269 + 2972 + 2375
    assert stages[1] == len(pairs) == 5269 + 2972 + 2375 - 1177 - 7 - 73
    # Usable text is a subset of the catalog: at most the pairs whose item has metadata.
    assert stages[2] <= sum(1 for _, item in pairs if item in catalog)
    assert stages[2] > 0 and stages[4] <= stages[2]


def test_without_finetune_files(handwritten_raw: Path, tmp_path: Path) -> None:
    (handwritten_raw / "reviews_Beauty_5.json.gz").unlink()
    (handwritten_raw / "meta_Beauty.json.gz").unlink()
    opts = options(handwritten_raw, tmp_path / "out", sizes=(5,))
    first = {r.step: r for r in run_pipeline("all", opts)}
    post = [c["users"] for c in first["post_process_ratings"].manifest["counts"]]
    assert post == [5, 5, 5, 5, 3]  # U3 stays in the pool: nothing to exclude
    assert first["build_beauty_and_sports_datasets"].manifest["missing"] == [
        "reviews_Beauty_5.json.gz",
        "reviews_Sports_and_Outdoors_5.json.gz",
    ]
    assert [r.status for r in run_pipeline("all", opts)] == ["skipped"] * len(STEPS)
