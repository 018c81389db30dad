"""Hostile and careless input on the training side (issue 17): no unpickling, nothing finished
overwritten unasked, no silently wrong resume, one line for every user-caused error.

One test (or one parametrised test) per failure class. The command lines run in-process
(``pre_train_main`` / ``fine_tune_main``) on a tiny dataset, from ``tmp_path`` as working
directory, so their MLflow files land there.
"""

from __future__ import annotations

import errno
import hashlib
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from recbole_fork.checkpoint import CheckpointError, load_checkpoint
from recbole_fork.cli import fine_tune_main, pre_train_main
from recbole_fork.data import build_seq_data
from recbole_fork.data.dataset import SeqDataset
from recbole_fork.data.seq_data import DataError
from recbole_fork.settings import ConfigError
from recbole_fork.trainer import SeqTrainer
from tests.conftest import run_config, write_atomic_dataset
from tests.scaling.scaling_scripts import scaling_report_main, sweep_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[2]

FORK = {
    "model": "SASRecX", "dataset": "tiny", "epochs": 1, "hidden_size": 8, "inner_size": 16,
    "n_layers": 1, "n_heads": 1, "max_seq_length": 5, "train_batch_size": 64,
    "eval_batch_size": 64, "num_negatives": 5, "show_progress": False, "use_gpu": False,
    "scheduler": {"type": "constant"}, "learning_rate": 0.01,
}  # fmt: skip
STOCK = {
    "model": "SASRec", "dataset": "tiny", "loss_type": "CE", "epochs": 1, "hidden_size": 8,
    "inner_size": 16, "n_layers": 1, "n_heads": 1, "max_seq_length": 5,
    "train_batch_size": 64, "eval_batch_size": 64, "show_progress": False, "use_gpu": False,
}  # fmt: skip


def _write_config(path: Path, settings: dict) -> Path:
    path.write_text(json.dumps(settings))
    return path


@pytest.fixture
def fork_config(tmp_path: Path) -> Path:
    return _write_config(tmp_path / "fork.json", FORK)


@pytest.fixture
def stock_config(tmp_path: Path) -> Path:
    return _write_config(tmp_path / "stock.json", STOCK)


@pytest.fixture
def work(tmp_path: Path, monkeypatch) -> Path:
    """A clean working directory (MLflow's default sqlite files land there)."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def _one_line_error(capsys) -> str:
    """The error line a command printed last on stderr (log lines may come before it, a
    traceback never)."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1] if err else ""
    assert last.startswith("error: "), err
    return last


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _no_data_load(monkeypatch) -> None:
    """Make any dataset load fail loudly: a check that must come first did not."""

    def loaded(*args, **kwargs):
        raise AssertionError("the dataset was loaded before the check")

    monkeypatch.setattr(SeqDataset, "_from_scratch", loaded)
    from recbole.data.dataset import Dataset

    monkeypatch.setattr(Dataset, "_from_scratch", loaded)


# ----- 1. no unpickling, anywhere ----------------------------------------------------------


