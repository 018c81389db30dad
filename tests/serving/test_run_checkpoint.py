"""A tracked training run records its final checkpoint (an artifact, or its path when too
large), and ``serve.py --run RUN_ID`` finds it."""

from __future__ import annotations

import pytest

import recbole_fork.session as session
from recbole_fork.checkpoint import CheckpointError
from recbole_fork.serving.loading import checkpoint_of_run, load_servable
from recbole_fork.session import log_checkpoint
from tests.conftest import run_config
from tests.serving.conftest import DATASET, MODELS


class Recording:
    def __init__(self) -> None:
        self.artifacts: list[tuple[str, str | None]] = []
        self.tags: dict = {}

    def log_artifact(self, path, artifact_path=None) -> None:
        self.artifacts.append((str(path), artifact_path))

    def set_tags(self, tags) -> None:
        self.tags.update(tags)


def test_a_small_checkpoint_becomes_an_artifact(tmp_path):
    ckpt = tmp_path / "run.pth"
    ckpt.write_bytes(b"x" * 100)
    tracker = Recording()
    log_checkpoint(tracker, ckpt)
    assert tracker.artifacts == [(str(ckpt.resolve()), "checkpoint")]
    assert tracker.tags == {
        "checkpoint_path": str(ckpt.resolve()),
        "checkpoint_bytes": 100,
        "checkpoint_artifact": "checkpoint/run.pth",
    }


def test_a_large_checkpoint_is_recorded_by_its_path(tmp_path, monkeypatch):
    monkeypatch.setattr(session, "CHECKPOINT_ARTIFACT_MAX_BYTES", 99)
    ckpt = tmp_path / "big.pth"
    ckpt.write_bytes(b"x" * 100)
    tracker = Recording()
    log_checkpoint(tracker, ckpt)
    assert tracker.artifacts == []
    assert tracker.tags == {"checkpoint_path": str(ckpt.resolve()), "checkpoint_bytes": 100}
    log_checkpoint(tracker := Recording(), tmp_path / "never-written.pth")
    assert tracker.artifacts == [] and tracker.tags == {}


@pytest.mark.slow
def test_serve_finds_the_checkpoint_of_a_real_mlflow_run(shop, tmp_path, monkeypatch):
    from recbole_fork.run import pre_train
    from recbole_fork.tracking import search_runs

    uri = f"sqlite:///{tmp_path / 'mlruns.sqlite'}"
    config = run_config(shop[0], dataset=DATASET, epochs=1, num_negatives=5, **MODELS["sasrec-id"])
    ckpt = tmp_path / "ck" / "model.pth"
    pre_train(config, ckpt, tracking_uri=uri)
    [run] = search_runs(f"pre_train-{DATASET}", uri)
    assert run["tags"]["checkpoint_artifact"] == "checkpoint/model.pth"
    got, name = checkpoint_of_run(run["run_id"], uri, tmp_path / "dl")
    assert got.read_bytes() == ckpt.read_bytes() and got.parent != ckpt.parent
    assert name == run["run_name"]
    sv = load_servable(got, run_name=name)
    assert sv.run_name == "sasrec-d16-l1-h1-id-shop-s2020"
    assert sv.ckpt["mlflow_run_id"] == run["run_id"]

    # Too large for an artifact: found by its path while the file is here.
    monkeypatch.setattr(session, "CHECKPOINT_ARTIFACT_MAX_BYTES", 1)
    big = tmp_path / "ck" / "big.pth"
    pre_train(config, big, tracking_uri=uri)
    [run2] = [r for r in search_runs(f"pre_train-{DATASET}", uri) if r["run_id"] != run["run_id"]]
    assert "checkpoint_artifact" not in run2["tags"]
    assert checkpoint_of_run(run2["run_id"], uri, tmp_path / "dl2")[0] == big.resolve()
    big.rename(tmp_path / "moved.pth")
    with pytest.raises(CheckpointError, match="recorded its checkpoint by path only"):
        checkpoint_of_run(run2["run_id"], uri, tmp_path / "dl3")
    with pytest.raises(CheckpointError, match="MLflow run nope not found"):
        checkpoint_of_run("nope", uri, tmp_path / "dl4")
