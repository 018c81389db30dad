"""The report: from a synthetic MLflow store, and from runs made in the test (forms, frontier,
tuning, budgets, groups); record parsing."""

from __future__ import annotations

import re
import time
from dataclasses import replace

import numpy as np
import pytest

from recbole_fork.scaling.mapping import StoreMapping
from recbole_fork.scaling.report import (
    REPORT_RUN_NAME,
    ReportError,
    analyse_metric,
    metric_label,
    metric_orientation,
    protocol_label,
    write_report,
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
            "--metric", "best_test_loss", "--bootstrap", "8", "--holdout", "largest-N"]  # fmt: skip
    assert scaling_report_main(argv) == 0

    text = (out / "report.md").read_text()
    made_with = text.split("Made with:", 1)[1].split("\n\n")[1]
    assert not re.search(r"(^|\s|:///)/", made_with), made_with  # no absolute path
    assert "12 finished runs" in text  # the failed run is left out, the duplicate counted once
    assert "sasrecx-d8-l1-amazon-1M-s42" in text and "broken-run" not in text
    assert "newest of each is used: sasrecx-d8-l1-amazon-1M-s42" in text
    assert "### test loss = E + A/N^α + B/D^β (a power law with a fitted floor E)" in text
    alpha = float(re.search(r"\| alpha \| ([0-9.]+) \|", text).group(1))
    beta = float(re.search(r"\| beta \| ([0-9.]+) \|", text).group(1))
    assert alpha == pytest.approx(LAW["alpha"], rel=0.1)
    assert beta == pytest.approx(LAW["beta"], rel=0.1)
    assert "leave-one-cell-out error (log, a relative error): RMS " in text
    assert "no cell has two seeds: the law's cell residuals resampled" in text
    assert "k = 18 FLOPs per parameter per unit of D" in text  # total_flops = 6 N D x 3 epochs
    assert "Approach 3, from the joint law" in text
    assert "#### Extrapolation test: largest-N held out" in text
    summary = text[text.index("## Summary") : text.index("## Reading")]
    assert re.search(
        r"\*\*test loss\*\*, 12 cells: loss form, size exponent α = 0\.\d+ \[", summary
    )
    assert "Held out (largest-N), predicted against observed: N 10M: " in summary
    assert "inside their 95% prediction intervals." in summary
    assert (
        "What the study cannot tell: the laws hold over the range measured, N = 10K to 10M "
        "non-embedding parameters, D = 99.4K to 9.99M training interactions" in summary
    )
    assert "Metrics: 10000 sampled negatives. Data: amazon-100K, amazon-10M, amazon-1M." in summary

    stems = [
        f"best_test_loss_loss_{kind}"
        for kind in ("vs_N", "vs_D", "frontier", "extrapolation_largest-N")
    ]
    stems.append("loss_curves")
    expected = {f"{s}.{ext}" for s in stems for ext in ("png", "svg")} | {"report.md"}
    assert {p.name for p in out.iterdir()} == expected
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


def records_on_law(
    metric: str = "best_test_ndcg_at_10", *, datasets=SIZES_D, seeds=(1,)
) -> list[RunRecord]:
    rng = np.random.default_rng(0)
    return [
        RunRecord(
            f"{n}-{d}-{s}",
            f"r-{n:g}-{d:g}-s{s}",
            n,
            d,
            3 * d,
            18 * n * d,
            dataset=name,
            protocol="sampled:10000",
            seed=str(s),
            metrics={metric: 1.0 - law(n, d) / 10 * float(np.exp(rng.normal(0, 1e-4)))},
        )  # fmt: skip
        for n in SIZES_N
        for name, d in datasets.items()
        for s in seeds
    ]


def test_ranking_metric_is_fitted_as_its_complement_and_as_a_power_law():
    """NDCG (higher is better) gets two named forms: 1 - NDCG with a floor, and NDCG itself."""
    a = analyse_metric(records_on_law(), "best_test_ndcg_at_10", n_boot=0)
    assert a.label == "test NDCG@10 (10000 sampled negatives)"
    floor, power = a.forms
    assert (floor.form.key, power.form.key) == ("error-floor", "metric-power")
    # 1 - NDCG = law / 10: the same exponents, E and A and B divided by 10.
    assert floor.law.alpha == pytest.approx(LAW["alpha"], rel=0.02)
    assert floor.law.beta == pytest.approx(LAW["beta"], rel=0.02)
    assert pytest.approx(LAW["E"] / 10, rel=0.02) == floor.law.E
    assert floor.analytic.a == pytest.approx(LAW["beta"] / (LAW["alpha"] + LAW["beta"]), rel=0.03)
    assert floor.k == pytest.approx(18.0)
    assert floor.loo.rms < 0.001 and power.loo.rms > floor.loo.rms  # the power form misfits
    assert power.law.a > 0 and power.law.b > 0  # NDCG grows with N and D
    assert [s.axis for s in floor.slices] == ["N"] * 3  # 4 sizes per D; 3 data sizes per N
    assert [s.axis for s in power.slices] == ["N"] * 3 + ["D"] * 4