class _Marker:
    """A pickle that, when loaded, creates ``path`` (standing for arbitrary code)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(_Marker(marker)))


def test_stock_path_unpickles_nothing(work, tiny_dataset, stock_config, capsys):
    """Marker pickles at every path RecBole 1.2.1 would unpickle (its default checkpoint_dir
    ./saved, a user-set checkpoint_dir, dataset_save_path, dataloaders_save_path): a stock
    run trains and none of them runs; naming one of the save keys is refused."""
    marker = work / "PWNED"
    own_dir = work / "own_ckpt_dir"
    for folder in (work / "saved", own_dir):
        _plant(folder / "tiny-SequentialDataset.pth", marker)
        _plant(folder / "tiny-for-SASRec-dataloader.pth", marker)
    _plant(work / "evil.pkl", marker)
    base = ["-c", str(stock_config), "--data-path", str(tiny_dataset)]

    out = work / "ckpt" / "a.pth"
    assert pre_train_main([*base, "-o", str(out)]) == 0
    assert (
        pre_train_main([*base, "-o", str(work / "b.pth"), "--set", f"checkpoint_dir={own_dir}"])
        == 0
    )
    assert not marker.exists()
    # RecBole's scratch files (saved/, log_tensorboard/) stay out of the working directory.
    assert sorted(p.name for p in work.iterdir()) == [
        "b.metrics.json", "b.pth", "b.pth.last", "ckpt", "evil.pkl", "mlruns-artifacts",
        "mlruns.sqlite",
        "own_ckpt_dir", "saved",
    ]  # fmt: skip
    capsys.readouterr()

    for key, value in [
        ("dataset_save_path", "evil.pkl"),
        ("dataloaders_save_path", "evil.pkl"),
        ("save_dataset", "true"),
        ("save_dataloaders", "true"),
    ]:
        argv = [*base, "-o", str(work / f"{key}.pth"), "--set", f"{key}={value}"]
        assert pre_train_main(argv) == 2
        err = _one_line_error(capsys)
        assert f"config key {key!r}" in err and "pickle" in err
        assert not marker.exists()
    # The fork's models refuse the keys too (they never read RecBole's caches).
    with pytest.raises(ConfigError, match="'dataset_save_path'"):
        run_config(tiny_dataset, **FORK, dataset_save_path="evil.pkl")


# ----- 2. nothing finished is overwritten unasked -------------------------------------------


def test_existing_output_needs_resume_or_overwrite(work, tiny_dataset, fork_config, capsys):
    out = work / "run.pth"
    base = ["-c", str(fork_config), "-o", str(out), "--data-path", str(tiny_dataset)]
    assert pre_train_main(base) == 0
    first = _digest(out)
    capsys.readouterr()

    assert pre_train_main(base) == 2
    err = _one_line_error(capsys)
    assert f"-o {out} already exists" in err and "--resume" in err and "--overwrite" in err
    assert _digest(out) == first

    assert pre_train_main([*base, "--resume", "--overwrite"]) == 2
    assert "pass one" in _one_line_error(capsys)
    assert pre_train_main([*base, "--allow-change", "epochs"]) == 2
    assert "--allow-change applies to --resume only" in _one_line_error(capsys)
    assert _digest(out) == first

    assert pre_train_main([*base, "--overwrite", "--set", "seed=7"]) == 0
    assert load_checkpoint(out)["config"]["seed"] == 7


def test_a_second_run_on_the_same_checkpoint_stops(work, tiny_dataset, fork_config, capsys):
    """While a run writes -o (it holds <-o>.lock), another one on the same -o stops at once."""
    import fcntl

    out = work / "run.pth"
    with open(f"{out}.lock", "w") as held:
        held.write("pid 1 on elsewhere\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for flags in ([], ["--resume"], ["--overwrite"]):
            argv = ["-c", str(fork_config), "-o", str(out), "--data-path", str(tiny_dataset)]
            assert pre_train_main([*argv, *flags]) == 2
            assert _one_line_error(capsys) == (
                f"error: another run is writing {out} (pid 1 on elsewhere); wait for it to end "
                "or choose another -o"
            )
        assert not out.exists()
    # Released (also when its holder is killed: the kernel drops the lock), -o is free; a
    # run removes its lock file when it ends, also after an error.
    argv = ["-c", str(fork_config), "-o", str(out), "--data-path", str(tiny_dataset)]
    assert pre_train_main(argv) == 0
    assert pre_train_main(argv) == 2  # exists now: refused, under the lock
    assert sorted(p.name for p in work.iterdir() if p.name.startswith("run.")) == [
        "run.metrics.json",
        "run.pth",
    ]


def test_fine_tune_never_overwrites_its_pretrained_checkpoint(
    work, tiny_dataset, fork_config, capsys
):
    pre = work / "pre.pth"
    assert (
        pre_train_main(["-c", str(fork_config), "-o", str(pre), "--data-path", str(tiny_dataset)])
        == 0
    )
    before = _digest(pre)
    conf = _write_config(work / "ft.json", {"fine_tune_strategy": "full", "epochs": 1,
                                            "num_negatives": 5, "show_progress": False})  # fmt: skip
    base = ["-c", str(conf), "-s", "tiny", "--data-path", str(tiny_dataset)]
    capsys.readouterr()
    for same in (str(pre), f"{work}/./pre.pth"):
        assert fine_tune_main([*base, "-i", str(pre), "-o", same]) == 2
        assert "is the checkpoint -i" in _one_line_error(capsys)
    assert _digest(pre) == before

    out = work / "ft.pth"
    assert fine_tune_main([*base, "-i", str(pre), "-o", str(out)]) == 0
    capsys.readouterr()
    assert fine_tune_main([*base, "-i", str(pre), "-o", str(out)]) == 2
    err = _one_line_error(capsys)
    assert "already exists" in err and "--overwrite" in err and "--resume" not in err

    # The library refuses it as well.
    from recbole_fork.finetune import FineTuneError, fine_tune, fine_tune_config

    config = fine_tune_config(conf, "tiny", [f"data_path={tiny_dataset}"], pretrained=pre)
    with pytest.raises(FineTuneError, match="is the pre-trained one"):
        fine_tune(config, pre, pretrained=pre)
    assert _digest(pre) == before


@pytest.mark.parametrize(
    ("config", "overrides", "message"),
    [
        ("stock", ["eval_batch_size=0"], "eval_batch_size=0: must be >= 1"),
        ("fork", ["eval_batch_size=0"], "eval_batch_size=0: must be >= 1"),
        ("fork", ["epochs=0"], "epochs=0: must be >= 1"),
        ("stock", ["epochs=-1"], "epochs=-1: must be >= 1"),
        ("fork", ["epochs=abc"], "config key 'epochs' must be an integer, got 'abc'"),
        ("fork", ["hidden_size=big"], "config key 'hidden_size' must be an integer, got 'big'"),
        ("stock", ["scheduler=5"], "config key 'scheduler' must be a mapping, got 5"),
        ("fork", ["data_path=/nonexistent/data"], "data path /nonexistent/data does not exist"),
        ("stock", ["dataset=nope"], "dataset 'nope' not found"),
    ],
)
def test_bad_settings_and_paths_fail_before_data_loads(
    work, tiny_dataset, fork_config, stock_config, monkeypatch, capsys, config, overrides, message
):
    _no_data_load(monkeypatch)
    conf = fork_config if config == "fork" else stock_config
    # --data-path wins over --set data_path=...
    data = next((o[len("data_path=") :] for o in overrides if o.startswith("data_path=")), None)
    argv = ["-c", str(conf), "-o", str(work / "x.pth"), "--data-path", data or str(tiny_dataset)]
    sets = [a for o in overrides if not o.startswith("data_path=") for a in ("--set", o)]
    assert pre_train_main([*argv, *sets]) == 2
    assert message in _one_line_error(capsys)
    assert not (work / "x.pth").exists()


def test_output_that_is_a_directory_fails_before_data_loads(
    work, tiny_dataset, fork_config, monkeypatch, capsys
):
    _no_data_load(monkeypatch)
    (work / "out").mkdir()
    (work / "file").write_text("")
    for out, message in [
        (work / "out", f"-o {work / 'out'} is a directory; name the checkpoint file"),
        (work / "file" / "x.pth", f"{work / 'file'} is a file, not a folder"),
    ]:
        argv = ["-c", str(fork_config), "-o", str(out), "--data-path", str(tiny_dataset)]
        assert pre_train_main(argv) == 2
        assert message in _one_line_error(capsys)


# ----- 3. runs that cannot be silently wrong ------------------------------------------------


def _runs(uri: str = "sqlite:///mlruns.sqlite", experiment: str = "pre_train-tiny") -> list[dict]:
    from recbole_fork.tracking import search_runs

    return search_runs(experiment, uri)


def test_resume_refuses_a_changed_training_key_unless_allowed(
    work, tiny_dataset, fork_config, capsys
):
    out = work / "run.pth"
    base = ["-c", str(fork_config), "-o", str(out), "--data-path", str(tiny_dataset)]
    assert pre_train_main(base) == 0
    before = _digest(out)
    capsys.readouterr()

    changed = ["--set", "learning_rate=0.05", "--set", "loss_type=bce", "--set", "num_negatives=3",
               "--set", "epochs=2"]  # fmt: skip
    assert pre_train_main([*base, "--resume", *changed]) == 2
    err = _one_line_error(capsys)
    for part in ("epochs 1 -> 2", "learning_rate 0.01 -> 0.05", "loss_type 'sampled_softmax' -> 'bce'",
                 "num_negatives 5 -> 3", "--allow-change epochs --allow-change learning_rate"):  # fmt: skip
        assert part in err
    assert _digest(out) == before

    # Harmless keys need no flag; the deliberate changes are named, and take effect.
    allow = [a for k in ("learning_rate", "loss_type", "num_negatives", "epochs")
             for a in ("--allow-change", k)]  # fmt: skip
    harmless = [
        "--set",
        "show_progress=true",
        "--set",
        "eval_user_chunk=7",
        "--set",
        "experiment=x",
    ]
    assert pre_train_main([*base, "--resume", *changed, *allow, *harmless]) == 0
    ckpt = load_checkpoint(out)
    assert ckpt["state"]["epoch_done"] == 1 and ckpt["config"]["learning_rate"] == 0.05

    from recbole_fork.tracking import metric_history

    (run,) = _runs()  # one run: the resumed part continued it
    assert run["params"]["learning_rate"] == "0.01"  # MLflow keeps the params it began with
    assert run["tags"]["resume_change.learning_rate"] == "0.01 -> 0.05 from epoch 1"
    assert run["tags"]["resume_change.loss_type"] == "'sampled_softmax' -> 'bce' from epoch 1"
    assert [lr for _, lr in metric_history(run["run_id"], "lr", "sqlite:///mlruns.sqlite")] == [
        0.01,
        0.05,
    ]  # constant schedule: the new learning rate is the one trained with
    from mlflow.tracking import MlflowClient

    client = MlflowClient("sqlite:///mlruns.sqlite")
    files = [a.path for a in client.list_artifacts(run["run_id"], "resume_changes")]
    assert files == ["resume_changes/from_epoch_1.json"]


def test_resume_change_listing_and_harmless_keys():
    from recbole_fork.checkpoint import check_resume

    saved = {"learning_rate": 0.01, "scheduler": {"type": "one_cycle", "pct_start": 0.3},
             "show_progress": False, "eval_item_chunk": 10, "seed": 1}  # fmt: skip
    now = {"learning_rate": 0.01, "scheduler": {"type": "one_cycle", "pct_start": 0.1},
           "show_progress": True, "eval_item_chunk": 99, "seed": 1, "bf16": True}  # fmt: skip
    with pytest.raises(CheckpointError) as err:
        check_resume({"config": saved}, now, "c.pth")
    assert str(err.value).startswith(
        "checkpoint c.pth was trained with other settings: bf16 None -> True, "
        "scheduler.pct_start 0.3 -> 0.1; "
    )
    assert check_resume({"config": saved}, now, "c.pth", allow=["scheduler", "bf16"]) == {
        "bf16": (None, True),
        "scheduler.pct_start": (0.3, 0.1),
    }
    with pytest.raises(CheckpointError, match=r"lacks \['config'\] needed for resuming"):
        check_resume({}, now, "c.pth")


def test_resume_after_tracking_fallback_continues_one_run(work, tiny_dataset, fork_config):
    """The server is down for the first part (the run goes to the local fallback file), up
    again for the resume: the resumed run holds the params and the whole history, linked to
    the fallback run both ways."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    server = f"sqlite:///{work / 'server.sqlite'}"
    out = work / "run.pth"
    base = ["-c", str(fork_config), "-o", str(out), "--data-path", str(tiny_dataset)]
    assert pre_train_main([*base, "--tracking-uri", dead]) == 0
    (first,) = _runs("sqlite:///mlruns.sqlite")
    assert load_checkpoint(out)["mlflow_tracking_uri"] == f"sqlite:///{work / 'mlruns.sqlite'}"

    argv = [
        *base,
        "--tracking-uri",
        server,
        "--resume",
        "--set",
        "epochs=2",
        "--allow-change",
        "epochs",
    ]
    assert pre_train_main(argv) == 0
    (resumed,) = _runs(server)
    from recbole_fork.tracking import metric_history

    # Every param; epochs as this part trained with it, the change tagged.
    assert resumed["params"] == {**first["params"], "epochs": "2"}
    assert resumed["tags"]["resume_change.epochs"] == "1 -> 2 from epoch 1"
    assert resumed["status"] == "FINISHED"
    assert resumed["tags"]["resumed_from_run_id"] == first["run_id"]
    assert [s for s, _ in metric_history(resumed["run_id"], "train_loss", server)] == [0, 1]
    (first,) = _runs("sqlite:///mlruns.sqlite")
    assert first["tags"]["continued_in_run_id"] == resumed["run_id"]


