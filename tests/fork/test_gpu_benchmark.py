"""``benchmarks/gpu.py``: the CPU smoke run of every check, and the script's failure handling.

The smoke run goes through the same code paths as the GPU run (the trainer's epoch loop,
``evaluate_ranking`` / ``topk_items``, the serving client when the server exists) on tiny
sizes; on the CPU its "device" side is the CPU itself, so the device-vs-CPU comparison must
be exact, and bf16 / ``torch_compile`` are requested but not in effect.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, str]:
    """One smoke run on the CPU (one thread): its JSON report and its printed lines."""
    tmp = tmp_path_factory.mktemp("gpu-smoke")
    out = tmp / "gpu.json"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, str(SCRIPT), "--device", "cpu", "--smoke", "--threads", "1"]
    command += ["--out", str(out), "--workdir", str(tmp / "work")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def test_smoke_report_names_the_machine_and_mode(smoke):
    import torch

    report, stdout = smoke
    env = report["env"]
    assert report["mode"] == "smoke"
    assert env["device_type"] == "cpu" and env["driver"] is None and env["cuda"] is None
    assert env["torch"] == torch.__version__
    assert env["date_utc"].startswith("20") and env["date_utc"].endswith("+00:00")
    assert report["goals"] == {"reason": "measured on the CPU: issue 19's goals are for a GPU"}
    assert report["elapsed_s"] < report["budget_s"]
    assert "checks: correctness ok, throughput ok, ranking ok, serving" in stdout


def test_smoke_correctness_is_exact_on_one_device(smoke):
    report, _ = smoke
    check = report["checks"]["correctness"]
    assert check["status"] == "ok"
    assert set(check["models"]) == {"SASRecX", "HSTU"}
    for result in check["models"].values():
        assert result["status"] == "ok"
        assert result["steps"] == 50
        # CPU against CPU through the same code: bit-identical losses and metrics.
        assert result["loss_rel_diff_last"] == 0.0 and result["loss_rel_diff_max"] == 0.0
        assert result["metric_abs_diff_max"] == 0.0
        assert result["metrics_device"] == result["metrics_cpu"]
        assert set(result["metrics_device"]) == {"hr@10", "ndcg@10", "mrr@10"}
        assert result["test_users"] == 60 and result["n_items"] == 81  # 80 items + padding
        assert result["loss_device_last"] < 0.95 * result["loss_first"]  # it learned
        assert result["bf16"]["status"] == "skipped"
        assert "CUDA-only" in result["bf16"]["reason"]


def test_smoke_throughput_runs_every_configuration_through_the_trainer(smoke):
    report, _ = smoke
    plan = report["plan"]
    check = report["checks"]["throughput"]
    configs = check["configs"]
    assert check["status"] == "ok"
    # 2 models x 3 sizes x {fp32, bf16} x {eager, compiled}, each once.
    keys = {(c["model"], c["size"], c["bf16"], c["torch_compile"]) for c in configs}
    assert len(configs) == len(keys) == 24
    for c in configs:
        assert c["status"] == "ok", c
        # On the CPU the trainer ignores bf16 and skips torch_compile: recorded as such.
        assert c["requested"] == {"bf16": c["bf16"], "torch_compile": c["torch_compile"]}
        assert c["effective"] == {"bf16": False, "torch_compile": False}
        assert c["steps"] == plan["measured_steps"]
        # Users of 203 (smoke: 23) interactions: every window full, so every batch is L wide
        # and its tokens are its sequences times L.
        assert c["batch_width"] == c["max_seq_length"]
        assert c["tokens_per_s"] == pytest.approx(c["sequences_per_s"] * c["max_seq_length"])
        assert c["train_flops"] > 0 and c["achieved_flops_per_s"] > 0
        assert c["peak_flops"] is None and c["mfu"] is None  # no CPU peak configured
        assert c["peak_memory_gib"] is None
    sasrec = next(c for c in configs if c["model"] == "SASRecX" and c["size"] == "l")
    assert (sasrec["hidden_size"], sasrec["n_layers"], sasrec["max_seq_length"]) == (16, 2, 5)
    assert sasrec["train_batch_size"] == 32 and sasrec["num_negatives"] == 32
    # Eager runs come first, compiled last (largest size first).
    order = [c["torch_compile"] for c in configs]
    assert order == [False] * 12 + [True] * 12
    assert [c["size"] for c in configs[12:16]] == ["l", "l", "m", "m"]


def test_smoke_ranking_times_ranking_and_matmuls(smoke):
    report, _ = smoke
    check = report["checks"]["ranking"]
    assert check["status"] == "ok"
    cases = check["cases"]
    assert [(c["n_items"], c["dim"]) for c in cases] == [(20_000, 8), (60_000, 8)]
    for c in cases:
        assert c["status"] == "ok" and c["users"] == 64
        assert c["full_users_per_s"] == pytest.approx(64 / c["full_s"])
        assert c["share_of_matmul_rate"] == pytest.approx(c["matmul_s"] / c["full_s"])
        assert c["topk10_users_per_s"] == pytest.approx(64 / c["topk10_s"])


def test_smoke_serving_is_measured_or_skipped_with_its_reason(smoke):
    report, stdout = smoke
    serving = report["checks"]["serving"]
    if importlib.util.find_spec("recbole_fork.serving") is None:
        assert serving == {
            "status": "skipped",
            "reason": "recbole_fork.serving is not in this tree (issue 18 has not landed)",
        }
        assert "[skipped] serving: recbole_fork.serving is not in this tree" in stdout
    else:
        assert serving["status"] == "ok", serving.get("reason")
        assert set(serving["concurrency"]) == {"1", "32"}


def test_a_failing_or_slow_unit_costs_one_line_and_the_next_one_runs(tmp_path, capsys):
    gpu = _load_script()
    report: dict = {"checks": {}}
    runner = gpu.Runner(tmp_path / "r.json", budget_s=60, report=report)

    def broken():
        raise ValueError("shape [3] is not [4]\nsecond line never printed")

    def slow():
        time.sleep(60)
        return {}

    first = runner.unit("broken", broken, needs_s=0, limit_s=10)
    second = runner.unit("slow", slow, needs_s=0, limit_s=0.3)
    third = runner.unit("fine", lambda: {"summary": "42 tokens/s"}, needs_s=0, limit_s=10)
    assert first["status"] == "failed"
    assert first["reason"] == "ValueError: shape [3] is not [4]"
    assert second["status"] == "failed" and second["reason"] == "UnitTimeout: timed out after 0.3 s"
    assert second["seconds"] < 30  # cut off, not waited for (a wide margin: shared machines)
    assert third["status"] == "ok" and third["summary"] == "42 tokens/s"
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("[failed ] broken (") and lines[2].startswith("[ok     ] fine (")

    spent = gpu.Runner(tmp_path / "r.json", budget_s=0, report=report)
    skipped = spent.unit("late", lambda: {}, needs_s=5, limit_s=10)
    assert skipped["status"] == "skipped" and skipped["reason"].startswith("time budget: ")
    assert gpu._overall([first, third]) == {
        "status": "failed",
        "reason": "1 failed; first: ValueError: shape [3] is not [4]",
    }
    assert gpu._overall([third, skipped]) == {"status": "ok"}
    assert gpu._overall([skipped]) == {"status": "skipped", "reason": skipped["reason"]}
    runner.write()
    assert json.loads((tmp_path / "r.json").read_text())["checks"] == {}


def test_bad_arguments_name_the_option(capsys):
    gpu = _load_script()
    with pytest.raises(SystemExit) as raised:
        gpu.parse_args(["--checks", "ranking,bogus"])
    assert raised.value.code == 2
    assert "--checks 'ranking,bogus': choose from correctness, throughput, ranking, serving" in (
        capsys.readouterr().err
    )
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            gpu.parse_args(["--device", "cuda"])
        assert "torch sees no CUDA device here" in capsys.readouterr().err
