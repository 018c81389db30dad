"""Run a scaling sweep with Ray Tune: ``python scripts/sweep.py -c confs/sweeps/tiny.yaml``.

Every trial logs to one MLflow store, named by its hyperparameters. Started again, the
sweep skips the trials MLflow lists as FINISHED and reruns the failed ones. Exit status 1
when a trial failed (all the others still ran), 2 for a bad sweep file or an unreachable
tracking server, 1 for an I/O error (named with its path).
"""

from __future__ import annotations

import argparse
import logging
import sys

from recbole_fork.errors import UserError
from recbole_fork.scaling.sweep import SweepError, load_sweep, run_sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True, help="sweep file (confs/sweeps/*.yaml)")
    parser.add_argument(
        "--ray-address",
        help="existing Ray cluster (head:6379, or auto on one of its nodes); default: a local Ray",
    )
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    parser.add_argument(
        "--max-concurrent", type=int, help="trials at once (default: as resources allow)"
    )
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument(
        "--gpus-per-trial", type=float, default=0.0, help="GPUs each trial reserves and trains on"
    )
    parser.add_argument(
        "--tracking-uri",
        help="MLflow URI reachable from every Ray node (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.sqlite)",
    )
    parser.add_argument(
        "--max-trials",
        type=int,
        help="launch at most this many pending trials, leave the rest for the next run",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        spec = load_sweep(args.config)
        result = run_sweep(
            spec,
            tracking_uri=args.tracking_uri,
            ray_address=args.ray_address,
            num_cpus=args.num_cpus,
            max_concurrent=args.max_concurrent,
            cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial,
            max_trials=args.max_trials,
        )
    except (SweepError, UserError) as e:  # a bad sweep file; an unreachable tracking server
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(result.summary())
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