@pytest.mark.parametrize("epochs", [0, -3])
def test_epochs_below_one_is_refused(tiny_dataset, epochs):
    from recbole_fork.settings import RunSettings

    for base in (FORK, STOCK):
        with pytest.raises(ConfigError, match=rf"^epochs={epochs}: must be >= 1$"):
            RunSettings.from_config(run_config(tiny_dataset, **{**base, "epochs": epochs}))


def test_data_path_wins_over_recbole_bundled_ml100k(tmp_path, monkeypatch, capsys):
    """RecBole points ml-100k at the copy inside its package whatever data_path says."""
    root = write_atomic_dataset(tmp_path / "data", name="ml-100k", n_items=17)
    config = run_config(root, **{**FORK, "dataset": "ml-100k"})
    assert Path(config["data_path"]) == root / "ml-100k"
    assert build_seq_data(config).n_items - 1 == 17  # this folder's items, not 1682

    # A data path that does not exist is an error, before anything loads or is logged.
    monkeypatch.chdir(tmp_path)
    _no_data_load(monkeypatch)
    conf = _write_config(tmp_path / "ml.json", {**STOCK, "dataset": "ml-100k"})
    argv = ["-c", str(conf), "-o", str(tmp_path / "m.pth"), "--data-path", str(tmp_path / "none")]
    assert pre_train_main(argv) == 2
    assert _one_line_error(capsys) == (
        f"error: dataset 'ml-100k' not found: data path {tmp_path / 'none'} does not exist "
        "(check --data-path or data_path)"
    )
    assert not (tmp_path / "mlruns.sqlite").exists()


