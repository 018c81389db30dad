"""The pre-training and fine-tuning command lines run unchanged on MovieLens and Amazon
Reviews 2023 datasets: synthetic raw files in the releases' formats, the ETL, then the
scripts exactly as a user calls them (tiny sizes through ``--set``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from etl.cli import main as etl_main
from etl.synthetic_formats import generate_amazon2023, generate_movielens
from recbole_fork.cli import fine_tune_main, pre_train_main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

TINY = [
    "hidden_size=16", "inner_size=16", "n_layers=1", "n_heads=1", "text_embedding_size=8",
    "max_seq_length=10", "num_negatives=8", "train_batch_size=64", "eval_batch_size=256",
    "epochs=2", "show_progress=false",
]  # fmt: skip


def _pre_train_config(path: Path) -> Path:
    """A text-based SASRecX pre-training config, as a user would write it."""
    path.write_text(
        "model: SASRecX\nitem_encoder: text\ntext_fields: [title, brand]\n"
        "load_col: {inter: [user_id, item_id, timestamp], item: [item_id, title, brand]}\n"
    )
    return path


def _run(tmp_path: Path, data: Path, pre: str, target: str, extra: list[str]) -> dict:
    uri = f"sqlite:///{tmp_path / 'mlruns.sqlite'}"
    sets = [f"--set={s}" for s in TINY]
    ckpt = tmp_path / "pre.pth"
    code = pre_train_main(["-c", str(_pre_train_config(tmp_path / "pre.yaml")), "-o", str(ckpt),
                           "--data-path", str(data), "--tracking-uri", uri, *sets,
                           "--set", f"dataset={pre}"])  # fmt: skip
    assert code == 0
    ft = tmp_path / "ft.yaml"
    ft.write_text("fine_tune_strategy: full\n")
    out = tmp_path / "ft.pth"
    code = fine_tune_main(["-c", str(ft), "-s", target, "-o", str(out), "-i", str(ckpt),
                           "--data-path", str(data), "--tracking-uri", uri,
                           "--set", "epochs=2", "--set", "show_progress=false",
                           *extra])  # fmt: skip
    assert code == 0
    return json.loads(out.with_suffix(".metrics.json").read_text())


def test_movielens_pre_train_and_fine_tune(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw, data = tmp_path / "raw", tmp_path / "data"
    generate_movielens(raw, 8_000, seed=5, release="ml-1m")
    assert etl_main(["--step", "all", "--raw-dir", str(raw), "--out-dir", str(data),
                     "--source", "movielens", "--sizes", "2K", "--vocab-size", "200",
                     "--workers", "1", "--no-progress"]) == 0  # fmt: skip
    # Pre-train on a scaled subset, fine-tune on the whole release (titles and genres as text).
    result = _run(tmp_path, data, "ml-1m-2K", "ml-1m", [])
    assert 0.0 <= result["best_test_ndcg_at_10"] <= 1.0 and result["best_epoch"] in (0, 1)


def test_amazon2023_pre_train_and_fine_tune_on_the_official_timestamp_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw, data = tmp_path / "raw", tmp_path / "data"
    generate_amazon2023(raw, 12_000, seed=5)
    assert etl_main(["--step", "all", "--raw-dir", str(raw), "--out-dir", str(data),
                     "--release", "2023", "--sizes", "2K", "--vocab-size", "200",
                     "--workers", "1", "--no-progress"]) == 0  # fmt: skip
    target = "amazon2023-All_Beauty-5core-timestamp"
    assert (data / target / f"{target}.inter").is_file()
    # The release's own cuts (milliseconds kept), every row of a period a target.
    split = ["--set", "num_negatives=8", "--set", "split={type: time, valid_cut: 1628643414.042, test_cut: 1658002729.837, "
             "targets: all}"]  # fmt: skip
    result = _run(tmp_path, data, "amazon2023-2K", target, split)
    assert 0.0 <= result["best_test_ndcg_at_10"] <= 1.0
