"""A sweep and the ETL on a Ray cluster of two nodes started by ``ray start``, as on real machines.

Both nodes (1 CPU each) run on this machine as separate processes with their own temp
dirs. Everything, from the first ``ray start`` to ``ray stop``, runs in one private network
and pid namespace (``tests/netns_util.py``): traffic stays on 127.0.0.1, and ``ray stop``
(which kills every Ray process it can see) sees only this test's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_atomic_dataset
from tests.netns_util import private_network

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the virtualenv's python and ray
PORT = 6379  # any port is free in a fresh network namespace
RUN_NAMES = ["sasrec-d8-l1-h1-id-tiny-s42", "sasrec-d16-l1-h1-id-tiny-s42"]  # naming.run_name

# Runs in the namespaces. $1: the work folder (sweep.yaml, data/, logs/, outputs),
# $2: a short folder for the nodes' temp dirs (Ray's unix sockets live there, and a socket
# path may not exceed 107 bytes, which pytest's tmp_path would). Each step logs to
# logs/<step>.log; the first failing step ends the script, and the EXIT trap always stops
# the cluster.
CLUSTER_SCRIPT = r"""
set -euo pipefail
WORK=$1 RAYTMP=$2 PY={bin}/python RAY={bin}/ray ADDRESS=127.0.0.1:{port}
cd "$WORK"
mkdir -p logs
trap '"$RAY" stop --force > logs/ray_stop.log 2>&1; echo $? > ray_stopped' EXIT
step() {{ local name=$1; shift; echo "step $name"; "$@" > "logs/$name.log" 2>&1; }}
node() {{
  "$RAY" start --node-ip-address 127.0.0.1 --num-cpus 1 --num-gpus 0 \
    --object-store-memory 100000000 --disable-usage-stats "$@"
}}
step head node --head --port {port} --include-dashboard=false --temp-dir "$RAYTMP/head"
step worker node --address "$ADDRESS" --temp-dir "$RAYTMP/worker"
# Only the driver finds tests.scaling.cluster_trainable on its PYTHONPATH: the sweep must
# pass it on to the nodes' workers.
step sweep env PYTHONPATH={repo} "$PY" {repo}/scripts/sweep.py -c sweep.yaml \
  --ray-address "$ADDRESS" --max-concurrent 2 --cpus-per-trial 1 \
  --tracking-uri "sqlite:///$WORK/mlruns.sqlite"
step synthetic "$PY" -m etl.synthetic --out raw --interactions 8000 --seed 7 --finetune-users 300
etl() {{
  "$PY" {repo}/scripts/scaling_datasets.py --step all --raw-dir raw --out-dir "etl-$1" \
    --sizes 2K,4K --vocab-size 500 --partitions 4 --workers 2 --no-progress --engine "$@"
}}
step etl_ray etl ray --ray-address "$ADDRESS"
step etl_multiprocess etl multiprocess
"""


def _write_sweep(work: Path) -> Path:
    """Two tiny SASRecX trials (width 8 and 16, 1 layer, 1 epoch) on a 30-user dataset,
    trained by ``recbole_fork.run.pre_train`` through ``tests/scaling/cluster_trainable.py``."""
    write_atomic_dataset(work / "data")
    spec = {
        "base_config": str(REPO / "confs" / "pre_train" / "ml-100k-sasrec.yaml"),
        "experiment": "sweep-cluster",
        "grid": {"hidden_size": [8, 16]},
        "inner_size": "same_as_hidden",
        "overrides": {
            "dataset": "tiny",
            "n_layers": 1,
            "n_heads": 1,
            "max_seq_length": 6,
            "train_window_stride": None,
            "loss_type": "sampled_softmax",
            "num_negatives": 5,
            "eval_mode": "full",
            "train_batch_size": 16,
            "eval_batch_size": 64,
            "show_progress": False,
            "seed": 42,
        },
        "budget": {"epochs": 1},
        "data_path": str(work / "data"),
        "checkpoint_dir": str(work / "ckpt"),
        "trainable": "tests.scaling.cluster_trainable.pre_train",
    }
    path = work / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _digests(out: Path) -> dict[str, str]:
    """sha256 of every atomic file and of the SentencePiece model of an ETL output folder."""
    files = sorted(out.glob("amazon-*/*")) + sorted((out / "sentencepiece").glob("*"))
    return {str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.fixture
def ray_tmp():
    """A short temp folder for the nodes (removed after the test, passed or not)."""
    path = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.network_ns
def test_sweep_and_etl_on_a_two_node_cluster(tmp_path, ray_tmp):
    pytest.importorskip("ray", reason="ray is not installed")
    prefix = private_network(own_pids=True)
    work = tmp_path
    _write_sweep(work)
    script = work / "cluster.sh"
    script.write_text(CLUSTER_SCRIPT.format(bin=BIN, repo=REPO, port=PORT))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    # Like separate machines: nothing reaches the nodes through the environment.
    env.pop("PYTHONPATH", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [*prefix, "bash", str(script), str(work), str(ray_tmp)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        # A timeout or an interrupt: killing unshare ends the namespace's first process
        # (--kill-child) and with it every Ray process of the cluster.
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    steps = [line.removeprefix("step ") for line in out.splitlines() if line.startswith("step ")]
    last = work / "logs" / f"{steps[-1] if steps else 'head'}.log"
    log_tail = last.read_text(errors="replace")[-4000:] if last.is_file() else out[-4000:]
    assert proc.returncode == 0, f"step {steps[-1:]} failed:\n{log_tail}"
    assert (work / "ray_stopped").read_text().strip() == "0"  # ray stop ran, in the namespace

    # (a) the sweep: both trials FINISHED in MLflow under their names, one on each node.
    sweep_out = (work / "logs" / "sweep.log").read_text()
    assert "0 already finished (skipped), 2 finished now, 0 failed, 0 left" in sweep_out
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlruns.sqlite'}")
    runs = client.search_runs([client.get_experiment_by_name("sweep-cluster").experiment_id])
    assert sorted((r.info.run_name, r.info.status) for r in runs) == sorted(
        (name, "FINISHED") for name in RUN_NAMES
    )  # two runs, each FINISHED once, under distinct names
    for name in RUN_NAMES:
        assert (work / "ckpt" / name / "checkpoint.pth").is_file()
    nodes = {(work / "ckpt" / name / "node_id").read_text() for name in RUN_NAMES}
    assert len(nodes) == 2  # 1 CPU per node and per trial: one trial on each node

    # (b) the ETL: the Ray engine on the cluster writes the same bytes as multiprocess.
    ray_files, mp_files = _digests(work / "etl-ray"), _digests(work / "etl-multiprocess")
    expected = {f"{n}/{n}.{e}" for n in ("amazon-2K", "amazon-4K", "amazon-beauty",
                                          "amazon-sports") for e in ("inter", "item")}  # fmt: skip
    assert expected <= set(ray_files)
    assert ray_files == mp_files