# ----- 4. one line for every user-caused error ----------------------------------------------


def _dataset(root: Path, name: str, inter: str) -> Path:
    (root / name).mkdir(parents=True, exist_ok=True)
    # latin-1: one byte per character, so "\xff" is the byte 0xff (not UTF-8)
    (root / name / f"{name}.inter").write_bytes(inter.encode("latin-1"))
    return root


HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"


@pytest.mark.parametrize("config", ["fork", "stock"])
@pytest.mark.parametrize(
    ("name", "inter", "message"),
    [
        ("nn", HEADER + "u1\ti1\t100\nu1\ti2\tabc\n",
         "nn/nn.inter, line 3: field 'timestamp' (float) holds 'abc', not a number"),
        ("ho", HEADER, "ho/ho.inter holds no interactions, only its header line"),
        ("hd", "user_id\titem_id\n", "hd/hd.inter, line 1: header column 'user_id' is not field:type"),
        ("bin", HEADER + "u1\ti1\t100\nu\xff\ti2\t200\n",
         "bin/bin.inter, line 3: not utf-8 text (byte 1 of the line)"),
        ("short", HEADER + "u1\ti1\t100\nu1\ti2\t200\n",
         "dataset 'short': no user has the 3 interactions needed for a valid and a test item"),
    ],
)  # fmt: skip
def test_unreadable_inter_names_file_and_line(
    work, fork_config, stock_config, capsys, config, name, inter, message
):
    root = _dataset(work / "bad", name, inter)
    conf = fork_config if config == "fork" else stock_config
    argv = [
        "-c",
        str(conf),
        "-o",
        str(work / "x.pth"),
        "--data-path",
        str(root),
        "--set",
        f"dataset={name}",
    ]
    assert pre_train_main(argv) == 2
    assert message in _one_line_error(capsys)


