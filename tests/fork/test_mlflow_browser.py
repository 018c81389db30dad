"""The demo's runs as a person sees them: the MLflow UI in headless Chromium.

A shrunken demo (``confs/demo/*.yaml`` with tiny sizes, on tiny generated datasets) logs
its pre-training and its two fine-tuning runs to a real ``mlflow server`` on 127.0.0.1; the
experiment pages, rendered by Chromium, must show every run name, and a screenshot of each
page is stored as an artifact of one of its runs.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from recbole_fork.config import build_config
from recbole_fork.finetune import fine_tune, fine_tune_config
from recbole_fork.naming import experiment_name, run_name
from recbole_fork.run import pre_train
from recbole_fork.settings import RunSettings
from recbole_fork.tracking import log_artifacts_to_run, search_runs
from tests import browser_util
from tests.conftest import REPO, write_atomic_dataset
from tests.fork import test_tracking

mlflow_server = test_tracking.mlflow_server  # the real server fixture, reused as is

DEMO = REPO / "confs" / "demo"

# The demo's configs with every size shrunk (run names keep their shape: model, width,
# depth, item encoder, dataset, seed), as `--set` items would give them.
SHRINK = [
    "hidden_size=8",
    "inner_size=16",
    "text_embedding_size=8",
    "max_seq_length=6",
    "num_negatives=5",
    "eval_mode=full",
    "train_batch_size=16",
    "eval_batch_size=64",
    "epochs=1",
    "use_gpu=false",
    "show_progress=false",
]


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium, installed by apt-get when missing (skips when it cannot be)."""
    return browser_util.ensure_chromium()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run_demo(root: Path, out: Path, uri: str) -> dict[str, list[str]]:
    """Pre-train and fine-tune (``from_scratch``, ``progressive``) as ``scripts/demo.py`` does.

    Returns the run names per MLflow experiment, computed by the library's naming functions.
    """
    data = [f"data_path={root}"]
    pre = build_config(DEMO / "pre_train.yaml", [*SHRINK, *data, "dataset=tiny"])
    pretrained = out / "pretrain-tiny.pth"
    pre_train(pre, pretrained, tracking_uri=uri, config_file=DEMO / "pre_train.yaml")
    pre_settings = RunSettings.from_config(pre)
    names = {experiment_name(pre_settings): [run_name(pre_settings)]}
    for strategy in ("from_scratch", "progressive"):
        source = DEMO / f"fine_tune_{strategy}.yaml"
        overrides = [*SHRINK, *data]
        if strategy == "from_scratch":  # the same architecture, no weights
            kwargs = {"pretrain_config": DEMO / "pre_train.yaml"}
        else:
            # Two layer stages of one epoch each, then the final stage: three epochs.
            overrides += ["epochs=3", "progressive_epochs_per_stage=1"]
            kwargs = {"pretrained": pretrained}
        config = fine_tune_config(source, "tiny-beauty", overrides, **kwargs)
        fine_tune(
            config,
            out / f"finetune-tiny-beauty-{strategy}.pth",
            pretrained=kwargs.get("pretrained"),
            tracking_uri=uri,
            config_file=source,
        )
        settings = RunSettings.from_config(config)
        names.setdefault(experiment_name(settings, "fine_tune"), []).append(
            run_name(settings, strategy=strategy)
        )
    return names


@pytest.mark.slow
def test_demo_run_names_show_in_the_mlflow_ui(chromium, mlflow_server, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # RecBole and the fallback store write beside the cwd
    root = write_atomic_dataset(tmp_path / "data", "tiny", seed=1, item_text=True)
    write_atomic_dataset(root, "tiny-beauty", n_users=24, n_items=16, seed=2, item_text=True)
    names = _run_demo(root, tmp_path, mlflow_server)
    assert names == {
        "pre_train-tiny": ["sasrec-d8-l2-h2-text-tiny-s42"],
        "fine_tune-tiny-beauty": [
            "sasrec-d8-l2-h2-text-tiny-beauty-from_scratch-s42",
            "sasrec-d8-l2-h2-text-tiny-beauty-progressive-s42",
        ],
    }

    client = MlflowClient(tracking_uri=mlflow_server)
    # One fresh profile for the test: the second page reuses the UI's cached scripts
    # (measured 30 s cold, 11 s warm on this shared machine).
    profile = tmp_path / "chromium-profile"
    for experiment, run_names in names.items():
        # On the server itself (a fallback store would have taken them elsewhere), finished.
        runs = {r["run_name"]: r for r in search_runs(experiment, mlflow_server)}
        assert sorted(runs) == sorted(run_names)
        assert {r["status"] for r in runs.values()} == {"FINISHED"}

        # MLflow 3's bare experiment route opens the GenAI overview (traces, no runs); the
        # runs table is the experiment page's `runs` tab.
        exp_id = client.get_experiment_by_name(experiment).experiment_id
        url = f"{mlflow_server}/#/experiments/{exp_id}/runs"
        png = tmp_path / f"mlflow-ui-{experiment}.png"
        dom = browser_util.render(chromium, url, png, profile)
        missing = [name for name in run_names if name not in dom]
        assert not missing, f"{url} shows no {missing} after 15 s ({len(dom)} chars of DOM)"
        text = " ".join(re.sub(r"<[^>]+>", " ", dom).split())
        n = len(run_names)
        assert f"{n} matching run{'s' if n > 1 else ''}" in text  # the table's footer

        assert png.read_bytes()[:8] == browser_util.PNG_MAGIC and png.stat().st_size > 10_000
        run_id = runs[run_names[0]]["run_id"]
        log_artifacts_to_run(run_id, [png], mlflow_server, artifact_path="ui")
        listed = [a.path for a in client.list_artifacts(run_id, "ui")]
        assert listed == [f"ui/{png.name}"]


def _no_chromium(monkeypatch, apt_get: bool, uid: int) -> None:
    """Pretend chromium is missing (and apt-get too unless ``apt_get``), running as ``uid``."""
    paths = {"apt-get": "/usr/bin/apt-get"} if apt_get else {}
    monkeypatch.setattr(browser_util.shutil, "which", paths.get)
    monkeypatch.setattr(browser_util.os, "geteuid", lambda: uid)


def test_missing_chromium_without_apt_get_skips_with_the_reason(monkeypatch):
    _no_chromium(monkeypatch, apt_get=False, uid=0)
    with pytest.raises(pytest.skip.Exception, match="chromium not found and apt-get is absent"):
        browser_util.ensure_chromium()


def test_missing_chromium_when_not_root_skips_with_the_reason(monkeypatch):
    _no_chromium(monkeypatch, apt_get=True, uid=1000)
    with pytest.raises(pytest.skip.Exception, match="not running as root"):
        browser_util.ensure_chromium()


def test_failed_apt_get_skips_with_its_error(monkeypatch):
    _no_chromium(monkeypatch, apt_get=True, uid=0)
    calls = []

    def apt_get(cmd, **kwargs):
        calls.append(cmd[-1])
        failed = cmd[-1] == "chromium"
        return subprocess.CompletedProcess(
            cmd, 100 if failed else 0, "", "E: Unable to locate package chromium" * failed
        )

    monkeypatch.setattr(browser_util.subprocess, "run", apt_get)
    with pytest.raises(pytest.skip.Exception, match="failed with 100: E: Unable to locate"):
        browser_util.ensure_chromium()
    assert calls == ["update", "chromium"]  # the package lists first, then the install
