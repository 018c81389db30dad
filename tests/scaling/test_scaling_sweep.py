"""Sweeps: the grid, run names, budgets; and a real local Ray, stopped and restarted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recbole_fork.errors import UserError
from recbole_fork.scaling.sweep import SweepError, expand_trials, load_sweep
from tests.netns_util import private_network

REPO = Path(__file__).resolve().parents[2]


def write_sweep(tmp_path: Path, base_values: dict | None = None, **changes) -> Path:
    """A 2 x 2 sweep over fake_trainable in tmp_path; ``changes`` edit the sweep file."""
    base = tmp_path / "base.yaml"
    values = {"model": "SASRecX", "seed": 42, "n_layers": 2, "hidden_size": 64}
    base.write_text(yaml.safe_dump(base_values or values))
    spec = {
        "base_config": str(base),
        "experiment": "sweep-test",
        "grid": {"hidden_size": [8, 16], "dataset": ["tiny-a", "tiny-b"]},
        "inner_size": "same_as_hidden",
        "budget": {"epochs": 2},
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "trainable": "tests.scaling.scaling_fake_trainable.pre_train",
        "config_builder": "tests.scaling.scaling_fake_trainable.build_config",
    }
    spec.update(changes)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_trials_are_named_as_the_same_run_alone(tmp_path):
    """A sweep names a trial from its resolved settings: a model default the base config leaves
    unset (n_heads) is in the name, as it is for the same run started alone."""
    from recbole_fork.config import build_config
    from recbole_fork.naming import run_name
    from recbole_fork.settings import RunSettings

    sweep = write_sweep(tmp_path, grid={"hidden_size": [8], "dataset": ["tiny-a"]})
    (trial,) = expand_trials(load_sweep(sweep))
    alone = build_config(tmp_path / "base.yaml", {"hidden_size": 8, "dataset": "tiny-a"})
    assert (
        trial.run_name
        == run_name(RunSettings.from_config(alone))
        == "sasrec-d8-l2-h2-id-tiny-a-s42"
    )
    with pytest.raises(UserError, match="config key 'hidden_size' must be an integer"):
        expand_trials(
            load_sweep(write_sweep(tmp_path, grid={"hidden_size": ["big"], "dataset": ["a"]}))
        )


def test_expand_trials(tmp_path):
    trials = expand_trials(load_sweep(write_sweep(tmp_path)))
    assert [t.run_name for t in trials] == [
        "sasrec-d8-l2-h2-id-tiny-a-s42",
        "sasrec-d8-l2-h2-id-tiny-b-s42",
        "sasrec-d16-l2-h2-id-tiny-a-s42",
        "sasrec-d16-l2-h2-id-tiny-b-s42",
    ]
    first = trials[0]
    assert first.overrides == {
        "inner_size": 8,  # same_as_hidden resolved per trial
        "hidden_size": 8,
        "dataset": "tiny-a",
        "epochs": 2,
        "run_name": "sasrec-d8-l2-h2-id-tiny-a-s42",
        "experiment": "sweep-test",
    }
    assert first.checkpoint_path == tmp_path / "ckpt" / first.run_name / "checkpoint.pth"


def test_token_budget_sets_epochs_per_dataset(tmp_path):
    data = tmp_path / "data"
    for name, rows in (("tiny-a", 300), ("tiny-b", 1000)):
        (data / name).mkdir(parents=True)
        lines = ["user_id:token\titem_id:token"] + [f"u{i}\ti{i}" for i in range(rows)]
        (data / name / f"{name}.inter").write_text("\n".join(lines) + "\n")
    spec = load_sweep(write_sweep(tmp_path, budget={"tokens": 2500}, data_path=str(data)))
    epochs = {t.overrides["dataset"]: t.overrides["epochs"] for t in expand_trials(spec)}
    assert epochs == {"tiny-a": 9, "tiny-b": 3}  # ceil(2500 / 300), ceil(2500 / 1000)
    assert expand_trials(spec)[0].overrides["data_path"] == str(data)


def test_bad_sweep_files(tmp_path):
    with pytest.raises(SweepError, match="unknown key 'grids'"):
        load_sweep(write_sweep(tmp_path, grids={}))
    with pytest.raises(SweepError, match="'budget' must be"):
        load_sweep(write_sweep(tmp_path, budget={"steps": 3}))
    with pytest.raises(SweepError, match="'budget' must be"):
        load_sweep(write_sweep(tmp_path, budget={"epochs": 2, "flops": [1e12]}))
    with pytest.raises(SweepError, match="budget.epochs has no entry for dataset 'tiny-b'"):
        expand_trials(load_sweep(write_sweep(tmp_path, budget={"epochs": {"tiny-a": 3}})))
    with pytest.raises(SweepError, match="share the run name"):
        expand_trials(
            load_sweep(write_sweep(tmp_path, grid={"hidden_size": [8, 8], "dataset": ["a"]}))
        )


def test_flops_budgets_tuning_and_seeds_cross_the_grid(tmp_path):
    """2 widths x 2 budgets x (2 or 3 learning rates per width) x 2 seeds, names all distinct."""
    sweep = write_sweep(
        tmp_path,
        grid={"hidden_size": [8, 16], "dataset": ["tiny-a"]},
        budget={"flops": [1.0e12, 3.0e12]},
        tune={"learning_rate": {"hidden_size": {8: [0.001, 0.003], 16: [0.0003, 0.001, 0.003]}},
              "weight_decay": [0.01]},
        seeds=[2020, 2021],
    )  # fmt: skip
    trials = expand_trials(load_sweep(sweep))
    assert len(trials) == (2 + 3) * 2 * 2
    names = [t.run_name for t in trials]
    assert len(set(names)) == len(names)
    assert names[:4] == [
        "sasrec-d8-l2-h2-id-lr0.001-wd0.01-c1e12-tiny-a-s2020",
        "sasrec-d8-l2-h2-id-lr0.001-wd0.01-c1e12-tiny-a-s2021",
        "sasrec-d8-l2-h2-id-lr0.003-wd0.01-c1e12-tiny-a-s2020",
        "sasrec-d8-l2-h2-id-lr0.003-wd0.01-c1e12-tiny-a-s2021",
    ]
    first = trials[0].overrides
    assert first["train_flops_budget"] == 1.0e12 and "epochs" not in first  # FLOPs stop the run
    assert (first["learning_rate"], first["weight_decay"], first["seed"]) == (0.001, 0.01, 2020)
    lrs = {t.overrides["learning_rate"] for t in trials if t.overrides["hidden_size"] == 16}
    assert lrs == {0.0003, 0.001, 0.003}


def test_bad_budget_tune_and_seeds(tmp_path):
    with pytest.raises(SweepError, match="budget.flops must be a non-empty list of FLOPs > 0"):
        load_sweep(write_sweep(tmp_path, budget={"flops": [1e12, -1]}))
    with pytest.raises(SweepError, match="budget.flops repeats"):
        load_sweep(write_sweep(tmp_path, budget={"flops": [1e12, 1e12]}))
    with pytest.raises(SweepError, match="keyed by 'n_layers', which is not a grid key"):
        load_sweep(write_sweep(tmp_path, tune={"learning_rate": {"n_layers": {2: [0.1]}}}))
    with pytest.raises(SweepError, match="has no list for hidden_size = 16"):
        load_sweep(write_sweep(tmp_path, tune={"learning_rate": {"hidden_size": {8: [0.1]}}}))
    with pytest.raises(SweepError, match="'hidden_size' is both tuned and in the grid"):
        load_sweep(write_sweep(tmp_path, tune={"hidden_size": [8, 16]}))
    with pytest.raises(SweepError, match="either in 'seeds' or as grid key 'seed'"):
        load_sweep(write_sweep(tmp_path, seeds=[1, 2], grid={"seed": [1, 2], "dataset": ["a"]}))


def test_finished_runs_are_skipped_by_name(tmp_path):
    """MLflow decides: FINISHED names are skipped, a FAILED one is pending again."""
    from recbole_fork.scaling.sweep import run_sweep
    from recbole_fork.tracking import Tracker

    spec = load_sweep(write_sweep(tmp_path))
    names = [t.run_name for t in expand_trials(spec)]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for name, status in zip(names, ["FINISHED", "FAILED", "FINISHED", "RUNNING"], strict=True):
        tracker = Tracker(spec.experiment, name, tracking_uri=uri)
        if status != "RUNNING":  # a run whose driver was killed stays RUNNING
            tracker.finish(status)
    result = run_sweep(spec, tracking_uri=uri, max_trials=0)  # plan only: Ray never starts
    assert result.skipped == [names[0], names[2]]
    assert result.not_launched == [names[1], names[3]]
    assert (result.finished, result.failed) == ([], {})
    assert "2 already finished (skipped), 0 finished now, 0 failed, 2 left" in result.summary()


def test_budgeted_trials_launch_smallest_budget_first(tmp_path):
    """With compute budgets the pending trials go smallest budget first (grid order within
    a budget), so an interrupted sweep holds whole IsoFLOP profiles; planned keeps grid order."""
    from recbole_fork.scaling.sweep import run_sweep

    spec = load_sweep(
        write_sweep(
            tmp_path,
            grid={"hidden_size": [8, 16], "dataset": ["tiny-a"]},
            budget={"flops": [3.0e12, 1.0e12]},
        )
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_sweep(spec, tracking_uri=uri, max_trials=0)  # plan only: Ray never starts
    assert result.planned == [
        "sasrec-d8-l2-h2-id-c3e12-tiny-a-s42",
        "sasrec-d8-l2-h2-id-c1e12-tiny-a-s42",
        "sasrec-d16-l2-h2-id-c3e12-tiny-a-s42",
        "sasrec-d16-l2-h2-id-c1e12-tiny-a-s42",
    ]
    assert result.not_launched == [
        "sasrec-d8-l2-h2-id-c1e12-tiny-a-s42",
        "sasrec-d16-l2-h2-id-c1e12-tiny-a-s42",
        "sasrec-d8-l2-h2-id-c3e12-tiny-a-s42",
        "sasrec-d16-l2-h2-id-c3e12-tiny-a-s42",
    ]


def test_relative_sqlite_uri_is_made_absolute(tmp_path, monkeypatch):
    from recbole_fork.tracking import resolve_tracking_uri as absolute_tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert absolute_tracking_uri(None) == f"sqlite:///{tmp_path.resolve()}/mlruns.sqlite"
    assert absolute_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert absolute_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_cluster_address_resources_and_worker_path_reach_ray(tmp_path, monkeypatch):
    """--ray-address and --cpus/--gpus-per-trial as Ray and Tune receive them; Ray never starts."""
    ray = pytest.importorskip("ray")
    from ray import tune

    from tests.scaling.scaling_scripts import sweep_main

    seen = {}

    class FakeTuner:
        def __init__(self, trainable, **kwargs):
            seen["trainable"] = trainable

        def fit(self):
            return []

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.setdefault("init", kwargs))
    monkeypatch.setattr(ray, "shutdown", lambda: seen.setdefault("shutdown", True))
    monkeypatch.setattr(tune, "Tuner", FakeTuner)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    sweep = write_sweep(tmp_path)
    code = sweep_main(["-c", str(sweep), "--ray-address", "127.0.0.1:6379",
                       "--cpus-per-trial", "2", "--gpus-per-trial", "1",
                       "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])  # fmt: skip
    assert code == 1  # the fake Tuner ran nothing: no trial has a FINISHED run
    # The workers find the project (the sweep file's folder here) and the driver's path.
    pythonpath = f"{sweep.resolve().parent}{os.pathsep}{REPO}"
    assert seen["init"] == {
        "address": "127.0.0.1:6379",
        "runtime_env": {"env_vars": {"PYTHONPATH": pythonpath}},
    }
    assert seen["trainable"]._resources.required_resources == {"CPU": 2.0, "GPU": 1.0}
    assert seen["shutdown"]


RECORDED: list[dict] = []


def record_config(config, checkpoint_path, *, resume=False, tracking_uri=None) -> dict:
    """A trainable that keeps the config it was given."""
    RECORDED.append(dict(config))
    return {"best_test_loss": 1.5}


@pytest.mark.parametrize(("gpu_ids", "gpu_id"), [(["2", "3"], "2,3"), ([], None)])
def test_trial_trains_on_the_gpus_ray_reserved(tmp_path, monkeypatch, gpu_ids, gpu_id):
    """RecBole would reset CUDA_VISIBLE_DEVICES to its gpu_id '0': the trial names Ray's GPUs."""
    ray = pytest.importorskip("ray")
    from ray import tune

    from recbole_fork.scaling.sweep import run_trial

    reports = []
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: gpu_ids)
    monkeypatch.setattr(tune, "report", reports.append)
    RECORDED.clear()
    base = tmp_path / "base.yaml"
    base.write_text("model: SASRecX\n")
    trial = {
        "run_name": "sasrecx-tiny-s42",
        "base_config": str(base),
        "overrides": {"epochs": 1},
        "checkpoint_path": str(tmp_path / "ckpt" / "checkpoint.pth"),
        "trainable": f"{__name__}.record_config",
        "config_builder": "tests.scaling.scaling_fake_trainable.build_config",
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    run_trial({"trial": trial})
    assert RECORDED[0].get("gpu_id") == gpu_id
    assert RECORDED[0]["epochs"] == 1
    assert reports == [{"best_test_loss": 1.5, "trial_done": 1.0}]


def test_importing_the_package_imports_neither_ray_nor_mlflow():
    code = (
        "import sys, recbole_fork, recbole_fork.scaling.sweep, recbole_fork.scaling.report; "
        "print(sorted(m for m in ('ray', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
@pytest.mark.network_ns
def test_sweep_on_local_ray_resumes_without_duplicates(tmp_path):
    """2 x 2 trials: stop after the first, restart with one planned failure, restart again."""
    prefix = private_network()
    base = {"model": "SASRecX", "seed": 42, "n_layers": 1}
    sweep = write_sweep(tmp_path, base)
    # The fake trainable fails these trials once (a file beside the base config: the base
    # config itself must be a valid training config, since trials are named from it).
    (tmp_path / "fail_once.yaml").write_text(yaml.safe_dump(["sasrec-d8-l1-h2-id-tiny-b-s42"]))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",  # Ray 2.60 turns token authentication on by default
        "PYTHONPATH": str(REPO),  # the workers import tests.scaling.scaling_fake_trainable
        "MLFLOW_TRACKING_URI": uri,
    }
    cmd = [*prefix, sys.executable, str(REPO / "scripts" / "sweep.py"), "-c", str(sweep),
           "--num-cpus", "2", "--max-concurrent", "2", "--tracking-uri", uri]  # fmt: skip

    def sweep_run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*cmd, *extra], env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path
        )

    first = sweep_run("--max-trials", "1")  # "stopped" after its first trial
    assert first.returncode == 0, first.stderr[-3000:]
    assert "0 already finished (skipped), 1 finished now, 0 failed, 3 left" in first.stdout

    second = sweep_run()  # d8-l1-tiny-b fails once; the other two still finish
    assert second.returncode == 1, second.stderr[-3000:]
    assert "1 already finished (skipped), 2 finished now, 1 failed, 0 left" in second.stdout
    assert "FAILED sasrec-d8-l1-h2-id-tiny-b-s42: " in second.stdout
    assert "planned failure of sasrec-d8-l1-h2-id-tiny-b-s42" in second.stdout

    third = sweep_run()  # only the failed trial runs again
    assert third.returncode == 0, third.stderr[-3000:]
    assert "3 already finished (skipped), 1 finished now, 0 failed, 0 left" in third.stdout

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("sweep-test")
    runs = client.search_runs([exp.experiment_id])
    finished = sorted(r.info.run_name for r in runs if r.info.status == "FINISHED")
    assert finished == [
        "sasrec-d16-l1-h2-id-tiny-a-s42",
        "sasrec-d16-l1-h2-id-tiny-b-s42",
        "sasrec-d8-l1-h2-id-tiny-a-s42",
        "sasrec-d8-l1-h2-id-tiny-b-s42",
    ]  # four, each once
    failed = [r.info.run_name for r in runs if r.info.status == "FAILED"]
    assert failed == ["sasrec-d8-l1-h2-id-tiny-b-s42"]  # the first attempt, kept as history
    for name in finished:
        assert (tmp_path / "ckpt" / name / "checkpoint.pth").read_bytes() == b"fake"


def test_every_shipped_sweep_file_expands_to_its_stated_trials():
    """Each sweep file in confs/sweeps/ loads and expands (no data needed, except a token
    budget, which names the missing dataset), to the trial count its header states."""
    from pathlib import Path

    sweeps = Path(__file__).resolve().parents[2] / "confs" / "sweeps"
    stated = {"beauty-size.yaml": 4, "beauty-study.yaml": 72, "capacity-calibration.yaml": 10,
              "cpu-study.yaml": 192, "srt-grid.yaml": 120, "tiny.yaml": 8}  # fmt: skip
    counts = {}
    for path in sorted(sweeps.glob("*.yaml")):
        if path.name == "cpu-small.yaml":  # a token budget reads the dataset's size
            with pytest.raises(UserError, match="build the dataset first"):
                expand_trials(load_sweep(path))
            continue
        trials = expand_trials(load_sweep(path))
        assert len({t.run_name for t in trials}) == len(trials), path.name
        counts[path.name] = len(trials)
    assert counts == stated