def test_non_finite_timestamps_name_the_file(tmp_path):
    root = _dataset(tmp_path, "inf", HEADER + "u1\ti1\t1\nu1\ti2\tinf\nu1\ti3\tnan\n")
    with pytest.raises(DataError, match=r"inf/inf.inter: 2 values of time field 'timestamp'"):
        build_seq_data(run_config(root, **{**FORK, "dataset": "inf"}))


def test_resume_on_another_dataset_or_broken_checkpoint(work, tiny_dataset, fork_config, capsys):
    write_atomic_dataset(tiny_dataset, name="other", n_items=30, seed=1)
    out = work / "run.pth"
    base = ["-c", str(fork_config), "-o", str(out), "--data-path", str(tiny_dataset)]
    assert pre_train_main(base) == 0
    capsys.readouterr()
    assert pre_train_main([*base, "--resume", "--set", "dataset=other"]) == 2
    assert "dataset 'tiny' -> 'other'" in _one_line_error(capsys)
    # Allowed deliberately, the other catalog still does not fit the weights: one line.
    allow = ["--allow-change", "dataset", "--allow-change", "data_path"]
    assert pre_train_main([*base, "--resume", "--set", "dataset=other", *allow]) == 2
    assert "does not fit this run's model and data" in _one_line_error(capsys)

    ckpt = load_checkpoint(out)
    for key in ("model", "model_description"):
        broken = work / f"no-{key}.pth"
        torch.save({k: v for k, v in ckpt.items() if k != key}, broken)
        argv = [
            "-c",
            str(fork_config),
            "-o",
            str(broken),
            "--data-path",
            str(tiny_dataset),
            "--resume",
        ]
        assert pre_train_main(argv) == 2
        assert f"lacks ['{key}'] needed for resuming" in _one_line_error(capsys)
        conf = _write_config(work / "ft.json", {"fine_tune_strategy": "full", "num_negatives": 5})
        argv = ["-c", str(conf), "-s", "tiny", "-i", str(broken), "-o", str(work / "ft.pth"),
                "--data-path", str(tiny_dataset)]  # fmt: skip
        assert fine_tune_main(argv) == 2
        assert f"lacks ['{key}'] needed for fine-tuning" in _one_line_error(capsys)


