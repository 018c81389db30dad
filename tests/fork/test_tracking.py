"""MLflow tracking against a real server on 127.0.0.1, and the local fallback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from recbole_fork.tracking import Tracker, flatten, metric_history, metric_name, search_runs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real ``mlflow server`` bound to 127.0.0.1 on a free port; stopped by its PID."""
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.sqlite'}",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}")
            time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("mlflow server did not answer /health within 120 s")
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_run_logged_to_a_real_server_reads_back(mlflow_server, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf.yaml").write_text("epochs: 2\n")
    with Tracker("pre_train-tiny", "sasrec-d8-l1-tiny-s1", tracking_uri=mlflow_server) as t:
        t.log_params({"epochs": 2, "scheduler": {"type": "one_cycle"}, "params_total": 123})
        for epoch in range(3):
            t.log_metrics(
                {"train_loss": 1.0 / (epoch + 1), "valid_ndcg@10": 0.1 * epoch}, step=epoch
            )
        t.log_artifact(tmp_path / "conf.yaml")
        t.log_dict({"best_test_ndcg_at_10": 0.2}, "final_metrics.json")
    assert t.uri == mlflow_server  # no fallback

    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(t.run_id)
    assert run.info.run_name == "sasrec-d8-l1-tiny-s1" and run.info.status == "FINISHED"
    assert (
        run.data.params["scheduler.type"] == "one_cycle"
        and run.data.params["params_total"] == "123"
    )
    assert metric_history(t.run_id, "valid_ndcg_at_10", mlflow_server) == [
        (0, 0.0),
        (1, 0.1),
        (2, 0.2),
    ]
    assert sorted(a.path for a in client.list_artifacts(t.run_id)) == [
        "conf.yaml",
        "final_metrics.json",
    ]
    assert [r["run_name"] for r in search_runs("pre_train-tiny", mlflow_server)] == [
        "sasrec-d8-l1-tiny-s1"
    ]
    assert not (tmp_path / "mlruns.sqlite").exists()


def test_dead_server_falls_back_locally_and_loses_nothing(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    dead = f"http://127.0.0.1:{_free_port()}"
    started = time.time()
    with Tracker("exp", "run-1", tracking_uri=dead) as t:
        t.log_params({"lr": 0.1})
        t.log_metrics({"train_loss": 0.5}, step=0)
    assert time.time() - started < 30
    assert t.uri == f"sqlite:///{tmp_path / 'mlruns.sqlite'}"
    assert any(f"writing this run to {t.uri}" in r.message for r in caplog.records)
    runs = search_runs("exp", "sqlite:///mlruns.sqlite")
    assert len(runs) == 1
    assert runs[0]["params"] == {"lr": "0.1"} and runs[0]["metrics"] == {"train_loss": 0.5}
    assert runs[0]["tags"]["fallback_from"] == dead


def test_server_lost_mid_run_replays_everything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t = Tracker("exp", "run-2", tracking_uri=f"sqlite:///{tmp_path / 'primary.sqlite'}")
    t.log_params({"a": 1})
    t.log_metrics({"m": 1.0}, step=0)

    def broken(*args, **kwargs):
        raise ConnectionError("server went away")

    monkeypatch.setattr(t.client, "log_batch", broken)  # the primary store fails from now on
    t.log_metrics({"m": 2.0}, step=1)
    t.finish()
    assert t.uri == f"sqlite:///{tmp_path / 'mlruns.sqlite'}"
    (run,) = search_runs("exp", "sqlite:///mlruns.sqlite")
    assert run["params"] == {"a": "1"}
    assert metric_history(run["run_id"], "m", "sqlite:///mlruns.sqlite") == [(0, 1.0), (1, 2.0)]


def test_names_and_flattening():
    assert metric_name("valid_ndcg@10") == "valid_ndcg_at_10"
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {
        "a.b": "1",
        "a.c": "[1, 2]",
        "d": "None",
    }


def test_missing_artifact_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Tracker("exp", "run-3") as t, pytest.raises(FileNotFoundError, match="nope.yaml"):
        t.log_artifact(tmp_path / "nope.yaml")
    assert t.uri == f"sqlite:///{tmp_path / 'mlruns.sqlite'}"


def test_sqlite_store_keeps_artifacts_beside_the_database(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    work, store = tmp_path / "cwd", tmp_path / "study"
    work.mkdir()
    store.mkdir()
    monkeypatch.chdir(work)
    (work / "conf.yaml").write_text("epochs: 1\n")
    uri = f"sqlite:///{store / 'runs.sqlite'}"
    with Tracker("pre_train-tiny x", "run-1", tracking_uri=uri) as t:
        t.log_artifact(work / "conf.yaml")
    folder = store / "runs-artifacts" / "pre_train-tiny_x"
    assert (
        MlflowClient(tracking_uri=uri).get_experiment_by_name("pre_train-tiny x").artifact_location
        == folder.as_uri()
    )
    assert (folder / t.run_id / "artifacts" / "conf.yaml").read_text() == "epochs: 1\n"
    assert not (work / "mlruns").exists()  # MLflow's default would write here


def test_fake_tracker_signature_matches() -> None:
    """The suite's ``FakeTracker`` takes what ``tracking.Tracker`` takes, so a new keyword on the
    real constructor fails here, not in every test that trains through the fake."""
    import inspect

    from recbole_fork.tracking import Tracker
    from tests.conftest import FakeTracker

    real = inspect.signature(Tracker.__init__).parameters
    fake = inspect.signature(FakeTracker.__init__).parameters
    assert list(fake) == list(real)
    assert [p.default for p in fake.values()] == [p.default for p in real.values()]
