"""``scripts/serve.py``: serve a checkpoint (or an MLflow run's) over HTTP.

Everything is loaded and checked, and the port bound, before the server starts: a missing
or incompatible checkpoint, a dataset that does not fit it or a busy port is one line on
stderr and exit status 2 (``UserError``), and nothing listens.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Sequence

from recbole_fork.errors import UserError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="serve.py",
        description="Serve top-k recommendations of a trained model over HTTP (FastAPI).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-i", "--checkpoint", help="checkpoint of pre_train.py or fine_tune.py")
    src.add_argument("--run", metavar="MLFLOW_RUN_ID", help="serve the checkpoint a run recorded")
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI for --run (default: $MLFLOW_TRACKING_URI or "
        "sqlite:///mlruns.sqlite)",
    )
    p.add_argument(
        "--data-path",
        help="folder holding <dataset>/<dataset>.inter of the training data (default: the "
        "checkpoint's data_path)",
    )
    p.add_argument(
        "--sentencepiece",
        help="SentencePiece model for POST /items (default: <data-path>/sentencepiece/spm.model)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: a free one)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument(
        "--max-batch", type=_positive, default=64, help="most queries per model call (default 64)"
    )
    p.add_argument(
        "--max-wait-ms", type=_non_negative, default=2.0,
        help="how long a request waits for others to share its batch (default 2)",
    )  # fmt: skip
    p.add_argument(
        "--max-body-kb", type=_positive, default=1024, help="largest request body (default 1024)"
    )
    p.add_argument(
        "--threads", type=_positive, default=1,
        help="torch CPU threads of the model (default 1: small batches gain nothing from more, "
        "and on a shared machine OpenMP threads stall them; raise it for large catalogs on "
        "idle cores)",
    )  # fmt: skip
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    return p


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 0")
    return value


def serve_main(argv: Sequence[str] | None = None) -> int:
    """``serve.py -i CHECKPOINT | --run RUN_ID [options]``; see ``--help``."""
    args = _parser().parse_args(argv)
    import torch

    from recbole_fork.run import setup_logging
    from recbole_fork.serving.app import ServerOptions, create_app
    from recbole_fork.serving.loading import checkpoint_of_run, load_servable
    from recbole_fork.serving.recommender import Recommender
    from recbole_fork.serving.server import bind_socket, run_server

    setup_logging(getattr(logging, args.log_level.upper()))
    torch.set_num_threads(args.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="serve-") as tmp:
            checkpoint, name = args.checkpoint, None
            if args.run:
                checkpoint, name = checkpoint_of_run(args.run, args.tracking_uri, tmp)
            servable = load_servable(
                checkpoint, data_path=args.data_path, device=args.device, run_name=name
            )
            if args.run:  # the downloaded copy goes with the temporary folder
                servable.checkpoint = f"MLflow run {args.run}"
        recommender = Recommender(servable, sentencepiece=args.sentencepiece)
        sock = bind_socket(args.host, args.port)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    options = ServerOptions(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_body_bytes=args.max_body_kb * 1024,
    )
    port = sock.getsockname()[1]
    print(
        f"serving {servable.run_name} (version {servable.version}, {recommender.n_items - 1} "
        f"items, {servable.device}) on http://{args.host}:{port}",
        flush=True,
    )
    run_server(
        create_app(recommender, options), sock, log_level=args.log_level, access_log=args.access_log
    )
    print("stopped", flush=True)
    return 0


__all__ = ["serve_main"]
