"""Command lines (``scripts/pre_train.py`` and the ``rf-pre-train`` console script).

Each parses its arguments, builds the config, calls one library function and prints the
result. A user-caused error becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from recbole_fork.checkpoint import CheckpointError
from recbole_fork.config import ConfigError, build_config

USER_ERRORS = (ConfigError, CheckpointError, FileNotFoundError, ValueError)


def _pre_train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pre_train.py",
        description="Train a sequential recommender; every run is tracked in MLflow.",
    )
    p.add_argument(
        "-c", "--config", required=True, help="config file (.yaml/.json; extension optional)"
    )
    p.add_argument("-o", "--output", required=True, help="checkpoint to write (and to resume from)")
    p.add_argument(
        "--data-path", help="folder holding <dataset>/<dataset>.inter (default: the config's)"
    )
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key (YAML-typed value; dotted keys reach into mappings); repeatable",
    )  # fmt: skip
    p.add_argument(
        "--resume", action="store_true", help="continue a killed run from its checkpoint"
    )
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.sqlite)",
    )
    return p


def pre_train_main(argv: Sequence[str] | None = None) -> int:
    """``pre_train.py -c CONFIG -o CHECKPOINT [--data-path OUT] [--set k=v ...] [--resume]``."""
    args = _pre_train_parser().parse_args(argv)
    from recbole_fork.run import pre_train

    overrides = list(args.overrides)
    if args.data_path:
        overrides.append(f"data_path={args.data_path}")
    try:
        config = build_config(args.config, overrides)
        result = pre_train(
            config,
            args.output,
            resume=args.resume,
            tracking_uri=args.tracking_uri,
            config_file=args.config,
        )
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0
