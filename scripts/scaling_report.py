"""Scaling report from MLflow: ``python scripts/scaling_report.py --experiment NAME --out DIR``.

Writes DIR/report.md (fitted laws, exponents with bootstrap intervals, R^2, residuals, the
compute-optimal frontier) and PNG + SVG figures, and logs them as artifacts of the
experiment's ``scaling-report`` run.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from recbole_fork.errors import UserError
from recbole_fork.scaling.report import DATA_AXES, DEFAULT_METRICS, ReportError, scaling_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True, help="MLflow experiment of the sweep")
    parser.add_argument(
        "--tracking-uri", help="default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.sqlite"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--metric", nargs="+", default=list(DEFAULT_METRICS),
                        help="MLflow metric names (default: %(default)s)")  # fmt: skip
    parser.add_argument("--data-axis", choices=DATA_AXES, default="interactions",
                        help="D of the laws: dataset training interactions or tokens processed")  # fmt: skip
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    args = parser.parse_args(argv)
    command = "python scripts/scaling_report.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    try:
        result = scaling_report(
            args.experiment,
            args.out,
            tracking_uri=args.tracking_uri,
            metrics=args.metric,
            data_axis=args.data_axis,
            n_boot=args.bootstrap,
            seed=args.seed,
            log_artifacts=not args.no_log,
            command=command,
        )
    except (ReportError, ValueError, UserError) as e:  # UserError: an unreachable server
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"wrote {result.report} and {len(result.figures)} figure files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
