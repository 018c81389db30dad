"""The one-command demo (`make demo`): the whole pipeline on generated data, offline.

1. synthetic raw data in the real Amazon formats (``python -m etl.synthetic``);
2. the ETL: a small scaled pre-training set and the beauty-like and sports-like sets;
3. pre-training a small text-based SASRec on the scaled set;
4. fine-tuning it on the beauty-like set with ``from_scratch`` and ``progressive``;
5. a table of test HR@10 / NDCG@10 and the command that opens the MLflow UI.

Every step is the real command line, run as a subprocess and printed first, so a reader
can rerun any of them by hand. Outputs go under ``demo_out/`` (``--out``); a rerun reuses
the ETL outputs that are still fresh.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout too

from etl.raw_files import the_file  # noqa: E402  (the raw file table: no heavy import)


def run(cmd: list[str], cwd: Path) -> None:
    """Run one pipeline command, echoing it; stop the demo if it fails."""
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    started = time.time()
    done = subprocess.run(cmd, cwd=cwd)
    if done.returncode != 0:
        sys.exit(f"demo: step failed with exit status {done.returncode}: {shlex.join(cmd)}")
    print(f"  ({time.time() - started:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="demo_out", help="working folder (default: demo_out)")
    parser.add_argument(
        "--interactions", type=int, default=300_000, help="synthetic ratings to generate"
    )
    parser.add_argument(
        "--finetune-users", type=int, default=600,
        help="users generated per fine-tuning domain; small, as in practice, so a model trained "
        "on the target alone has little data",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    out = (REPO / args.out).resolve()
    raw, data, ckpt = out / "raw", out / "data", out / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    uri = f"sqlite:///{out / 'mlruns.sqlite'}"
    started = time.time()

    if not (raw / the_file("ratings", "amazon-2018").name).exists():
        run([py, "-m", "etl.synthetic", "--out", str(raw), "--interactions", str(args.interactions),
             "--seed", str(args.seed), "--finetune-users", str(args.finetune_users)], REPO)  # fmt: skip
    run([py, "scripts/scaling_datasets.py", "--step", "all", "--raw-dir", str(raw), "--out-dir", str(data),
         "--sizes", "100K", "--vocab-size", "2000", "--workers", "2", "--seed", str(args.seed)], REPO)  # fmt: skip

    pretrained = ckpt / "pretrain-amazon-100K.pth"
    run([py, "scripts/pre_train.py", "-c", "confs/demo/pre_train", "-o", str(pretrained),
         "--data-path", str(data), "--tracking-uri", uri], REPO)  # fmt: skip

    results = {}
    for strategy in ("from_scratch", "progressive"):
        target = ckpt / f"finetune-amazon-beauty-{strategy}.pth"
        cmd = [py, "scripts/fine_tune.py", "-c", f"confs/demo/fine_tune_{strategy}", "-s", "amazon-beauty",
               "-o", str(target), "--data-path", str(data), "--tracking-uri", uri]  # fmt: skip
        if strategy == "from_scratch":
            cmd += ["-p", "confs/demo/pre_train"]  # the same architecture, no weights
        else:
            cmd += ["-l", "amazon-100K", "-i", str(pretrained)]
        run(cmd, REPO)
        results[strategy] = json.loads(target.with_suffix(".metrics.json").read_text())

    print("\nTest metrics on amazon-beauty (full ranking over the catalog, best valid epoch):")
    print(f"{'strategy':<14} {'HR@10':>8} {'NDCG@10':>8}")
    for strategy, metrics in results.items():
        print(
            f"{strategy:<14} {metrics['best_test_hr_at_10']:>8.4f} {metrics['best_test_ndcg_at_10']:>8.4f}"
        )
    gain = results["progressive"]["best_test_ndcg_at_10"] / max(
        results["from_scratch"]["best_test_ndcg_at_10"], 1e-12
    )
    print(f"pre-training gives {gain:.2f}x the from-scratch NDCG@10")
    print(f"\nDemo finished in {time.time() - started:.0f} s. See every run with:")
    print(f"  {Path(py).parent / 'mlflow'} ui --backend-store-uri {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