def test_unwritable_fallback_with_a_dead_server_is_one_line(
    work, tiny_dataset, fork_config, capsys
):
    """A dead server and a working directory where the local fallback cannot be written
    (here its file name is taken by a folder, which fails for root too)."""
    (work / "mlruns.sqlite").mkdir()
    argv = ["-c", str(fork_config), "-o", str(work / "x.pth"), "--data-path", str(tiny_dataset),
            "--tracking-uri", "http://127.0.0.1:9"]  # fmt: skip
    assert pre_train_main(argv) == 2
    err = _one_line_error(capsys)
    assert err.startswith("error: MLflow tracking at http://127.0.0.1:9 failed (")
    assert f"and so did the local fallback store sqlite:///{work / 'mlruns.sqlite'}" in err
    assert "pass --tracking-uri" in err


def test_report_and_sweep_face_a_dead_server_or_bad_yaml(tmp_path, capsys):
    dead = "http://127.0.0.1:9"
    assert (
        scaling_report_main(
            ["--experiment", "x", "--out", str(tmp_path / "r"), "--tracking-uri", dead]
        )
        == 2
    )
    assert f"MLflow server {dead} is not reachable" in _one_line_error(capsys)
    sweep = tmp_path / "sweep.yaml"
    shutil.copy(REPO / "confs" / "sweeps" / "tiny.yaml", sweep)
    text = (REPO / "confs" / "sweeps" / "tiny.yaml").read_text()
    sweep.write_text(text.replace("base_config: ", f"base_config: {REPO}/", 1))
    assert sweep_main(["-c", str(sweep), "--tracking-uri", dead, "--max-trials", "0"]) == 2
    assert f"MLflow server {dead} is not reachable" in _one_line_error(capsys)
    bad = tmp_path / "bad.yaml"
    bad.write_text("base_config: x\ngrid: [a\n")
    assert sweep_main(["-c", str(bad)]) == 2
    assert _one_line_error(capsys).startswith(f"error: {bad}:3:1: YAML syntax error: expected")


