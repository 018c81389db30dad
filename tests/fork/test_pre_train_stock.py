"""The first end-to-end slice: stock RecBole SASRec through scripts/pre_train.py."""

from __future__ import annotations

import json

import pytest
import torch

from recbole_fork.cli import pre_train_main
from recbole_fork.tracking import metric_history, search_runs

TINY = [
    "--set", "hidden_size=8", "--set", "inner_size=16", "--set", "n_layers=1", "--set", "n_heads=1",
    "--set", "max_seq_length=5", "--set", "train_batch_size=64", "--set", "eval_batch_size=64",
    "--set", "show_progress=false", "--set", "learning_rate=0.01",
]  # fmt: skip


@pytest.fixture
def stock_config(tmp_path):
    path = tmp_path / "stock.yaml"
    path.write_text(
        "model: SASRec\ndataset: tiny\nloss_type: CE\nepochs: 3\nscheduler:\n  type: one_cycle\n"
    )
    return path


def test_stock_sasrec_trains_logs_and_checkpoints(
    tmp_path, tiny_dataset, stock_config, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "ckpt" / "sasrec.pth"
    argv = [
        "-c",
        str(stock_config.with_suffix("")),
        "-o",
        str(ckpt),
        "--data-path",
        str(tiny_dataset),
        *TINY,
    ]
    assert pre_train_main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert json.loads((ckpt.parent / "sasrec.metrics.json").read_text()) == result
    assert 0.0 <= result["best_test_ndcg_at_10"] <= 1.0
    assert result["params_total"] == result["params_embedding"] + result["params_non_embedding"]

    state = torch.load(ckpt, weights_only=True)  # a plain dict, no pickled Config
    assert state["config"]["model"] == "SASRec" and state["scheduler"]["total_steps"] >= 3

    (run,) = search_runs("pre_train-tiny")
    assert run["status"] == "FINISHED"
    assert run["run_name"] == "recbole-sasrec-d8-l1-tiny-s2020"
    assert int(run["params"]["params_total"]) == result["params_total"]
    assert run["params"]["scheduler.type"] == "one_cycle"
    # Scored by the fork's evaluator by default: the fork's metric names and protocol.
    assert run["params"]["eval_protocol"] == "full, history excluded"
    assert run["params"]["eval_split_differs_users"] == "0"
    assert "best_test_hr_at_10" in result and "best_valid_hr_at_10" in result
    lrs = [v for _, v in metric_history(run["run_id"], "lr")]
    assert len(lrs) == 3 and lrs[0] < lrs[1]  # one-cycle warms up over the run
    assert [s for s, _ in metric_history(run["run_id"], "valid_ndcg_at_10")] == [0, 1, 2]
    assert run["metrics"]["best_test_ndcg_at_10"] == pytest.approx(result["best_test_ndcg_at_10"])


def test_user_errors_are_one_line(tmp_path, tiny_dataset, stock_config, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = str(tmp_path / "x.pth")
    assert pre_train_main(["-c", str(stock_config), "-o", out, "--set", "epoch=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "'epoch'" in err and "epochs" in err and "\n" not in err
    argv = ["-c", str(stock_config), "-o", out, "--resume", "--data-path", str(tiny_dataset)]
    assert pre_train_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "x.pth not found" in err and "\n" not in err


@pytest.mark.parametrize("evaluator", ["fork", "recbole"])
def test_resumed_run_without_a_better_epoch_reports_the_best_one(
    tmp_path, tiny_dataset, stock_config, monkeypatch, capsys, evaluator
):
    """A resumed stock run whose remaining epochs bring no better valid score (here: none
    remain after the best epoch) still reports the best epoch's valid and test metrics:
    RecBole's loop sets its best valid result only when an epoch improves on it."""
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "sasrec.pth"
    argv = ["-c", str(stock_config), "-o", str(ckpt), "--data-path", str(tiny_dataset), *TINY]
    argv += ["--set", f"stock_evaluator={evaluator}"]
    assert pre_train_main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    best_epoch = torch.load(ckpt, weights_only=True)["epoch"]
    # The best epoch becomes the last one: resuming trains nothing.
    again = [*argv, "--resume", "--allow-change", "epochs", "--set", f"epochs={best_epoch + 1}"]
    assert pre_train_main(again) == 0
    resumed = json.loads(capsys.readouterr().out)
    best = {k: v for k, v in first.items() if k.startswith(("best_valid_", "best_test_"))}
    assert "best_valid_ndcg_at_10" in best and "best_test_ndcg_at_10" in best
    assert {k: resumed.get(k) for k in best} == pytest.approx(best, abs=1e-12)


def _history(ckpt, key="valid_ndcg_at_10"):
    state = torch.load(ckpt, weights_only=True)
    return dict(
        metric_history(state["mlflow_run_id"], key, tracking_uri=state["mlflow_tracking_uri"])
    )


def test_cut_run_resumes_after_its_last_epoch_as_if_never_cut(
    tmp_path, tiny_dataset, monkeypatch, capsys
):
    """RecBole checkpoints the best epoch only; the end-of-epoch state beside it (weights,
    optimizer, counters, RNG) makes a run cut after epoch 1 and resumed go on exactly as the
    uncut run (constant LR, dropout on: the RNG states matter)."""
    monkeypatch.chdir(tmp_path)
    conf = tmp_path / "stock.yaml"
    conf.write_text("model: SASRec\ndataset: tiny\nloss_type: CE\nscheduler:\n  type: constant\n")
    base = ["-c", str(conf), "--data-path", str(tiny_dataset), *TINY]
    whole_ckpt, cut_ckpt = tmp_path / "whole" / "s.pth", tmp_path / "cut" / "s.pth"
    assert pre_train_main([*base, "-o", str(whole_ckpt), "--set", "epochs=4"]) == 0
    whole = json.loads(capsys.readouterr().out)
    assert pre_train_main([*base, "-o", str(cut_ckpt), "--set", "epochs=2"]) == 0
    capsys.readouterr()
    assert (cut_ckpt.parent / "s.pth.last").is_file()
    again = [*base, "-o", str(cut_ckpt), "--resume", "--allow-change", "epochs"]
    assert pre_train_main([*again, "--set", "epochs=4"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    best = {k: v for k, v in whole.items() if k.startswith(("best_valid_", "best_test_"))}
    assert {k: resumed[k] for k in best} == best
    assert _history(cut_ckpt) == _history(whole_ckpt)
    assert sorted(_history(cut_ckpt, "train_loss")) == [0, 1, 2, 3]


def test_run_that_stopped_early_resumes_without_training(
    tmp_path, tiny_dataset, stock_config, monkeypatch, capsys
):
    """A run that early stopping ended is finished: resuming it (even with more epochs)
    trains nothing and reports the same best metrics."""
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "s.pth"
    argv = ["-c", str(stock_config), "-o", str(ckpt), "--data-path", str(tiny_dataset), *TINY]
    assert pre_train_main([*argv, "--set", "epochs=2"]) == 0
    first = json.loads(capsys.readouterr().out)
    last_path = tmp_path / "s.pth.last"
    last = torch.load(last_path, weights_only=True)
    assert last["epoch"] == 1 and last["stopped"] is False
    last["stopped"] = True  # as if the patience had run out at epoch 1
    torch.save(last, last_path)
    again = [*argv, "--resume", "--allow-change", "epochs", "--set", "epochs=5"]
    assert pre_train_main(again) == 0
    resumed = json.loads(capsys.readouterr().out)
    best = {k: v for k, v in first.items() if k.startswith(("best_valid_", "best_test_"))}
    assert {k: resumed.get(k) for k in best} == pytest.approx(best, abs=1e-12)
    assert sorted(_history(ckpt, "train_loss")) == [0, 1]
