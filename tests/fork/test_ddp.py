"""Data parallelism under torchrun and the GPU-path settings (mfu, torch_compile).

The fast tests check the pieces in one process: torchrun's variables, the global batch
split, each rank's GPU, the peak-FLOPs table, that the shards' evaluation sums add up to
the one-process evaluation, the logged FLOP figures, resuming with more epochs. The last
one runs ``torchrun --nproc_per_node 2`` (gloo) in a loopback-only network namespace and
compares it with one process.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from recbole_fork.checkpoint import load_checkpoint
from recbole_fork.cli import _torchrun_overrides, fine_tune_main, pre_train_main
from recbole_fork.config import build_config
from recbole_fork.distributed import SINGLE, DistEnv, DistributedError, rank_gpu_id
from recbole_fork.hardware import resolve_peak_flops, table_peak_flops
from recbole_fork.run import pre_train
from recbole_fork.session import train
from recbole_fork.settings import ConfigError
from tests.conftest import REPO, RecordingTracker, run_config, trainer_for, write_atomic_dataset
from tests.netns_util import private_network

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SETTINGS = {
    "model": "SASRecX",
    "dataset": "tiny",
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
    "epochs": 1,
    "train_batch_size": 16,
    "eval_batch_size": 64,
    "hidden_size": 16,
    "inner_size": 32,
    "max_seq_length": 6,
    "num_negatives": 5,
    "learning_rate": 0.01,
    "valid_metric": "NDCG@10",
    "gpu_id": "",  # CPU even where a GPU is visible: the comparisons are of CPU runs
}


def _data(root: Path) -> Path:
    """120 users with 12 items each: 10 training items, so 2 windows of L=6 per user."""
    return write_atomic_dataset(root / "data", n_users=120, per_user=12)


def _config(data_path: Path, **overrides):
    return run_config(data_path, **{**SETTINGS, **overrides})


# ----- torchrun's variables, the global batch, each rank's GPU ------------------------------


def test_torchrun_variables():
    assert DistEnv.from_environ({}) == SINGLE and not SINGLE.enabled and SINGLE.is_main
    env = DistEnv.from_environ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert env == DistEnv(rank=3, world_size=4, local_rank=1)
    assert env.enabled and not env.is_main
    assert env.shard() == {"rank": 3, "world_size": 4} and SINGLE.shard() == {}
    # torchrun --nproc_per_node 1: one process, no process group.
    assert not DistEnv.from_environ({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}).enabled
    with pytest.raises(DistributedError, match="RANK set but WORLD_SIZE, LOCAL_RANK not"):
        DistEnv.from_environ({"RANK": "0"})
    with pytest.raises(DistributedError, match="need 0 <= RANK < WORLD_SIZE"):
        DistEnv.from_environ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_global_batch_is_split_over_ranks():
    assert DistEnv(rank=1, world_size=4).local_batch_size(64) == 16
    assert SINGLE.local_batch_size(15) == 15
    with pytest.raises(DistributedError) as err:
        DistEnv(rank=0, world_size=2).local_batch_size(15)
    assert str(err.value) == (
        "train_batch_size=15 is the global batch and must be a positive multiple of the 2 "
        "processes (WORLD_SIZE); e.g. --set train_batch_size=14"
    )


def test_batch_not_divisible_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    root = _data(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**SETTINGS, "data_path": str(root)}))
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    code = pre_train_main(
        ["-c", str(config), "-o", str(tmp_path / "x.pth"), "--set", "train_batch_size=15",
         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [
        "error: train_batch_size=15 is the global batch and must be a positive multiple of "
        "the 2 processes (WORLD_SIZE); e.g. --set train_batch_size=14"
    ]
    assert not (tmp_path / "x.pth").exists() and not (tmp_path / "mlflow.db").exists()


def test_resume_without_checkpoint_is_one_line(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**SETTINGS, "data_path": str(_data(tmp_path))}))
    missing = tmp_path / "none.pth"
    code = pre_train_main(["-c", str(config), "-o", str(missing), "--resume"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: checkpoint {missing} not found; train one first or check the path"
    ]


def test_each_rank_gets_its_own_gpu(monkeypatch):
    env = DistEnv(rank=5, world_size=8, local_rank=1)
    assert rank_gpu_id(env, {}) == "1"
    assert rank_gpu_id(env, {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}) == "5"
    assert rank_gpu_id(env, {"CUDA_VISIBLE_DEVICES": ""}) == ""  # every GPU hidden: CPU
    with pytest.raises(DistributedError, match="lists 1 GPU\\(s\\): start at most 1 process"):
        rank_gpu_id(env, {"CUDA_VISIBLE_DEVICES": "3"})
    # The command line turns it into RecBole's gpu_id, unless --set gpu_id=... is given.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert _torchrun_overrides(env, ["epochs=2"]) == ["epochs=2", "gpu_id=5"]
    assert _torchrun_overrides(env, ["gpu_id=7"]) == ["gpu_id=7"]
    assert _torchrun_overrides(SINGLE, ["epochs=2"]) == ["epochs=2"]


def test_what_torchrun_does_not_cover(tmp_path, monkeypatch, capsys):
    stock = run_config(_data(tmp_path), **{**SETTINGS, "model": "SASRec"})
    with pytest.raises(DistributedError, match="SASRec is a stock RecBole model; torchrun"):
        pre_train(stock, tmp_path / "x.pth", dist=DistEnv(rank=0, world_size=2))
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    code = fine_tune_main(["-c", "confs/fine_tune/full", "-s", "tiny", "-o", str(tmp_path / "f")])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "error: fine_tune.py runs as one process: start it without torchrun"
    )


# ----- peak FLOPs, mfu, torch_compile --------------------------------------------------------


def test_peak_flops_table():
    assert table_peak_flops("NVIDIA H100 80GB HBM3", bf16=True) == 989e12
    assert table_peak_flops("NVIDIA H200", bf16=True) == 989e12
    assert table_peak_flops("NVIDIA H100 PCIe", bf16=True) == 756e12
    assert table_peak_flops("NVIDIA A100-SXM4-80GB", bf16=True) == 312e12
    assert table_peak_flops("NVIDIA A100-SXM4-80GB", bf16=False) == 19.5e12
    assert table_peak_flops("NVIDIA A100-SXM4-80GB", bf16=False, tf32=True) == 156e12
    assert table_peak_flops("Tesla T4", bf16=True) is None
    cpu = torch.device("cpu")
    assert resolve_peak_flops(None, cpu, bf16=False) is None  # CPU: no mfu unless set
    assert resolve_peak_flops(2.5e11, cpu, bf16=False) == 2.5e11


def test_bad_peak_flops_fails_before_training(tmp_path):
    with pytest.raises(ConfigError, match="config key 'peak_flops' must be a number or null"):
        train(_config(_data(tmp_path), peak_flops="fast"), tmp_path / "x.pth")
    with pytest.raises(ConfigError, match="peak_flops=-1.0: must be a positive FLOP/s figure"):
        train(_config(_data(tmp_path), peak_flops=-1), tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()


def test_flop_figures_logged_and_compile_skipped_on_cpu(tmp_path, caplog):
    root = _data(tmp_path)
    caplog.set_level(logging.INFO, logger="recbole_fork")
    tracker = RecordingTracker()
    train(_config(root, peak_flops=1e9, torch_compile=True), tmp_path / "a.pth", tracker=tracker)
    assert "torch_compile skipped: the model runs on cpu, compiling is for CUDA" in caplog.text
    epoch0 = tracker.at(0)
    flops = epoch0["flops"]
    parts = ("flops_backbone", "flops_item_encoder", "flops_scoring")
    assert flops == sum(epoch0[k] for k in parts) > 0
    assert epoch0["achieved_flops_per_s"] == pytest.approx(flops / epoch0["epoch_time_s"])
    assert epoch0["mfu"] == pytest.approx(epoch0["achieved_flops_per_s"] / 1e9)
    assert tracker.params["flops_per_token_estimate"] > 0

    # peak_flops null on CPU: achieved FLOP/s only
    metrics = trainer_for(_config(root), tmp_path / "b.pth")._train_epoch(0)
    assert metrics["achieved_flops_per_s"] > 0 and "mfu" not in metrics


# ----- evaluation over shards -----------------------------------------------------------------


@pytest.mark.parametrize("loss_type", ["sampled_softmax", "full_ce"])
def test_shard_sums_add_up_to_one_process_evaluation(tmp_path, loss_type):
    """What each rank of a 2-process run sums, added (the all-reduce), over the total count.

    Full-ranking metrics are a function of the weights only: equal up to the order of the
    float64 sums (measured differences <= 6e-17; bound rel 1e-12). The loss matches only
    without sampled negatives (full_ce; float32 batch means over other batches: measured
    rel 7e-8, bound 1e-6); with sampled_softmax each rank draws its own negatives
    (measured about 1%, bound 5%).
    """
    trainer = trainer_for(_config(_data(tmp_path), loss_type=loss_type), tmp_path / "c.pth", seed=0)
    for phase in ("train", "valid", "test"):
        whole = trainer.evaluate(phase)
        shards = [trainer.evaluation_sums(phase, rank=r, world_size=2) for r in (0, 1)]
        count = sum(s[2] for s in shards)
        assert count == whole["count"] and all(s[2] > 0 for s in shards)
        for name in ("hr@10", "ndcg@10", "mrr@10"):
            summed = sum(s[0][name] for s in shards) / count
            assert summed == pytest.approx(whole[name], rel=1e-12, abs=1e-15)
        loss = sum(s[1] for s in shards) / count
        if loss_type == "full_ce":
            assert loss == pytest.approx(whole["loss"], rel=1e-6)
        else:
            assert loss == pytest.approx(whole["loss"], rel=0.05)  # other negatives


# ----- resuming with more epochs -------------------------------------------------------------


@pytest.mark.parametrize("scheduler", ["constant", "one_cycle"])
def test_resume_finished_run_with_more_epochs(tmp_path, scheduler):
    """A finished 1-epoch run resumed with epochs=2 trains one more epoch.

    Constant LR: exactly the run trained for 2 epochs at once. one_cycle: the schedule is
    re-planned over 2 epochs, so the LR of epoch 1 is the 2-epoch run's.
    """
    root = _data(tmp_path)
    spec = {"type": scheduler}
    whole_tracker = RecordingTracker()
    whole = train(
        _config(root, epochs=2, scheduler=spec), tmp_path / "whole.pth", tracker=whole_tracker
    )
    ckpt = tmp_path / "short.pth"
    train(_config(root, epochs=1, scheduler=spec), ckpt, tracker=RecordingTracker())
    resumed_tracker = RecordingTracker()
    resumed = train(
        _config(root, epochs=2, scheduler=spec), ckpt, tracker=resumed_tracker, resume=True
    )
    state = load_checkpoint(ckpt)["state"]
    assert state["epoch_done"] == 1 and state["planned_epochs"] == 2
    whole_state = load_checkpoint(tmp_path / "whole.pth")["state"]
    assert state["global_step"] == whole_state["global_step"]
    assert resumed_tracker.at(1)["lr"] == pytest.approx(whole_tracker.at(1)["lr"], rel=1e-12)
    if scheduler == "constant":
        assert resumed == whole
    # Resumed again with the same epochs: the stored result, no training.
    assert (
        train(
            _config(root, epochs=2, scheduler=spec), ckpt, tracker=RecordingTracker(), resume=True
        )
        == resumed
    )


# ----- torchrun, 2 processes ------------------------------------------------------------------


@pytest.mark.network_ns
def test_torchrun_two_processes_match_one_and_resume_in_one(tmp_path):
    """2 gloo processes for one epoch vs one process; then the DDP checkpoint goes on alone.

    The loss after one epoch: both runs' final weights scored by the same one-process
    evaluator (the train phase: a fixed sample of train users with fixed negatives), so
    only the weights differ. Close, not equal: each rank draws its own negatives and
    shuffles its own users, so the global batches hold other samples and negatives than
    the one-process ones; each rank uses as many samples as the smaller shard holds; DDP
    averages the ranks' mean losses (each rank weighs the same, not each supervised
    position). Bound 3%. The mean training loss over the epoch's 15 steps is noisier (it
    averages losses taken while the weights move; measured 1.697 against 1.625) and is
    bounded at 10%.

    Evaluation: the all-reduced metrics equal the one-process evaluation of rank 0's
    weights (to float64 rounding), which also shows the ranks held the same weights.
    Takes 20-35 s on 2 shared cores (two processes each import torch and RecBole).
    """
    prefix = private_network()
    root = _data(tmp_path)
    config_file = tmp_path / "tiny.yaml"
    # Accumulating 2 batches per step: DDP's no_sync on the first, the all-reduce on the second.
    settings = {**SETTINGS, "data_path": str(root), "grad_accum_steps": 2}
    config_file.write_text(yaml.safe_dump(settings))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ckpt = tmp_path / "ddp" / "run.pth"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",  # gloo on CPU even on a machine with GPUs
        "MASTER_ADDR": "127.0.0.1",
        "GLOO_SOCKET_IFNAME": "lo",  # gloo would otherwise look for the host's interface
        "PYTHONPATH": str(REPO),
    }
    cmd = [*prefix, sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", "29500",  # a namespace of its own
           str(REPO / "scripts" / "pre_train.py"), "-c", str(config_file), "-o", str(ckpt),
           "--tracking-uri", uri]  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count('"best_epoch"') == 1  # rank 0 alone prints the result

    from recbole_fork.tracking import metric_history, search_runs

    runs = search_runs("pre_train-tiny", tracking_uri=uri)
    assert len(runs) == 1  # rank 0 alone logs
    params = runs[0]["params"]
    assert params["world_size"] == "2" and params["train_batch_size_per_rank"] == "8"
    assert "achieved_flops_per_s" in runs[0]["metrics"] and "mfu" not in runs[0]["metrics"]
    ddp_loss = dict(metric_history(runs[0]["run_id"], "train_loss", tracking_uri=uri))[0]

    state = load_checkpoint(ckpt)
    assert state["state"]["world_size"] == 2 and len(state["rank_rng"]) == 2
    g0, g1 = (r["sample_generator"] for r in state["rank_rng"])
    assert not torch.equal(g0, g1)  # each rank its own negatives
    assert not any(k.startswith("module.") for k in state["model_state"])  # the bare model

    # The same config and global batch in one process.
    single = RecordingTracker()
    train(build_config(config_file), tmp_path / "single.pth", tracker=single)
    single_loss = single.at(0)["train_loss"]
    assert ddp_loss == pytest.approx(single_loss, rel=0.10)

    # The all-reduced evaluation = the one-process evaluation of the same weights.
    trainer = trainer_for(build_config(config_file), tmp_path / "unused.pth")
    model = trainer.model
    model.load_state_dict(load_checkpoint(tmp_path / "single.pth")["model_state"])
    single_after = trainer.evaluate("train")["loss"]
    model.load_state_dict(state["model_state"])
    ddp_after = trainer.evaluate("train")["loss"]
    assert ddp_after == pytest.approx(single_after, rel=0.03)
    for phase, logged, key in (
        ("valid", state["state"]["best_metrics"], "valid_{}_at_10"),
        ("test", state["state"]["final_metrics"], "best_test_{}_at_10"),
    ):
        one = trainer.evaluate(phase)
        for name in ("hr", "ndcg", "mrr"):
            assert logged[key.format(name)] == pytest.approx(one[f"{name}@10"], rel=1e-12)

    # The DDP checkpoint resumed in one process, with one more epoch, in the same MLflow run.
    code = pre_train_main(["-c", str(config_file), "-o", str(ckpt), "--resume",
                           "--set", "epochs=2", "--allow-change", "epochs",
                           "--tracking-uri", uri])  # fmt: skip
    assert code == 0
    resumed = load_checkpoint(ckpt)["state"]
    assert resumed["epoch_done"] == 1 and resumed["world_size"] == 1
    one_epoch = load_checkpoint(tmp_path / "single.pth")["state"]["global_step"]
    assert resumed["global_step"] == state["state"]["global_step"] + one_epoch
    runs = search_runs("pre_train-tiny", tracking_uri=uri)
    assert len(runs) == 1
    assert [s for s, _ in metric_history(runs[0]["run_id"], "train_loss", tracking_uri=uri)] == [
        0,
        1,
    ]
