"""Command lines (``scripts/pre_train.py`` and the ``rf-pre-train`` console script).

Each parses its arguments, builds the config, calls one library function and prints the
result. A user-caused error (``recbole_fork.errors.UserError``) becomes one line on stderr
and exit status 2; an I/O error (``OSError``: a full disk, a folder that cannot be written)
one line naming the path and the cause, exit status 1; Ctrl-C the resume hint and exit
status 130. Any other exception is a bug and keeps its traceback.

``-o`` is checked before the config is built: an existing checkpoint is continued only with
``--resume`` and replaced only with ``--overwrite``, and never is the ``-i`` it reads from;
while a run writes it, ``<-o>.lock`` stops a second run on the same checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

from recbole_fork.checkpoint import check_checkpoint_path, check_output, output_lock
from recbole_fork.config import build_config
from recbole_fork.distributed import DistEnv, rank_gpu_id
from recbole_fork.errors import UserError
from recbole_fork.settings import ConfigError

EXIT_USER_ERROR = 2
EXIT_IO_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


def report_error(error: BaseException) -> int:
    """Print a user error, I/O error or Ctrl-C as one line on stderr; the exit status."""
    if isinstance(error, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(error, OSError):
        where = " -> ".join(str(f) for f in (error.filename, error.filename2) if f is not None)
        cause = error.strerror or str(error) or type(error).__name__
        print(f"error: {where + ': ' if where else ''}{cause}", file=sys.stderr)
        return EXIT_IO_ERROR
    print(f"error: {error}", file=sys.stderr)
    return EXIT_USER_ERROR


def write_result(checkpoint: str | Path, result: dict) -> Path:
    """Write the final metrics beside the checkpoint (``x.pth`` -> ``x.metrics.json``), atomically."""
    path = Path(checkpoint).with_suffix(".metrics.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def _add_run_args(p: argparse.ArgumentParser) -> None:
    """The arguments both scripts share: data path, ``--set`` overrides, tracking URI."""
    p.add_argument(
        "--data-path", help="folder holding <dataset>/<dataset>.inter (default: the config's)"
    )
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key (YAML-typed value; dotted keys reach into mappings); repeatable",
    )  # fmt: skip
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.sqlite)",
    )


def _overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` items, plus ``data_path`` when ``--data-path`` is given."""
    overrides = list(args.overrides)
    if args.data_path:
        overrides.append(f"data_path={args.data_path}")
    return overrides


def _pre_train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pre_train.py",
        description="Train a sequential recommender; every run is tracked in MLflow.",
    )
    p.add_argument(
        "-c", "--config", required=True, help="config file (.yaml/.json; extension optional)"
    )
    p.add_argument("-o", "--output", required=True, help="checkpoint to write (and to resume from)")
    _add_run_args(p)
    p.add_argument(
        "--resume", action="store_true", help="continue a killed run from its checkpoint"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing checkpoint -o with a new run"
    )
    p.add_argument(
        "--allow-change", dest="allow_changes", action="append", default=[], metavar="KEY",
        help="with --resume: let KEY differ from the checkpoint's config (recorded in MLflow); "
        "repeatable",
    )  # fmt: skip
    return p


def _torchrun_overrides(dist: DistEnv, overrides: list[str]) -> list[str]:
    """Pin a data-parallel rank to its own GPU unless ``--set gpu_id=...`` says otherwise.

    RecBole writes ``gpu_id`` into ``CUDA_VISIBLE_DEVICES`` while building the config (before
    CUDA starts), so this has to be an override, not a later device choice.
    """
    if not dist.enabled or any(o.split("=", 1)[0].strip() == "gpu_id" for o in overrides):
        return overrides
    return [*overrides, f"gpu_id={rank_gpu_id(dist)}"]


def pre_train_main(argv: Sequence[str] | None = None) -> int:
    """``pre_train.py -c CONFIG -o CHECKPOINT [--data-path OUT] [--set k=v ...] [--resume]``.

    Under ``torchrun`` every process runs this; rank 0 alone writes and prints the result.
    """
    args = _pre_train_parser().parse_args(argv)
    from recbole_fork.run import pre_train

    try:
        if args.allow_changes and not args.resume:
            raise ConfigError("--allow-change applies to --resume only")
        dist = DistEnv.from_environ()
        check_checkpoint_path(args.output)
        with output_lock(args.output) if dist.is_main else nullcontext():
            return _pre_train(args, dist, pre_train)
    except (UserError, OSError, KeyboardInterrupt) as e:
        return report_error(e)


def _pre_train(args: argparse.Namespace, dist: DistEnv, pre_train) -> int:
    """``pre_train_main`` once rank 0 holds the checkpoint's lock."""
    check_output(args.output, resume=args.resume, overwrite=args.overwrite)
    overrides = _torchrun_overrides(dist, _overrides(args))
    config = build_config(args.config, overrides)
    if args.overwrite and dist.is_main:
        # The old result must not sit beside the new run's checkpoint.
        Path(args.output).with_suffix(".metrics.json").unlink(missing_ok=True)
    result = pre_train(
        config,
        args.output,
        resume=args.resume,
        tracking_uri=args.tracking_uri,
        config_file=args.config,
        dist=dist,
        allow_changes=args.allow_changes,
    )
    if dist.is_main:
        write_result(args.output, result)
        print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def _fine_tune_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fine_tune.py",
        description="Fine-tune a pre-trained model on a target dataset; tracked in MLflow.",
    )
    p.add_argument(
        "-c", "--config", required=True,
        help="fine-tuning config, e.g. confs/fine_tune/full.yaml (extension optional)",
    )  # fmt: skip
    p.add_argument(
        "-s", "--dataset", required=True, help="target dataset (folder under the data path)"
    )
    p.add_argument("-o", "--output", required=True, help="fine-tuned checkpoint to write")
    p.add_argument("-l", "--pretrain-dataset", help="pre-training dataset (EWC's Fisher; logged)")
    p.add_argument("-i", "--init", help="pre-trained checkpoint (not needed by from_scratch)")
    p.add_argument(
        "-p", "--pretrain-config",
        help="pre-training config; optional, checked against the checkpoint's own config",
    )  # fmt: skip
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing checkpoint -o with a new run"
    )
    _add_run_args(p)
    return p


def fine_tune_main(argv: Sequence[str] | None = None) -> int:
    """``fine_tune.py -c CONFIG -s DATASET -o CHECKPOINT [-l DATASET -i CHECKPOINT] [-p CONFIG]``."""
    args = _fine_tune_parser().parse_args(argv)
    from recbole_fork.finetune import fine_tune, fine_tune_config

    overrides = _overrides(args)
    try:
        if DistEnv.from_environ().enabled:
            # Each process would fine-tune alone and all would write the same checkpoint.
            raise ConfigError("fine_tune.py runs as one process: start it without torchrun")
        check_checkpoint_path(args.output)
        with output_lock(args.output):
            check_output(args.output, overwrite=args.overwrite, init=args.init, can_resume=False)
            config = fine_tune_config(
                args.config,
                args.dataset,
                overrides,
                pretrained=args.init,
                pretrain_config=args.pretrain_config,
            )
            if args.overwrite:
                Path(args.output).with_suffix(".metrics.json").unlink(missing_ok=True)
            result = fine_tune(
                config,
                args.output,
                pretrained=args.init,
                pretrain_dataset=args.pretrain_dataset,
                tracking_uri=args.tracking_uri,
                config_file=args.config,
            )
            write_result(args.output, result)
    except (UserError, OSError, KeyboardInterrupt) as e:
        return report_error(e)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0
