"""The benchmarks' seed bookkeeping: statistics and verdicts (quality.py) and the ml-100k
benchmark's runs, one protocol for stock and fork models, resumable (ml100k.py)."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import ml100k
from benchmarks.quality import seed_stats, summarise_seeds, verdict
from tests.conftest import write_atomic_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_seed_stats_are_mean_sample_std_and_standard_error():
    stats = seed_stats([0.09, 0.10, 0.11])
    assert stats["mean"] == pytest.approx(0.10)
    assert stats["std"] == pytest.approx(0.01)  # n - 1 in the denominator
    assert stats["se"] == pytest.approx(0.01 / math.sqrt(3))
    assert stats["n"] == 3
    assert seed_stats([0.5]) == {"mean": 0.5, "std": None, "se": None, "n": 1}
    assert seed_stats([])["n"] == 0


def test_verdict_words_follow_one_standard_error():
    stats = {"mean": 0.0935, "se": 0.0019}
    assert verdict(stats, 0.0921) == "matches"  # 0.0916 <= 0.0921 <= 0.0954
    assert verdict(stats, 0.0915) == "exceeds"  # mean - se = 0.0916 > 0.0915
    assert verdict(stats, 0.0955) == "below"  # mean + se = 0.0954 < 0.0955
    assert verdict({"mean": 0.0935, "se": None}, 0.0921) == "n/a"


def test_summary_over_finished_seeds_against_the_published_figures():
    runs = {
        "2020": {
            "seed": 2020,
            "finished": True,
            "test_hr_at_10": 0.0935,
            "test_ndcg_at_10": 0.0568,
            "valid_ndcg_at_10": 0.0695,
        },  # fmt: skip
        "2021": {
            "seed": 2021,
            "finished": True,
            "test_hr_at_10": 0.0931,
            "test_ndcg_at_10": 0.0572,
            "valid_ndcg_at_10": 0.0702,
        },  # fmt: skip
        "2022": {
            "seed": 2022,
            "finished": False,
            "test_hr_at_10": 0.0,
            "test_ndcg_at_10": 0.0,
            "valid_ndcg_at_10": 0.0,
        },  # fmt: skip
    }
    summary = summarise_seeds("sasrec-id", runs)
    assert summary["seeds"] == [2020, 2021]  # the unfinished seed is left out
    assert summary["stats"]["test_ndcg_at_10"]["mean"] == pytest.approx(0.0570)
    # std = 0.0004 / sqrt(2), se = std / sqrt(2) = 0.0002: HR 0.0933 - 0.0002 > 0.0921 and
    # NDCG 0.0570 - 0.0002 > 0.0531.
    assert summary["stats"]["test_hr_at_10"]["se"] == pytest.approx(0.0002)
    assert summary["verdict"] == {"test_hr_at_10": "exceeds", "test_ndcg_at_10": "exceeds"}
    close = {k: {**v, "test_hr_at_10": v["test_hr_at_10"] - 0.0011} for k, v in runs.items()}
    assert summarise_seeds("sasrec-id", close)["verdict"]["test_hr_at_10"] == "matches"
    assert "verdict" not in summarise_seeds("wukong-id", runs)  # no published figure


TINY = """dataset: tiny
data_path: {data}
hidden_size: 8
inner_size: 16
n_layers: 1
n_heads: 1
max_seq_length: 5
train_batch_size: 64
eval_batch_size: 64
learning_rate: 0.01
topk: [10]
valid_metric: NDCG@10
seed: 2020
use_gpu: false
"""


@pytest.fixture
def tiny_runs(tmp_path, monkeypatch):
    data = write_atomic_dataset(tmp_path / "data")
    stock = tmp_path / "stock.yaml"
    stock.write_text(TINY.format(data=data) + "model: SASRec\nloss_type: CE\nscheduler:\n  type: one_cycle\n")  # fmt: skip
    fork = tmp_path / "fork.yaml"
    fork.write_text(TINY.format(data=data) + "model: SASRecX\nnum_negatives: 5\n")
    monkeypatch.setattr(ml100k, "CONFIGS", {"recbole-sasrec": str(stock), "sasrec": str(fork)})
    return tmp_path


def test_ml100k_runs_stock_and_fork_under_one_protocol_and_skips_recorded_seeds(tiny_runs, capsys):
    out, work = tiny_runs / "ml.json", tiny_runs / "work"
    argv = ["--mode", "equal", "--epochs", "2", "--seeds", "1", "--threads", "1",
            "--work-dir", str(work), "--out", str(out)]  # fmt: skip
    assert ml100k.main(argv) == 0
    results = json.loads(out.read_text())["equal"]
    for name in ("recbole-sasrec", "sasrec"):
        run = results[name]
        entry = run["runs"]["2020"]
        assert run["overrides"] == ml100k.mode_overrides("equal", 2, 100, 5)
        assert entry["epochs"] == 2 and [h["epoch"] for h in entry["history"]] == [0, 1]
        assert 0.0 <= entry["test_ndcg_at_10"] <= entry["test_hr_at_10"] <= 1.0
        assert entry["wall_s"] > 0 and entry["cpu_s"] > 0 and entry["resumed"] is False
        assert run["summary"]["test_ndcg_at_10"]["mean"] == entry["test_ndcg_at_10"]
        assert all("epoch_time_s" in h for h in entry["history"])
    # The stock trainer logs its evaluation time and CPU seconds per epoch too.
    stock_history = results["recbole-sasrec"]["runs"]["2020"]["history"]
    assert all(h["valid_time_s"] > 0 and h["epoch_cpu_s"] > 0 for h in stock_history)
    capsys.readouterr()
    assert ml100k.main(argv) == 0  # a rerun trains nothing
    assert capsys.readouterr().out.count("recorded, skipped") == 2
    assert ml100k.main([*argv, "--report"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| run | config | seeds | test HR@10") and len(table) == 4
    ndcg = results["sasrec"]["runs"]["2020"]["test_ndcg_at_10"]
    assert table[3].startswith("| sasrec |") and f"| {ndcg:.4f} |" in table[3]


def test_ml100k_early_mode_stops_on_patience_with_a_constant_lr():
    over = ml100k.mode_overrides("early", 10, 100, 3)
    assert "scheduler.type=constant" in over and "stopping_step=3" in over
    assert "epochs=100" in over and "eval_step=1" in over


def test_shipped_ml100k_configs_read_recbole_bundled_copy():
    """The shipped ml-100k configs name no data_path, and the fork reads only the one it is
    given: the benchmark names RecBole's bundled copy, which holds the atomic files."""
    from pathlib import Path

    import yaml

    for conf in ml100k.CONFIGS.values():
        assert "data_path" not in yaml.safe_load((ml100k.REPO / conf).read_text())
    assert (Path(ml100k.ml100k_data_path()) / "ml-100k" / "ml-100k.inter").is_file()


