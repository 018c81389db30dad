"""Scaling report from MLflow: ``python scripts/scaling_report.py --experiment NAME --out DIR``.

Writes DIR/report.md (the laws in named forms with 95% intervals and leave-one-cell-out
errors, the compute-optimal frontier where the runs determine one, the extrapolation test of
``--holdout``) and PNG + SVG figures. Reads this project's store (``--tracking-uri``; the
report is then logged back as artifacts of the experiment's ``scaling-report`` run), or any
MLflow store with ``--store PATH`` and a mapping file naming its keys (``--mapping``): a store
given that way is read from a temporary copy upgraded to the running MLflow's schema and is
never changed. Example, the original study's own runs:

    python scripts/scaling_report.py --store ../shared/data/srt_runs/mlruns.sqlite.bz2 \\
        --mapping confs/reports/srt.yaml --out docs/scaling/srt --holdout largest-N largest-D
"""

from __future__ import annotations

import argparse
import sys

from recbole_fork.errors import UserError
from recbole_fork.scaling.extrapolation import HOLDOUTS
from recbole_fork.scaling.mapping import StoreMapping, load_mapping
from recbole_fork.scaling.report import DATA_AXES, portable_command, scaling_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", help="MLflow experiment (default: the mapping's)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--tracking-uri",
        help="this project's store (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.sqlite)",
    )
    where.add_argument(
        "--store",
        help="any MLflow store: sqlite file (also .bz2/.gz), mlruns folder or URI; read-only",
    )
    parser.add_argument("--mapping", help="YAML naming the store's keys (confs/reports/*.yaml)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--metric", nargs="+", help="metric names (default: the mapping's)")
    parser.add_argument("--tune", nargs="+", help="params tuned per size (default: the mapping's)")
    parser.add_argument(
        "--group-by", nargs="+", help="params separating studies (default: the mapping's)"
    )
    parser.add_argument("--data-axis", choices=DATA_AXES, default="auto",
                        help="D of the laws: training interactions or tokens processed; auto: "
                        "tokens when the runs have compute budgets")  # fmt: skip
    parser.add_argument("--holdout", nargs="+", choices=HOLDOUTS, default=[],
                        help="extrapolation tests: fit without these cells, predict them")  # fmt: skip
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    args = parser.parse_args(argv)
    command = "python scripts/scaling_report.py " + portable_command(
        sys.argv[1:] if argv is None else argv
    )
    try:
        mapping = load_mapping(args.mapping) if args.mapping else StoreMapping()
        mapping = mapping.with_overrides(
            metrics=tuple(args.metric) if args.metric else None,
            tune=tuple(args.tune) if args.tune else None,
            group_by=tuple(args.group_by) if args.group_by else None,
        )
        result = scaling_report(
            args.experiment,
            args.out,
            tracking_uri=args.tracking_uri,
            store=args.store,
            mapping=mapping,
            data_axis=args.data_axis,
            n_boot=args.bootstrap,
            seed=args.seed,
            holdouts=args.holdout,
            log_artifacts=not args.no_log,
            command=command,
        )
    except UserError as e:  # a bad argument, mapping or store; an unreachable server
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"wrote {result.report} and {len(result.figures)} figure files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
