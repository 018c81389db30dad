"""The report from a synthetic MLflow store: report.md, figures, artifacts; record parsing."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from recbole_fork.scaling.report import (
    REPORT_RUN_NAME,
    ReportError,
    analyse_metric,
    metric_label,
    metric_orientation,
    protocol_label,
)
from recbole_fork.scaling.runs import (
    REPORT_KIND,
    REPORT_TAG,
    RunRecord,
    latest_per_name,
    record_from_mlflow,
)

mlflow = pytest.importorskip("mlflow")
from mlflow.entities import Metric, Param  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

SCRIPT_DIR = "scripts"
LAW = {"E": 2.0, "A": 60.0, "alpha": 0.3, "B": 90.0, "beta": 0.35}
SIZES_N = [1e4, 1e5, 1e6, 1e7]
SIZES_D = {"amazon-100K": 99_424, "amazon-1M": 986_987, "amazon-10M": 9_989_904}


def law(n: float, d: float) -> float:
    return LAW["E"] + LAW["A"] * n ** -LAW["alpha"] + LAW["B"] * d ** -LAW["beta"]


def fill_store(uri: str, artifacts: str, experiment: str) -> MlflowClient:
    """12 finished runs on the law (4 N x 3 D), one failed run, one older duplicate."""
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(experiment, artifact_location=artifacts)
    rng = np.random.default_rng(0)

    def add(name: str, n: float, dataset: str, status: str, loss: float) -> None:
        run = client.create_run(exp_id, run_name=name)
        d = SIZES_D[dataset]
        params = {"params_non_embedding": int(n), "train_interactions": d, "flops_per_token": int(2 * n),
                  "dataset": dataset, "eval_protocol": "sampled10000 (not comparable with full)", "run_name": name, "epochs": 3}  # fmt: skip
        metrics = {"best_test_loss": loss, "best_test_ndcg_at_10": 0.5 - 0.1 * loss / 3,
                   "total_flops": 6 * n * d * 3}  # fmt: skip
        ts = int(time.time() * 1000)
        history = [Metric(k, loss + c / (e + 1), ts, e) for e in range(3)
                   for k, c in (("train_loss", 1.0), ("valid_loss", 0.5))]  # fmt: skip
        client.log_batch(
            run.info.run_id,
            params=[Param(k, str(v)) for k, v in params.items()],
            metrics=[Metric(k, v, ts, 0) for k, v in metrics.items()] + history,
        )
        client.set_terminated(run.info.run_id, status)

    add("sasrecx-d8-l1-amazon-1M-s42", 1e5, "amazon-1M", "FINISHED", 99.0)  # older duplicate
    add("broken-run", 1e5, "amazon-1M", "FAILED", 99.0)
    for n in SIZES_N:
        for dataset, d in SIZES_D.items():
            name = (
                f"sasrecx-d{int(n)}-l1-{dataset}-s42"
                if n != 1e5 or dataset != "amazon-1M"
                else "sasrecx-d8-l1-amazon-1M-s42"
            )
            add(name, n, dataset, "FINISHED", law(n, d) * float(np.exp(rng.normal(0, 0.003))))
    return client


def test_report_from_mlflow_store(tmp_path):
    from tests.scaling.scaling_scripts import scaling_report_main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = fill_store(uri, (tmp_path / "artifacts").as_uri(), "scaling-test")
    out = tmp_path / "report"
    argv = ["--experiment", "scaling-test", "--tracking-uri", uri, "--out", str(out),
            "--metric", "best_test_loss", "--bootstrap", "8"]  # fmt: skip
    assert scaling_report_main(argv) == 0

    text = (out / "report.md").read_text()
    assert "12 finished runs" in text  # the failed run is left out, the duplicate counted once
    assert "sasrecx-d8-l1-amazon-1M-s42" in text and "broken-run" not in text
    assert "newest of each is used: sasrecx-d8-l1-amazon-1M-s42" in text
    assert "### Joint law L(N, D)" in text and "R² (log L) = " in text
    alpha = float(re.search(r"\| alpha \| ([0-9.]+) \|", text).group(1))
    beta = float(re.search(r"\| beta \| ([0-9.]+) \|", text).group(1))
    assert alpha == pytest.approx(LAW["alpha"], rel=0.1)
    assert beta == pytest.approx(LAW["beta"], rel=0.1)
    assert "k = 18 FLOPs per parameter" in text  # total_flops = 6 N D x 3 epochs
    assert "a = β/(α+β)" in text and "empirical, fit through the best runs" in text

    stems = [f"best_test_loss_{kind}" for kind in ("vs_N", "vs_D", "frontier")] + ["loss_curves"]
    expected = {f"{s}.{ext}" for s in stems for ext in ("png", "svg")} | {"report.md"}
    for name in expected:
        assert (out / name).stat().st_size > 1000 or name == "report.md", name
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (out / "loss_curves.svg").read_bytes()[:500]

    def report_runs() -> list:
        exp = client.get_experiment_by_name("scaling-test")
        return client.search_runs([exp.experiment_id], f"tags.`{REPORT_TAG}` = '{REPORT_KIND}'")

    (run,) = report_runs()
    assert run.info.run_name == REPORT_RUN_NAME and run.info.status == "FINISHED"
    logged = {
        a.path.split("/")[-1] for a in client.list_artifacts(run.info.run_id, "scaling_report")
    }
    assert logged == expected

    # Made again: the same report run is reused, the report run is never a data point, and
    # every file has the same bytes (fixed bootstrap seed, SVG ids salted, no dates).
    first = {name: (out / name).read_bytes() for name in expected}
    assert scaling_report_main(argv) == 0
    assert len(report_runs()) == 1
    for name in sorted(expected):
        assert (out / name).read_bytes() == first[name], name


def test_ranking_metric_is_fitted_as_its_complement():
    """NDCG (higher is better) is fitted as 1 - NDCG, labelled with its ranking protocol."""
    records = [
        RunRecord(
            f"{n}-{d}",
            f"r-{n}-{d}",
            n,
            d,
            3 * d,
            18 * n * d,
            protocol="sampled:10000",
            metrics={"best_test_ndcg_at_10": 1.0 - law(n, d) / 10},
        )  # fmt: skip
        for n in SIZES_N
        for d in SIZES_D.values()
    ]
    a = analyse_metric(records, "best_test_ndcg_at_10", n_boot=0)
    assert a.label == "test NDCG@10 (10000 sampled negatives)"
    assert a.fitted_label == "1 − test NDCG@10 (10000 sampled negatives)"
    np.testing.assert_allclose(a.y, [law(n, d) / 10 for n in SIZES_N for d in SIZES_D.values()])
    # 1 - NDCG = law / 10 exactly: the same exponents, E and A and B divided by 10.
    assert a.joint.alpha == pytest.approx(LAW["alpha"], rel=1e-3)
    assert a.joint.beta == pytest.approx(LAW["beta"], rel=1e-3)
    assert pytest.approx(LAW["E"] / 10, rel=1e-2) == a.joint.E
    assert a.analytic.a == pytest.approx(LAW["beta"] / (LAW["alpha"] + LAW["beta"]), rel=1e-2)
    assert a.k == pytest.approx(18.0)


def test_metric_names_and_orientation():
    assert metric_orientation("best_test_loss") == "lower"
    assert metric_orientation("best_test_ndcg_at_10") == "higher"
    assert metric_label("best_test_ndcg_at_10") == "test NDCG@10"
    assert metric_label("best_valid_hr_at_5") == "valid HR@5"
    assert protocol_label("sampled10000 (not comparable with full)") == "10000 sampled negatives"
    assert protocol_label("full") == "full ranking"
    with pytest.raises(ReportError, match="cannot tell whether higher is better"):
        metric_orientation("epoch_time_s")


def test_record_axes_from_params_and_metrics():
    run = {"run_id": "x", "run_name": "r", "params": {"params_non_embedding": "1000", "train_interactions": "500",
           "flops_per_token": "2000", "dataset": "amazon-1M", "eval_protocol": "full"},
           "metrics": {"total_flops": 3 * 2000 * 1500.0, "best_test_loss": 2.0}}  # fmt: skip
    rec = record_from_mlflow(run)
    # tokens = total_flops / (3 x forward flops_per_token)
    assert (rec.n_params, rec.interactions, rec.tokens, rec.compute) == (1000, 500, 1500, 9e6)
    # No total_flops: tokens = interactions x epochs run, compute = 3 x flops_per_token x tokens.
    run["metrics"] = {}
    rec = record_from_mlflow(run, {"train_loss": [(1, 2.0), (0, 3.0)]})
    assert (rec.tokens, rec.compute) == (1000, 6e6)
    assert rec.history["train_loss"] == [(0, 3.0), (1, 2.0)]


def test_latest_per_name_keeps_first():
    runs = [
        {"run_name": "a", "run_id": "1"},
        {"run_name": "b", "run_id": "2"},
        {"run_name": "a", "run_id": "3"},
    ]
    kept, dup = latest_per_name(runs)
    assert [r["run_id"] for r in kept] == ["1", "2"]
    assert dup == ["a"]
