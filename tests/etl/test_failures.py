"""Hostile and careless input to the ETL: every bad row counted, every error one line.

One test per failure class of issue 17 (the ETL part); each failed on the code before it.
The ones that need real processes (a killed worker, a FIFO, Ctrl-C, a concurrent run) are in
test_failures_processes.py.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import random
from pathlib import Path

import pytest

import etl.scaling
from etl.cli import main
from etl.engine import Engine
from etl.errors import EtlError
from etl.manifest import DIGEST_PART_BYTES, file_digest
from etl.pipeline import EtlOptions, run_pipeline, run_step
from etl.readers import (
    BadRows,
    parse_meta_2014_lines,
    parse_ratings_csv,
    parse_review_lines,
    read_file,
)
from recbole_fork.errors import UserError


def options(raw: Path, out: Path, **kw) -> EtlOptions:
    kw = {"sizes": (5, 10), "vocab_size": 60, **kw}
    return EtlOptions(raw_dir=raw, out_dir=out, engine=Engine(progress=False), **kw)


def cli(raw: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--step",
        "all",
        "--raw-dir",
        str(raw),
        "--out-dir",
        str(out),
        "--sizes",
        "5,10",
        "--vocab-size",
        "60",
        "--no-progress",
        *extra,
    ]


def one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err.strip()


def review(user: str, item: str, overall: object, ts: object) -> bytes:
    return (
        json.dumps({"reviewerID": user, "asin": item, "overall": overall, "unixReviewTime": ts})
        + "\n"
    ).encode()


# --- No hang: options ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e-9", "abc"])
def test_chunk_mb_must_be_positive(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(cli(tmp_path / "raw", tmp_path / "out", "--chunk-mb", value))
    assert exc.value.code == 2
    assert f"argument --chunk-mb: {value!r}: give a positive size in MB" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_directory_where_an_input_should_be(
    handwritten_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (handwritten_raw / "all_csv_files.csv").unlink()
    (handwritten_raw / "all_csv_files.csv").mkdir()
    assert main(cli(handwritten_raw, tmp_path / "out")) == 1
    assert one_line_error(capsys) == (
        f"error: input {handwritten_raw / 'all_csv_files.csv'} is a directory, not a regular "
        "file; replace it with the file"
    )
    # A fine-tuning file found by name (not by a pattern) too: not silently "absent".
    (handwritten_raw / "all_csv_files.csv").rmdir()
    (handwritten_raw / "all_csv_files.csv").write_text("A,U1,5.0,100\n")
    (handwritten_raw / "meta_Beauty.json.gz").unlink()
    (handwritten_raw / "meta_Beauty.json.gz").mkdir()
    with pytest.raises(EtlError, match=r"meta_Beauty.json.gz is a directory, not a regular"):
        read_file(handwritten_raw / "meta_Beauty.json.gz", parse_meta_2014_lines)


# --- Staleness: content digests -----------------------------------------------------------


def test_in_place_edit_with_size_and_mtime_restored_is_seen(
    handwritten_raw: Path, tmp_path: Path
) -> None:
    opts = options(handwritten_raw, tmp_path / "out")
    run_step("partition_big_files", opts)
    ratings = handwritten_raw / "all_csv_files.csv"
    before = ratings.stat()
    text = ratings.read_text()
    assert text.startswith("A,U1,5.0,100\n")
    with open(ratings, "r+b") as f:  # same size, one rating changed
        f.write(b"A,U1,1.0,100\n")
    os.utime(ratings, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = ratings.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert run_step("partition_big_files", opts).status == "ran"
    # A new mtime alone (same bytes) is not a change: nothing is redone.
    os.utime(ratings, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert run_step("partition_big_files", opts).status == "skipped"


def test_digest_is_the_same_in_parallel_parts(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 1000)  # 256,000 bytes
    one = file_digest(path, workers=1, part_bytes=10_000)
    assert one == file_digest(path, workers=4, part_bytes=10_000)  # 26 parts, 4 threads
    assert one.startswith("s256p0:") and len(one) == 7 + 64
    assert file_digest(path).startswith(f"s256p{DIGEST_PART_BYTES >> 20}:")
    with open(path, "r+b") as f:
        f.seek(200_000)
        f.write(b"\xff")
    assert file_digest(path, workers=4, part_bytes=10_000) != one
    (tmp_path / "empty").write_bytes(b"")
    assert file_digest(tmp_path / "empty") != file_digest(tmp_path / "f.bin")


# --- Empty fine-tuning input --------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"", gzip.compress(b"", mtime=0), gzip.compress(b'{"reviewerID": "R1"}\nnot json\n', mtime=0)],
    ids=["zero_bytes", "empty_gzip", "no_valid_row"],
)
def test_empty_finetune_input_is_an_error(
    content: bytes, handwritten_raw: Path, tmp_path: Path
) -> None:
    reviews = handwritten_raw / "reviews_Beauty_5.json.gz"
    reviews.write_bytes(content)
    opts = options(handwritten_raw, tmp_path / "out")
    with pytest.raises(EtlError, match=rf"{reviews}: no valid row \(") as exc:
        run_pipeline("all", opts)
    assert "\n" not in str(exc.value)
    # Its users were not let into the pre-training pool, and no empty set was published.
    assert not (opts.work_dir / "pool").exists()
    assert not (opts.out_dir / "amazon-beauty").exists()


def test_empty_finetune_metadata_is_an_error(handwritten_raw: Path, tmp_path: Path) -> None:
    (handwritten_raw / "meta_Beauty.json.gz").write_bytes(b"")
    opts = options(handwritten_raw, tmp_path / "out")
    with pytest.raises(EtlError, match=r"meta_Beauty.json.gz is empty \(0 bytes\)"):
        run_pipeline("all", opts)
    assert not (opts.out_dir / "amazon-beauty").exists()


# --- NaN, infinity, out-of-range timestamps: counted on every path ------------------------


def test_nan_and_infinite_values_are_counted_in_reviews() -> None:
    block = b"".join(
        [
            review("R1", "A", 5.0, 100),
            review("R1", "B", "nan", 100),
            review("R1", "C", "inf", 100),
            review("R1", "D", "-Infinity", 100),
            review("R1", "E", 4.0, "nan"),
            review("R1", "F", 4.0, "inf"),
            review("R1", "G", 4.0, 1e30),
            review("R1", "H", 4.0, 2**63),
            review("R1", "I", 4.0, str(2**63)),
            review("R1", "J", 4.0, 2**63 - 1),  # the largest int64: kept, exactly
            review("R1", "K", 4.0, "1e3"),  # a numeric string, as before: kept
            b'{"reviewerID": "R1", "asin": "L", "overall": NaN, "unixReviewTime": 1}\n',
        ]
    )
    bad = BadRows()
    table = parse_review_lines(block, "reviews_Beauty_5.json", bad)
    assert table.column("item").to_pylist() == ["A", "J", "K"]
    assert table.column("timestamp").to_pylist() == [100, 2**63 - 1, 1000]
    assert bad.as_dict() == {
        "reviews_Beauty_5.json": {"bad_rating": 3, "bad_timestamp": 5, "malformed_json": 1}
    }


def test_nan_and_infinite_values_are_counted_in_the_csv() -> None:
    block = (
        b"A,U1,5.0,100\nB,U1,nan,100\nC,U1,inf,100\nD,U1,-inf,100\n"
        b"E,U1,4.0,nan\nF,U1,4.0,inf\nG,U1,4.0,9223372036854775808\nH,U1,4.0,9223372036854775807\n"
    )
    bad = BadRows()
    table = parse_ratings_csv(block, "all_csv_files.csv", bad)
    assert table.column("item").to_pylist() == ["A", "H"]
    assert bad.as_dict() == {"all_csv_files.csv": {"bad_rating": 3, "bad_timestamp": 3}}


def test_finetune_nan_rating_is_never_written(handwritten_raw: Path, tmp_path: Path) -> None:
    lines = gzip.decompress((handwritten_raw / "reviews_Beauty_5.json.gz").read_bytes())
    lines += review("R9", "K", "nan", 40) + review("R9", "L", 3.0, float("nan"))
    (handwritten_raw / "reviews_Beauty_5.json.gz").write_bytes(gzip.compress(lines, mtime=0))
    opts = options(handwritten_raw, tmp_path / "out")
    results = {r.step: r for r in run_pipeline("all", opts)}
    inter = (opts.out_dir / "amazon-beauty" / "amazon-beauty.inter").read_text()
    assert "nan" not in inter.lower() and "R9" not in inter
    bad = results["build_beauty_and_sports_datasets"].manifest["bad_rows"]
    assert bad == {"reviews_Beauty_5.json.gz": {"bad_rating": 1, "malformed_json": 1}}


# --- Every bad row counted ----------------------------------------------------------------


def test_2014_metadata_unhashable_key_and_surrogate_are_counted() -> None:
    block = (
        b"{'asin': 'K', 'title': 'Kit'}\n"
        b"{[1]: 2}\n"  # TypeError: unhashable type: 'list'
        b"{'asin': 'M', {'a': 1}: 'x'}\n"  # an unhashable dict key
        b"{'asin': 'S', 'title': '\\ud800'}\n"  # a lone surrogate: not encodable as UTF-8
    )
    bad = BadRows()
    table = parse_meta_2014_lines(block, "meta_Beauty.json.gz", bad)
    assert table.column("asin").to_pylist() == ["K"]
    assert bad.as_dict() == {"meta_Beauty.json.gz": {"malformed_literal": 2, "non_utf8": 1}}


def test_non_utf8_line_in_a_good_csv_is_counted(
    handwritten_raw: Path, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    ratings = handwritten_raw / "all_csv_files.csv"
    good = ratings.read_bytes()
    # Invalid UTF-8 with the wrong column count: pyarrow's invalid-row handler would have
    # to decode it, which is what aborted the step.
    ratings.write_bytes(good + b"\xff\xfe,U7,5.0\n" + b"\xff,U7,5.0,1\n")
    opts = options(handwritten_raw, tmp_path / "out")
    result = run_step("partition_big_files", opts)
    assert result.manifest["bad_rows"]["all_csv_files.csv"] == {
        "bad_rating": 1,
        "bad_timestamp": 1,
        "non_utf8": 1,
        "wrong_column_count": 2,
    }
    assert "Exception ignored" not in capfd.readouterr().err


def test_random_bytes_as_the_csv_name_the_file(
    handwritten_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ratings = handwritten_raw / "all_csv_files.csv"
    ratings.write_bytes(b"\x00" + random.Random(0).randbytes(20_000))  # no gzip header
    assert main(cli(handwritten_raw, tmp_path / "out", "--step", "partition_big_files")) == 1
    err = one_line_error(capsys)
    assert err.startswith(f"error: {ratings}: no valid row (")
    assert err.endswith("check that it is the right file, or download it again")


# --- Every I/O error named ----------------------------------------------------------------


def test_output_dir_that_is_a_file(
    handwritten_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    out.write_text("not a folder")
    assert main(cli(handwritten_raw, out)) == 1
    assert one_line_error(capsys) == f"error: --out-dir {out} is not a folder; pass a folder path"


def test_read_only_output_names_the_path(
    handwritten_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    out = tmp_path / "out"
    denied = out / "work" / "ratings"

    def read_only(*args, **kwargs):
        # What mkdtemp raises in a read-only folder (root ignores chmod, so it is injected).
        raise PermissionError(errno.EACCES, "Permission denied", str(denied))

    monkeypatch.setattr(etl.manifest.tempfile, "mkdtemp", read_only)
    assert main(cli(handwritten_raw, out)) == 1
    assert one_line_error(capsys) == (
        f"error: {denied}: Permission denied (step partition_big_files, output folder {out}); "
        "check the permissions, or pass another --out-dir"
    )


def test_full_disk_names_the_output_folder(
    handwritten_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    out = tmp_path / "out"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # as write() raises it

    monkeypatch.setattr(etl.scaling, "write_inter", full)
    assert main(cli(handwritten_raw, out)) == 1
    assert one_line_error(capsys) == (
        f"error: {out}: No space left on device (step build_scaling_datasets, output folder "
        f"{out}); free some disk space or pass another --out-dir"
    )
    assert not (out / "amazon-5").exists() and not list(out.glob(".amazon-*"))
    # What finished before is kept: a rerun does only the failed step and those after it.
    monkeypatch.undo()
    assert main(cli(handwritten_raw, out)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "post_process_ratings: skipped" in lines
    assert any(line.startswith("build_scaling_datasets: ran") for line in lines)


def test_vocab_size_too_small_names_the_option_and_a_value(
    handwritten_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(cli(handwritten_raw, tmp_path / "out", "--vocab-size", "12")) == 1
    err = one_line_error(capsys)
    assert err.startswith("error: --vocab-size 12 is too small for this text: SentencePiece needs")
    need = int(err.split("pass --vocab-size ")[1].split()[0])
    assert need > 12
    assert main(cli(handwritten_raw, tmp_path / "out", "--vocab-size", str(need))) == 0


def test_ctrl_c_prints_the_hint_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    def interrupted(step, options):
        raise KeyboardInterrupt

    monkeypatch.setattr("etl.cli.run_pipeline", interrupted)
    assert main(cli(tmp_path, tmp_path / "out")) == 130
    assert capsys.readouterr().err == (
        "interrupted: finished steps are kept and nothing half-written is published; "
        "rerun the same command to resume\n"
    )


# --- Error classes ------------------------------------------------------------------------


def test_user_errors_are_user_errors_and_bugs_keep_their_traceback(
    handwritten_raw: Path, tmp_path: Path, monkeypatch
) -> None:
    assert issubclass(EtlError, UserError)
    from etl.download import DownloadError
    from etl.engine import WorkerDied

    assert issubclass(DownloadError, EtlError) and issubclass(WorkerDied, EtlError)

    def bug(*args, **kwargs):
        raise ValueError("a bug in the project")

    monkeypatch.setattr(etl.scaling, "choose_users", bug)
    with pytest.raises(ValueError, match="a bug in the project"):
        main(cli(handwritten_raw, tmp_path / "out"))