def test_frontier_is_not_determined_from_one_data_size(tmp_path):
    records = records_on_law(datasets={"amazon-1M": 986_987})
    result = write_report(records, tmp_path, experiment="one-d", n_boot=0,
                          mapping=StoreMapping(metrics=("best_test_ndcg_at_10",)))  # fmt: skip
    text = result.report.read_text()
    assert "Not determined: a single data size or budget (1 distinct)" in text
    assert "Approach 3" not in text and "| a |" not in text
    assert not list(tmp_path.glob("*frontier*"))
    (a,) = result.study.analyses.values()
    assert all(fa.analytic is None for fa in a.forms)


def test_tuned_sizes_list_winners_and_warn_at_the_edge(tmp_path):
    records = []
    for n, best_lr in ((1e4, "0.003"), (1e5, "0.001"), (1e6, "0.001")):
        for lr in ("0.0003", "0.001", "0.003"):
            for d in (1e5, 1e6):
                good = lr == best_lr
                records.append(RunRecord(f"{n}{lr}{d}", f"r{n:g}-lr{lr}-{d:g}", n, d, 3 * d, 18 * n * d,
                    tuned={"learning_rate": lr}, protocol="full",
                    metrics={"best_test_loss": law(n, d) * (1.0 if good else 1.1),
                             "best_valid_loss": law(n, d) * (1.0 if good else 1.1)}))  # fmt: skip
    mapping = StoreMapping(
        metrics=("best_test_loss",), select="best_valid_loss", tune=("learning_rate",)
    )
    result = write_report(records, tmp_path, experiment="tuned", n_boot=0, mapping=mapping)
    text = result.report.read_text()
    assert "Tuned per size (the setting with the best mean best_valid_loss):" in text
    assert (
        "| 10K | 100K | learning_rate | 0.003 | 0.0003, 0.001, 0.003 | **at the edge of its grid** |"
        in text
    )
    assert "| 100K | 100K | learning_rate | 0.001 | 0.0003, 0.001, 0.003 |  |" in text
    assert "Warning: 2 of 6 winners sit at the edge of their grid" in text
    assert "choices were between two values only" not in text
    (a,) = result.study.analyses.values()
    assert [c.tuned["learning_rate"] for c in a.cells] == ["0.003", "0.001", "0.001"] * 2
    np.testing.assert_allclose([c.mean for c in a.cells], [law(c.n, c.d) for c in a.cells])


def test_budget_study_draws_isoflop_profiles(tmp_path):
    """Runs at 3 budgets x 7 sizes around a planted N*(C) = 0.05 C^0.5: approach 2 finds it."""
    records = []
    for c in (1e12, 1e13, 1e14):
        n_star = 0.05 * c**0.5
        for i, n in enumerate(n_star * np.geomspace(0.1, 10, 7)):
            loss = 3.0 + 0.05 * np.log(n / n_star) ** 2
            records.append(RunRecord(f"{c}{i}", f"r-c{c:g}-{i}", n, 1e5, c / (6 * n), c, budget=c,
                                     metrics={"best_test_loss": loss}))  # fmt: skip
    result = write_report(records, tmp_path, experiment="iso", n_boot=20,
                          mapping=StoreMapping(metrics=("best_test_loss",)))  # fmt: skip
    text = result.report.read_text()
    assert "D = training tokens processed" in text  # auto: budgets -> tokens
    assert "Approach 2, IsoFLOP profiles" in text
    (a,) = result.study.analyses.values()
    iso = a.forms[0].isoflop
    np.testing.assert_allclose(
        [p.n_opt for p in iso.profiles], [0.05 * c**0.5 for c in (1e12, 1e13, 1e14)], rtol=1e-6
    )
    assert iso.exponents.a == pytest.approx(0.5, rel=1e-6)
    assert (tmp_path / "best_test_loss_loss_isoflop.png").is_file()


def test_groups_are_analysed_apart_and_compared(tmp_path):
    base = records_on_law(metric="best_test_ndcg_at_10")
    records = [replace(r, group="neg=100") for r in base]
    records += [replace(r, run_id=r.run_id + "b", run_name=r.run_name + "b", label="", group="neg=300",
                        metrics={k: v * 1.05 for k, v in r.metrics.items()}) for r in base]  # fmt: skip
    result = write_report(records, tmp_path, experiment="groups", n_boot=20,
                          mapping=StoreMapping(metrics=("best_test_ndcg_at_10",)))  # fmt: skip
    text = result.report.read_text()
    assert "24 finished runs in 2 groups (neg=100; neg=300)" in text
    assert "# neg=100" in text and "# neg=300" in text and "# Groups compared with neg=100" in text
    p = result.study.comparisons[("neg=300", "best_test_ndcg_at_10")]
    assert len(p.matched) == 12 and p.relative == pytest.approx(0.05) and p.higher == 12
    assert "higher in 12 of 12 common cells, lower in 0" in text


