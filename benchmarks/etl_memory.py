"""Peak memory of the ETL's `--step all`, whole and per step, on synthetic raw data.

Runs `python scripts/scaling_datasets.py --step all ...` in a child process and samples the
resident memory (RSS) of that process and all its descendants every 0.1 s; the figure is the
largest sum seen. A step's peak is the largest sum seen between the manifest of the step
before it and its own (a step writes its manifest last). The sampler itself is not counted.

Example (the item-5 measurement of issue 21, one run after the other, at low priority):
    nice -n 10 python benchmarks/etl_memory.py --ratings 20000000 --raw /tmp/raw20m \
        --sizes 10M --workers 2 --label 20M
    nice -n 10 python benchmarks/etl_memory.py --ratings 80000000 --raw /tmp/raw80m \
        --sizes 10M --workers 2 --label 80M
Each run adds its figures under its label in `--out` (JSON, written atomically); extra
arguments after `--` go to the ETL command line (e.g. `-- --memory-budget 4G`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from etl.manifest import atomic_write_bytes  # noqa: E402
from etl.pipeline import STEPS  # noqa: E402

FULL_AMAZON_ROWS = 233_055_327  # rows of all_csv_files.csv (REFERENCE section 1)


def _tree_rss(proc: psutil.Process) -> int:
    """RSS in bytes of `proc` and its descendants (processes that vanish are skipped)."""
    total = 0
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total


def measure(command: list[str], out_dir: Path, interval_s: float = 0.1) -> dict:
    """Run `command`, sampling its process tree; returns peak bytes overall and per step.

    Raises:
        RuntimeError: the command failed (its exit status and the end of its output).
    """
    manifests = out_dir / "manifests"
    per_step: dict[str, int] = {}
    state = {"peak": 0, "window": 0}
    seen: set[str] = set()
    log = tempfile.TemporaryFile()  # noqa: SIM115 (read back after the child ends)
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    proc = psutil.Process(child.pid)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss = _tree_rss(proc)
            state["peak"] = max(state["peak"], rss)
            state["window"] = max(state["window"], rss)
            finished = (
                {p.stem for p in manifests.glob("*.json")} - seen if manifests.is_dir() else set()
            )
            for step in sorted(finished, key=lambda s: STEPS.index(s) if s in STEPS else 99):
                per_step[step] = state["window"]
                state["window"] = rss
                seen.add(step)
            done.wait(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    code = child.wait()
    done.set()
    thread.join()
    seconds = time.perf_counter() - start
    log.seek(0)
    output = log.read().decode(errors="replace")
    if code != 0:
        raise RuntimeError(f"ETL exited with {code}: {output[-2000:]}")
    return {"peak_bytes": state["peak"], "step_peak_bytes": per_step, "seconds": seconds,
            "output_tail": output[-3000:]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Generate (or reuse) synthetic raw data, run `--step all`, record the peak memory."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratings", type=int, required=True, help="synthetic ratings")
    parser.add_argument("--raw", type=Path, required=True, help="raw folder (made if absent)")
    parser.add_argument("--sizes", default="10M", help="scaled datasets to build")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--label", default=None, help="key of this run in --out")
    parser.add_argument("--work-dir", type=Path, default=None, help="ETL output (default: temp)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "etl_memory.json"
    )
    args = parser.parse_args(argv)
    python = sys.executable
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not (args.raw / "all_csv_files.csv").exists():
        subprocess.run(
            [python, "-m", "etl.synthetic", "--out", str(args.raw), "--interactions",
             str(args.ratings), "--seed", str(args.seed)],
            check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="etl-memory-"))
    out_dir = work / "out"
    shutil.rmtree(out_dir, ignore_errors=True)
    command = [
        python, str(ROOT / "scripts" / "scaling_datasets.py"), "--step", "all",
        "--raw-dir", str(args.raw), "--out-dir", str(out_dir), "--sizes", args.sizes,
        "--workers", str(args.workers), "--seed", str(args.seed), "--no-progress", *extra,
    ]  # fmt: skip
    try:
        result = measure(command, out_dir)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    label = args.label or str(args.ratings)
    record = {
        "ratings": args.ratings,
        "sizes": args.sizes,
        "workers": args.workers,
        "extra_args": extra,
        "command": " ".join(command[1:]),
        "peak_gib": round(result["peak_bytes"] / 2**30, 3),
        "step_peak_gib": {k: round(v / 2**30, 3) for k, v in result["step_peak_bytes"].items()},
        "seconds": round(result["seconds"], 1),
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d"),
    }
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    previous[label] = record
    atomic_write_bytes(args.out, (json.dumps(previous, indent=2, sort_keys=True) + "\n").encode())
    print(json.dumps(record, indent=2))
    print(result["output_tail"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