def test_time_to_levels_times_each_side_to_its_first_evaluation_at_each_share():
    """training.py --part positions: stock's seconds are its epochs' training time summed up to
    the first epoch at a share of its best; SASRecX's are its running total there."""
    from benchmarks.training import _time_to_levels

    stock = [
        {"epoch": 0, "epoch_time_s": 300.0, "valid_ndcg_at_10": 0.05},
        {"epoch": 1, "epoch_time_s": 300.0, "valid_ndcg_at_10": 0.099},
        {"epoch": 2, "epoch_time_s": 300.0, "valid_ndcg_at_10": 0.10},
    ]
    fork = [
        {"epoch": 0, "train_s": 5.0, "valid_ndcg_at_10": 0.095},
        {"epoch": 1, "train_s": 10.0, "valid_ndcg_at_10": 0.0995},
    ]
    levels = _time_to_levels(stock, fork, target=0.10)
    assert levels["0.9"] == {
        "valid_ndcg_at_10": pytest.approx(0.09),
        "stock_epoch": 1,
        "stock_train_s": 600.0,
        "sasrecx_epoch": 0,
        "sasrecx_train_s": 5.0,
        "train_ratio": pytest.approx(5 / 600),
    }
    assert levels["0.99"]["sasrecx_train_s"] == 10.0 and levels["0.99"]["stock_train_s"] == 600.0
    assert levels["1"] is None  # SASRecX never reached 0.10
