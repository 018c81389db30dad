"""Each RecBole 1.2.1 breakage on today's stack (REFERENCE section 5), shown and fixed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import recbole_fork  # noqa: F401  (applies the fixes)
from recbole_fork import compat
from recbole_fork.config import build_config


def test_recbole_numpy_aliases_fail_without_the_fix():
    # RecBole's own method reads np.float_, which numpy 2 removed.
    assert not hasattr(np, "float_") or "float_" in compat._NUMPY_ALIASES
    saved = {n: np.__dict__.pop(n) for n in ("float_", "complex_", "unicode_") if n in np.__dict__}
    try:
        with pytest.raises(AttributeError):
            compat.ORIGINALS["compatibility_settings"](None)
    finally:
        for n, v in saved.items():
            setattr(np, n, v)


def test_config_builds_and_recbole_metrics_run_on_numpy_2(tiny_dataset):
    config = build_config({"model": "SASRec", "dataset": "tiny", "data_path": str(tiny_dataset)})
    assert config["model"] == "SASRec"
    # RecBole's metrics use the bare np.float alias: it must point at float64.
    from recbole.evaluator.metrics import NDCG

    metric = NDCG({"topk": [2], "metric_decimal_place": 4})
    pos_index = np.array([[True, False], [False, False]])
    pos_len = np.array([1, 1])
    assert metric.metric_info(pos_index, pos_len)[:, -1].tolist() == [1.0, 0.0]


def _write_with_missing(root: Path) -> Path:
    folder = root / "gaps"
    folder.mkdir(parents=True)
    (folder / "gaps.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join(
            f"u{u}\ti{i}\t{'' if (u, i) == (1, 2) else 4.0}\t{10 * i}\n"
            for u in range(1, 4)
            for i in range(1, 7)
        )
    )
    (folder / "gaps.item").write_text(
        "item_id:token\ttitle:token_seq\tbrand:token\tprice:float\n"
        "i1\t▁a ▁b\tacme\t1.0\n"
        "i2\t\t\t\n"  # every feature missing
        "i3\t▁c\tacme\t3.0\n"
        "i4\t▁d\tzeta\t2.0\n"
        "i5\t▁e\tzeta\t4.0\n"
        "i6\t▁f\tacme\t6.0\n"
    )
    return root


def _load(root: Path):
    from recbole.data import create_dataset

    load_col = {
        "inter": ["user_id", "item_id", "rating", "timestamp"],
        "item": ["item_id", "title", "brand", "price"],
    }
    config = build_config(
        {"model": "SASRec", "dataset": "gaps", "data_path": str(root), "load_col": load_col}
    )
    return create_dataset(config)


def test_missing_values_are_filled_under_pandas_3(tmp_path):
    ds = _load(_write_with_missing(tmp_path))
    ratings = np.asarray(ds.inter_feat["rating"])
    assert not np.isnan(ratings).any()
    # the one missing rating becomes the mean of the others (all 4.0)
    assert ratings.tolist() == [4.0] * len(ratings)
    item = ds.item_feat
    iid = ds.token2id("item_id", "i2")
    row = item[item["item_id"] == iid].iloc[0]
    assert row["brand"] == 0  # [PAD]
    assert row["price"] == pytest.approx(np.mean([1.0, 3.0, 2.0, 4.0, 6.0]))
    assert len(row["title"]) == 0  # an empty sequence, not NaN
    other = item[item["item_id"] == ds.token2id("item_id", "i1")].iloc[0]
    assert [ds.id2token("title", t) for t in other["title"]] == ["▁a", "▁b"]


def test_recbole_fill_nan_leaves_nan_without_the_fix():
    # The cause: a chained inplace fillna on a column fills a temporary copy under pandas 3.
    frame = pd.DataFrame({"x": [1.0, np.nan]})
    frame["x"].fillna(0.0, inplace=True)
    assert np.isnan(frame["x"].iloc[1])


class Pickled:
    """Stands for what RecBole stores in its checkpoints: an arbitrary object (its Config)."""


def test_checkpoints_load_with_weights_only(tmp_path):
    from recbole_fork.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    path = save_checkpoint(
        tmp_path / "c.pth", {"state_dict": {"w": torch.ones(2)}, "config": {"a": [1]}}
    )
    assert torch.load(path, weights_only=True)["config"] == {"a": [1]}
    assert load_checkpoint(path)["state_dict"]["w"].tolist() == [1.0, 1.0]

    torch.save({"config": Pickled()}, tmp_path / "recbole.pth")
    with pytest.raises(CheckpointError, match="plain-dict"):
        load_checkpoint(tmp_path / "recbole.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")


def test_nothing_imports_ray_or_quick_start():
    code = (
        "import sys, recbole_fork, recbole_fork.run, recbole_fork.cli, recbole_fork.stock_trainer, "
        "recbole_fork.config, recbole_fork.tracking, recbole_fork.params, recbole_fork.schedulers\n"
        "bad = [m for m in ('ray', 'recbole.quick_start') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
