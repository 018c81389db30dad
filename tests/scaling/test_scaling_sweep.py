"""Sweeps: the grid, run names, budgets; and a real local Ray, stopped and restarted."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recbole_fork.scaling.sweep import SweepError, expand_trials, load_sweep, run_name

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


def test_run_name_form():
    values = {
        "model": "SASRecX",
        "hidden_size": 64,
        "n_layers": 2,
        "dataset": "amazon-1M",
        "seed": 42,
    }
    assert run_name(values) == "sasrecx-d64-l2-amazon-1M-s42"
    values |= {"item_encoder": "id+text", "num_negatives": 300}
    assert run_name(values, ["num_negatives"]) == "sasrecx-d64-l2-idtext-neg300-amazon-1M-s42"


def test_expand_trials(tmp_path):
    trials = expand_trials(load_sweep(write_sweep(tmp_path)))
    assert [t.run_name for t in trials] == [
        "sasrecx-d8-l2-tiny-a-s42",
        "sasrecx-d8-l2-tiny-b-s42",
        "sasrecx-d16-l2-tiny-a-s42",
        "sasrecx-d16-l2-tiny-b-s42",
    ]
    first = trials[0]
    assert first.overrides == {
        "inner_size": 8,  # same_as_hidden resolved per trial
        "hidden_size": 8,
        "dataset": "tiny-a",
        "epochs": 2,
        "run_name": "sasrecx-d8-l2-tiny-a-s42",
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
    with pytest.raises(SweepError, match="budget.epochs has no entry for dataset 'tiny-b'"):
        expand_trials(load_sweep(write_sweep(tmp_path, budget={"epochs": {"tiny-a": 3}})))
    with pytest.raises(SweepError, match="share the run name"):
        expand_trials(load_sweep(write_sweep(tmp_path, grid={"hidden_size": [8, 8]})))


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


def test_relative_sqlite_uri_is_made_absolute(tmp_path, monkeypatch):
    from recbole_fork.tracking import resolve_tracking_uri as absolute_tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert absolute_tracking_uri(None) == f"sqlite:///{tmp_path.resolve()}/mlruns.sqlite"
    assert absolute_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert absolute_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_importing_the_package_imports_neither_ray_nor_mlflow():
    code = (
        "import sys, recbole_fork, recbole_fork.scaling.sweep, recbole_fork.scaling.report; "
        "print(sorted(m for m in ('ray', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "[]"


def _netns_prefix() -> list[str]:
    """``unshare -rn`` with loopback up, or skip saying why it is impossible here."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip (util-linux, iproute2) for a private network namespace")
    probe = subprocess.run(
        ["unshare", "-rn", "sh", "-c", "ip link set lo up"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot create a private network namespace here: {probe.stderr.strip()[:200]}")
    return ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


@pytest.mark.slow
@pytest.mark.network_ns
def test_sweep_on_local_ray_resumes_without_duplicates(tmp_path):
    """2 x 2 trials: stop after the first, restart with one planned failure, restart again."""
    prefix = _netns_prefix()
    base = {
        "model": "SASRecX",
        "seed": 42,
        "n_layers": 1,
        "fail_once": ["sasrecx-d8-l1-tiny-b-s42"],
    }
    sweep = write_sweep(tmp_path, base)
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
    assert "FAILED sasrecx-d8-l1-tiny-b-s42: " in second.stdout
    assert "planned failure of sasrecx-d8-l1-tiny-b-s42" in second.stdout

    third = sweep_run()  # only the failed trial runs again
    assert third.returncode == 0, third.stderr[-3000:]
    assert "3 already finished (skipped), 1 finished now, 0 failed, 0 left" in third.stdout

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("sweep-test")
    runs = client.search_runs([exp.experiment_id])
    finished = sorted(r.info.run_name for r in runs if r.info.status == "FINISHED")
    assert finished == [
        "sasrecx-d16-l1-tiny-a-s42",
        "sasrecx-d16-l1-tiny-b-s42",
        "sasrecx-d8-l1-tiny-a-s42",
        "sasrecx-d8-l1-tiny-b-s42",
    ]  # four, each once
    failed = [r.info.run_name for r in runs if r.info.status == "FAILED"]
    assert failed == ["sasrecx-d8-l1-tiny-b-s42"]  # the first attempt, kept as history
    for name in finished:
        assert (tmp_path / "ckpt" / name / "checkpoint.pth").read_bytes() == b"fake"
