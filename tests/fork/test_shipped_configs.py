"""The original study's shipped configs: pre-training files, its grid as sweeps, and the
fine-tuning commands written in ``confs/fine_tune/``.

* Every ``confs/pre_train/amazon-*.yaml`` trains for exactly two steps on tiny data with
  only its sizes overridden, and every other key reaches the run as the file says.
* The grid file expands to the study's 120 trials, whose architectures have exactly the
  non-embedding parameter counts the study's own MLflow store logged.
* (slow) The commands in the headers of ``confs/fine_tune/*.yaml`` run as written on the
  demo's data, from a checkpoint pre-trained with a shrunk ``amazon-100K.yaml``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recbole_fork.checkpoint import load_checkpoint
from recbole_fork.cli import pre_train_main
from recbole_fork.scaling.sweep import expand_trials, load_sweep
from tests.conftest import write_atomic_dataset

REPO = Path(__file__).resolve().parents[2]
PRETRAIN = {p.name: p for p in sorted((REPO / "confs" / "pre_train").glob("amazon-*.yaml"))}
GRID = REPO / "confs" / "sweeps" / "srt-grid.yaml"
DATASETS = ["amazon-100K", "amazon-500K", "amazon-1M", "amazon-5M", "amazon-10M"]

# Sizes of a two-step run on tiny data; nothing else is overridden. The tiny set has 20 users
# of 8 items: 6 training items each, so 5 prefixes (train_mode last_position), 100 in all,
# and batches of 50 make exactly 2 steps in 1 epoch. num_negatives and the sampled
# candidates must fit the 20-item catalog.
TINY_SIZES = {
    "n_layers": 2,
    "hidden_size": 8,
    "inner_size": 16,
    "n_heads": 2,
    "text_embedding_size": 8,
    "num_negatives": 5,
    "eval_mode": "sampled:10",
    "train_batch_size": 50,
    "eval_batch_size": 16,
    "epochs": 1,
}

# The study's 12 architectures (layers, width) and the non-embedding parameter counts its
# MLflow store logged for them (param model_non_emb_params of ../shared/data/srt_runs).
STUDY_NON_EMBEDDING = {
    (1, 32): 10_208,
    (2, 32): 16_672,
    (1, 64): 36_800,
    (2, 64): 62_016,
    (4, 64): 112_448,
    (8, 64): 213_312,
    (2, 128): 238_720,
    (4, 128): 437_888,
    (8, 128): 836_224,
    (8, 256): 3_310_848,
    (16, 256): 6_477_056,
    (24, 256): 9_643_264,
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_five_pre_training_configs_are_shipped() -> None:
    assert sorted(PRETRAIN) == sorted(f"{d}.yaml" for d in DATASETS)


@pytest.mark.parametrize("name", sorted(PRETRAIN))
def test_pre_training_config_trains_two_steps_with_only_sizes_overridden(
    name: str, tmp_path: Path, capsys, fake_tracker
) -> None:
    path = PRETRAIN[name]
    settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    data = write_atomic_dataset(
        tmp_path / "data", settings["dataset"], n_users=20, n_items=20, per_user=8, item_text=True
    )
    ckpt = tmp_path / "pre.pth"
    sets = [f"--set={k}={v}" for k, v in TINY_SIZES.items()]
    argv = ["-c", str(path), "-o", str(ckpt), "--data-path", str(data), *sets]
    assert pre_train_main(argv) == 0, capsys.readouterr().err

    checkpoint = load_checkpoint(ckpt)
    state = checkpoint["state"]
    assert (state["epoch_done"], state["global_step"]) == (0, 2)
    resolved = checkpoint["config"]
    for key, value in settings.items():
        expected = TINY_SIZES.get(key, value)
        if isinstance(value, dict):  # scheduler, load_col: merged over the defaults
            assert {k: resolved[key][k] for k in value} == value, key
        else:
            assert resolved[key] == expected, key
    assert set(TINY_SIZES) <= set(settings)  # only keys the file sets
    assert state["final_metrics"]["best_valid_mrr_at_5"] >= 0.0


def test_study_architectures_have_the_study_non_embedding_parameter_counts(
    tmp_path: Path,
) -> None:
    from recbole_fork.config import build_config
    from recbole_fork.data import build_seq_data
    from recbole_fork.params import count_parameters
    from recbole_fork.session import build_model
    from recbole_fork.settings import RunSettings

    data_path = write_atomic_dataset(tmp_path / "data", "amazon-100K", item_text=True)
    counts, data = {}, None
    for layers, width in STUDY_NON_EMBEDDING:
        sizes = {"n_layers": layers, "hidden_size": width, "inner_size": width}
        sizes |= {"text_embedding_size": width, "n_heads": 1, "data_path": str(data_path)}
        sizes["num_negatives"] = 5  # fits the tiny catalog; no parameters
        config = build_config(PRETRAIN["amazon-100K.yaml"], sizes)
        settings = RunSettings.from_config(config)
        if data is None:  # the sizes do not change the data
            data = build_seq_data(config, settings.data)
        model = build_model(settings.spec, data)
        counts[(layers, width)] = count_parameters(model).non_embedding
    assert counts == STUDY_NON_EMBEDDING


def test_grid_file_expands_to_the_study_grid() -> None:
    trials = expand_trials(load_sweep(GRID))
    assert len(trials) == 120
    names = [t.run_name for t in trials]
    assert len(set(names)) == 120
    cells = {
        (t.overrides["n_layers"], t.overrides["hidden_size"], t.overrides["dataset"])
        + (t.overrides["num_negatives"],)
        for t in trials
    }
    assert cells == {
        (layers, width, dataset, negatives)
        for layers, width in STUDY_NON_EMBEDDING
        for dataset in DATASETS
        for negatives in (100, 300)
    }
    assert names[0] == "sasrec-d32-l1-h1-text-neg100-amazon-100K-s2020"
    assert "sasrec-d256-l24-h4-text-neg300-amazon-10M-s2020" in names
    assert "sasrec-d128-l4-h2-text-neg100-amazon-5M-s2020" in names
    for t in trials:
        o = t.overrides
        assert o["inner_size"] == o["text_embedding_size"] == o["hidden_size"]
        assert (o["epochs"], o["eval_step"], o["experiment"]) == (50, 5, "srt-grid")
        assert t.checkpoint_path.parent.name == t.run_name


def test_grid_matches_the_study_store_when_present(shared_data: Path, tmp_path: Path) -> None:
    """The study's MLflow store ran exactly these 12 architectures (read from a copy)."""
    import bz2
    import sqlite3

    store = shared_data / "srt_runs" / "mlruns.sqlite.bz2"
    if not store.is_file():
        pytest.skip(f"the study's MLflow store is not at {store}")
    copy = tmp_path / "srt.sqlite"
    copy.write_bytes(bz2.decompress(store.read_bytes()))
    with sqlite3.connect(copy) as db:
        rows = db.execute(
            "select a.value, b.value, c.value from params a join params b using (run_uuid) "
            "join params c using (run_uuid) where a.key = 'n_layers' and b.key = 'hidden_size' "
            "and c.key = 'model_non_emb_params'"
        ).fetchall()
    assert {(int(a), int(b)): int(c) for a, b, c in rows} == STUDY_NON_EMBEDDING