def test_stock_divergence_is_one_line(work, tiny_dataset, stock_config, capsys):
    argv = ["-c", str(stock_config), "-o", str(work / "x.pth"), "--data-path", str(tiny_dataset),
            "--set", "learning_rate=1e9", "--set", "epochs=3"]  # fmt: skip
    assert pre_train_main(argv) == 2
    err = _one_line_error(capsys)
    assert err.startswith("error: loss is nan at epoch ")


def test_ctrl_c_prints_the_resume_hint_and_exits_130(
    work, tiny_dataset, fork_config, monkeypatch, capsys
):
    original = SeqTrainer._train_epoch

    def interrupted(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(SeqTrainer, "_train_epoch", interrupted)
    out = work / "run.pth"
    argv = [
        "-c",
        str(fork_config),
        "-o",
        str(out),
        "--data-path",
        str(tiny_dataset),
        "--set",
        "epochs=3",
    ]
    assert pre_train_main(argv) == 130
    captured = capsys.readouterr()
    assert f"interrupted during epoch 1; the checkpoint {out} holds epoch 0; continue with the " \
        "same command plus --resume" in captured.out  # fmt: skip
    assert captured.err.strip().splitlines()[-1] == "interrupted"
    assert "Traceback" not in captured.err
    (run,) = _runs()
    assert run["status"] == "KILLED"


def test_io_error_names_the_path_and_cause(work, tiny_dataset, fork_config, monkeypatch, capsys):
    import recbole_fork.trainer as trainer_module

    def full_disk(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(trainer_module, "save_checkpoint", full_disk)
    out = work / "run.pth"
    argv = ["-c", str(fork_config), "-o", str(out), "--data-path", str(tiny_dataset)]
    assert pre_train_main(argv) == 1
    assert _one_line_error(capsys) == f"error: {out}: No space left on device"


# ----- 5. empty text fields ------------------------------------------------------------------


def _empty_text_dataset(root: Path) -> Path:
    """``tiny`` with a .item whose text and category fields are empty for every item, as
    the ETL writes it for a catalog without metadata."""
    write_atomic_dataset(root, name="bare")
    header = "item_id:token\ttitle:token_seq\tbrand:token_seq\tcategory_l1:token\tcategory_l2:token"
    rows = "".join(f"i{i}\t\t\t\t\n" for i in range(20))
    (root / "bare" / "bare.item").write_text(header + "\n" + rows)
    return root


def test_empty_text_fields_train_an_id_model_and_stop_a_text_model(tmp_path):
    from recbole_fork.session import train

    root = _empty_text_dataset(tmp_path / "data")
    result = train(run_config(root, **{**FORK, "dataset": "bare"}), tmp_path / "id.pth")
    assert 0.0 <= result["best_test_ndcg_at_10"] <= 1.0
    for encoder in ("text", "id+text"):
        config = run_config(root, **{**FORK, "dataset": "bare", "item_encoder": encoder})
        with pytest.raises(
            ConfigError,
            match=r"text fields \['title', 'brand'\] of bare are empty for every item",
        ):
            train(config, tmp_path / f"{encoder}.pth")