def test_metric_names_and_orientation():
    assert metric_orientation("best_test_loss") == "lower"
    assert metric_orientation("test/eval_loss") == "lower"
    assert metric_orientation("best_test_ndcg_at_10") == "higher"
    assert metric_orientation("test/hit_at_5") == "higher"
    assert metric_label("best_test_ndcg_at_10") == "test NDCG@10"
    assert metric_label("best_valid_hr_at_5") == "valid HR@5"
    assert metric_label("test/ndcg_at_5") == "test NDCG@5"
    assert metric_label("test/eval_loss") == "test eval loss"
    assert protocol_label("sampled10000 (not comparable with full)") == "10000 sampled negatives"
    assert protocol_label("full") == "full ranking"
    assert (
        protocol_label("full; users<=4096") == "full ranking, a fixed sample of at most 4,096 users"
    )
    assert protocol_label("sampled100 (not comparable with full); users<=50") == (
        "100 sampled negatives, a fixed sample of at most 50 users"
    )
    assert protocol_label("10,000 uniform items") == "10,000 uniform items"
    with pytest.raises(ReportError, match="cannot tell whether higher is better"):
        metric_orientation("epoch_time_s")


def test_record_axes_from_params_and_metrics():
    run = {"run_id": "x", "run_name": "r", "params": {"params_non_embedding": "1000", "train_interactions": "500",
           "dataset": "amazon-1M", "eval_protocol": "full", "seed": "7", "hidden_size": "64",
           "n_layers": "2", "train_flops_budget": "1e9"},
           "metrics": {"total_flops": 9e6, "total_tokens": 1500.0, "best_test_loss": 2.0}}  # fmt: skip
    rec = record_from_mlflow(run)
    assert (rec.n_params, rec.interactions, rec.tokens, rec.compute) == (1000, 500, 1500, 9e6)
    assert (rec.seed, rec.width, rec.depth, rec.budget, rec.label) == ("7", 64, 2, 1e9, "r")
    assert not rec.compute_estimated
    # No totals: tokens = interactions x epochs run; no compute unless the mapping estimates it.
    run["metrics"] = {}
    rec = record_from_mlflow(run, {"train_loss": [(1, 2.0), (0, 3.0)]})
    assert (rec.tokens, rec.compute) == (1000, None)
    assert rec.history["train_loss"] == [(0, 3.0), (1, 2.0)]
    run["params"]["epochs"] = "2"
    rec = record_from_mlflow(run, None, StoreMapping(compute_k=6.0))
    assert (rec.compute, rec.compute_estimated) == (6.0 * 1000 * 500 * 2, True)


def test_latest_per_name_keeps_first():
    runs = [
        {"run_name": "a", "run_id": "1"},
        {"run_name": "b", "run_id": "2"},
        {"run_name": "a", "run_id": "3"},
    ]
    kept, dup = latest_per_name(runs)
    assert [r["run_id"] for r in kept] == ["1", "2"]
    assert dup == ["a"]


def test_overfitting_counts_runs_whose_valid_loss_rises():
    from recbole_fork.scaling.report import overfitting

    def run(curve):
        return RunRecord("i", "r", 1.0, 1.0, 1.0, 1.0, history={"valid_loss": curve})

    runs = [run([(0, 5.0), (1, 4.0), (2, 4.5)]),  # 12.5% above its minimum at epoch 1
            run([(0, 5.0), (1, 4.0), (2, 4.1)]),  # 2.5%: not counted
            run([(0, 5.0), (3, 4.0), (5, 6.0)]),  # minimum at epoch 3
            run([(0, 5.0)])]  # fmt: skip
    assert overfitting(runs) == (2, 3, 2.0)


def test_portable_command_makes_absolute_paths_relative(tmp_path):
    from recbole_fork.scaling.report import portable_command

    words = ["--tracking-uri", f"sqlite:///{tmp_path}/a b/m.db", "--out", str(tmp_path / "r"),
             "--store", (tmp_path / "s.db").as_uri(), "--metric", "best_test_loss", "docs/x"]  # fmt: skip
    line = portable_command(words, cwd=tmp_path)
    assert line == ("--tracking-uri 'sqlite:///a b/m.db' --out r --store file://s.db "
                    "--metric best_test_loss docs/x")  # fmt: skip
    assert portable_command(["/elsewhere/f"], cwd=tmp_path / "x").startswith("../../")