def _header_commands(path: Path) -> list[str]:
    """The shell commands written in a config's header comment (``python ...``, with ``\\``
    continuation lines joined)."""
    lines = [ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#")]
    commands, current = [], ""
    for line in lines:
        if current or line.startswith("python "):
            current += line.rstrip("\\").strip() + " "
            if not line.endswith("\\"):
                commands.append(current.strip())
                current = ""
    return commands


@pytest.mark.slow
def test_fine_tuning_commands_run_as_written_on_the_demo_data(tmp_path: Path) -> None:
    """Demo data; the pre-training command on a shrunk amazon-100K.yaml; then every command
    of the confs/fine_tune headers, with amazon-1M read as amazon-100K (the demo's set)."""
    work = tmp_path / "work"
    (work / "confs" / "pre_train").mkdir(parents=True)
    for name in ("scripts", "etl", "recbole_fork"):
        (work / name).symlink_to(REPO / name)
    (work / "confs" / "fine_tune").symlink_to(REPO / "confs" / "fine_tune")
    shrunk = yaml.safe_load(PRETRAIN["amazon-100K.yaml"].read_text())
    shrunk |= {**TINY_SIZES, "hidden_size": 16, "inner_size": 16, "text_embedding_size": 16}
    shrunk |= {"num_negatives": 50, "eval_mode": "sampled:10000", "train_batch_size": 128}
    shrunk["eval_batch_size"] = 128
    (work / "confs" / "pre_train" / "amazon-100K.yaml").write_text(yaml.safe_dump(shrunk))
    # The commands' default MLflow store (mlruns.sqlite in work/); one torch thread, as the
    # test machine's cores are shared and these models are tiny.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)

    def run(command: str) -> None:
        argv = shlex.split(command)
        assert argv[0] == "python"
        done = subprocess.run(
            [sys.executable, *argv[1:]], cwd=work, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"

    raw, data = "data/raw", "data/scaling"
    run(f"python -m etl.synthetic --out {raw} --interactions 300000 --finetune-users 600")
    run(
        f"python scripts/scaling_datasets.py --step all --raw-dir {raw} --out-dir {data} "
        "--sizes 100K --vocab-size 2000 --workers 2 --no-progress"
    )
    pre = _header_commands(REPO / "confs" / "pre_train" / "amazon-100K.yaml")
    assert pre == [
        "python scripts/pre_train.py -c confs/pre_train/amazon-100K -o "
        "checkpoints/amazon-100K.pth --data-path data/scaling"
    ]
    run(pre[0])

    strategies = ["ewc", "from_scratch", "frozen_embeddings", "full", "progressive"]
    for strategy in strategies:
        commands = _header_commands(REPO / "confs" / "fine_tune" / f"{strategy}.yaml")
        assert len(commands) == 1, strategy
        assert re.search(r"\bamazon-1M\b", commands[0]), commands[0]
        run(commands[0].replace("amazon-1M", "amazon-100K"))
        metrics = work / "checkpoints" / f"beauty-{strategy}.metrics.json"
        assert metrics.is_file(), strategy
    runs = sorted(p.name for p in (work / "checkpoints").glob("beauty-*.pth"))
    assert runs == [f"beauty-{s}.pth" for s in strategies]
