"""`--step all` on synthetic raw data: same bytes with 1 or 2 workers, nothing redone on rerun."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from etl.cli import main

synthetic = pytest.importorskip(
    "etl.synthetic", reason="etl/synthetic.py (another helper's) is absent"
)


def _digests(out: Path) -> dict[str, str]:
    files = sorted(out.glob("amazon-*/*")) + sorted((out / "sentencepiece").glob("*"))
    return {str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _run_all(raw: Path, out: Path, sizes: str, workers: int, capsys) -> str:
    code = main(
        [
            "--step",
            "all",
            "--raw-dir",
            str(raw),
            "--out-dir",
            str(out),
            "--sizes",
            sizes,
            "--workers",
            str(workers),
            "--vocab-size",
            "500",
            "--partitions",
            "4",
            "--no-progress",
        ]
    )
    assert code == 0
    return capsys.readouterr().out


def _check(tmp_path: Path, interactions: int, sizes: str, names: list[str], capsys) -> None:
    raw = tmp_path / "raw"
    synthetic.generate(raw, interactions, seed=7, finetune_users=300)
    out1, out2 = tmp_path / "w1", tmp_path / "w2"
    _run_all(raw, out1, sizes, 1, capsys)
    _run_all(raw, out2, sizes, 2, capsys)
    d1, d2 = _digests(out1), _digests(out2)
    expected = {
        f"{n}/{n}.{e}"
        for n in [*names, "amazon-beauty", "amazon-sports"]
        for e in ("inter", "item")
    }
    assert expected <= set(d1)
    assert d1 == d2
    rerun = _run_all(raw, out1, sizes, 2, capsys)
    statuses = [line.split(": ")[1] for line in rerun.splitlines()[:7]]
    assert statuses == ["skipped"] * 7
    assert _digests(out1) == d1


def test_all_small_sizes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _check(tmp_path, 8_000, "2K,4K", ["amazon-2K", "amazon-4K"], capsys)


@pytest.mark.slow
def test_all_100k_1m(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _check(tmp_path, 1_600_000, "100K,1M", ["amazon-100K", "amazon-1M"], capsys)
