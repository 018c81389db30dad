"""The calibration table of the synthetic capacity data, from the MLflow store of its runs.

Two checks (issue 14; BENCHMARKS.md, "Synthetic data that rewards capacity"):

1. Width: the runs of ``confs/sweeps/capacity-calibration.yaml`` (experiment
   ``capacity-calibration``): per width, each seed's test loss and full-ranking test NDCG@10,
   and whether every step of width improves both means by more than the seed spread (the
   largest max - min over the seeds of the two widths compared).
2. Fine-tuning set: the frozen Beauty SASRec config (``confs/benchmarks/beauty-sasrec-id.yaml``)
   trained on the synthetic amazon-beauty set (experiment ``capacity-calibration-beauty``),
   against its real-Beauty HR@10 / NDCG@10 (0.0935 / 0.0568): within a factor of 2?

Usage:
    python scripts/capacity_calibration.py --tracking-uri sqlite:///data/studies/calibration/mlruns.sqlite

Prints the two tables as Markdown; exits 0 whatever the checks say (they are reported).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

from recbole_fork import tracking  # noqa: E402

WIDTH_EXPERIMENT = "capacity-calibration"
BEAUTY_EXPERIMENT = "capacity-calibration-beauty"
REAL_BEAUTY = {"hr_at_10": 0.0935, "ndcg_at_10": 0.0568}  # BENCHMARKS.md, frozen config
METRICS = (("best_test_loss", "test loss", -1), ("best_test_ndcg_at_10", "test NDCG@10", 1))


def _finished(experiment: str, uri: str) -> list[dict]:
    runs = tracking.search_runs(experiment, uri, filter_string="attributes.status = 'FINISHED'")
    seen, out = set(), []
    for run in runs:  # newest first: keep one run per name
        if run["run_name"] not in seen:
            seen.add(run["run_name"])
            out.append(run)
    return out


def _spread(values: list[float]) -> float:
    return max(values) - min(values) if len(values) > 1 else float("nan")


def width_table(runs: list[dict]) -> list[str]:
    """Markdown rows: one per width, then one line per check."""
    by_width: dict[int, list[dict]] = defaultdict(list)
    for run in runs:
        by_width[int(run["params"]["hidden_size"])].append(run)
    widths = sorted(by_width)
    lines = [
        "| width | N (non-embedding) | seeds | test loss per seed | mean | "
        "test NDCG@10 per seed | mean |",
        "|---:|---:|---|---|---:|---|---:|",
    ]
    means: dict[tuple[int, str], float] = {}
    values: dict[tuple[int, str], list[float]] = {}
    for w in widths:
        rs = sorted(by_width[w], key=lambda r: r["params"].get("seed", ""))
        row = [str(w), f"{float(rs[0]['params'].get('params_non_embedding', 'nan')):,.0f}"]
        row.append(", ".join(r["params"].get("seed", "?") for r in rs))
        for key, _, _ in METRICS:
            vals = [float(r["metrics"][key]) for r in rs if key in r["metrics"]]
            values[(w, key)] = vals
            means[(w, key)] = sum(vals) / len(vals) if vals else float("nan")
            row += [", ".join(f"{v:.4f}" for v in vals), f"{means[(w, key)]:.4f}"]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for a, b in zip(widths, widths[1:]):
        parts = []
        for key, label, sign in METRICS:
            step = sign * (means[(b, key)] - means[(a, key)])  # > 0: an improvement
            spread = max(_spread(values[(a, key)]), _spread(values[(b, key)]))
            ok = step > spread
            parts.append(
                f"{label} {'improves' if step > 0 else 'worsens'} by {abs(step):.4f} "
                f"(seed spread {spread:.4f}: {'yes' if ok else 'NO'})"
            )
        lines.append(f"- {a} -> {b}: " + "; ".join(parts))
    return lines


def beauty_table(runs: list[dict]) -> list[str]:
    """Markdown rows: the synthetic-Beauty run(s) against the real benchmark's figures."""
    lines = [
        "| run | test HR@10 | real | ratio | test NDCG@10 | real | ratio | within 2x |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for run in sorted(runs, key=lambda r: r["run_name"]):
        m = run["metrics"]
        hr, ndcg = m.get("best_test_hr_at_10"), m.get("best_test_ndcg_at_10")
        if hr is None or ndcg is None:
            continue
        r_hr, r_ndcg = hr / REAL_BEAUTY["hr_at_10"], ndcg / REAL_BEAUTY["ndcg_at_10"]
        ok = all(0.5 <= r <= 2.0 for r in (r_hr, r_ndcg))
        lines.append(
            f"| {run['run_name']} | {hr:.4f} | {REAL_BEAUTY['hr_at_10']} | {r_hr:.2f} | "
            f"{ndcg:.4f} | {REAL_BEAUTY['ndcg_at_10']} | {r_ndcg:.2f} | {'yes' if ok else 'NO'} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Print the calibration tables of the store."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True, help="the calibration's MLflow store")
    args = parser.parse_args(argv)
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    width_runs = _finished(WIDTH_EXPERIMENT, uri)
    print(f"## Width ({len(width_runs)} finished runs of {WIDTH_EXPERIMENT})\n")
    print("\n".join(width_table(width_runs)) if width_runs else "no finished run yet")
    beauty_runs = _finished(BEAUTY_EXPERIMENT, uri)
    print(f"\n## Fine-tuning set ({len(beauty_runs)} finished runs of {BEAUTY_EXPERIMENT})\n")
    print("\n".join(beauty_table(beauty_runs)) if beauty_runs else "no finished run yet")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
