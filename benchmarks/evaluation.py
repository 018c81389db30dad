"""Throughput and peak memory of chunked full ranking over a large catalog.

Scores ``--users`` random user states against a ``--items`` catalog (default 1M items,
D=64) with ``recbole_fork.evaluation``, once with id embeddings (a table lookup) and once with
a text-encoder-like ``item_fn`` (an EmbeddingBag mean over a few token ids per item, computed
chunk by chunk, never for the whole catalog). Prints users/s and peak memory and writes
``benchmarks/results/evaluation.json`` (atomically).

    python benchmarks/evaluation.py                       # 1M items, 2,000 users, CPU
    python benchmarks/evaluation.py --cases full,sampled  # what results/evaluation.json holds
    python benchmarks/evaluation.py --items 3000000 --users 4096 --device cuda

(``python -m benchmarks.evaluation`` from the repository root if the package is not
installed with ``make setup``.)

Peak memory on CPU is the process RSS sampled every 5 ms during each call, minus the RSS
just before it (so the 1M x 64 embedding table made beforehand is not counted); on CUDA it
is ``torch.cuda.max_memory_allocated`` above the allocation before the call.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import torch

from recbole_fork.evaluation import evaluate_ranking, topk_items

RESULTS = Path(__file__).resolve().parent / "results" / "evaluation.json"


def _names(valid: set[str]) -> Callable[[str], list[str]]:
    """argparse type: a comma-separated subset of ``valid``."""

    def parse(text: str) -> list[str]:
        names = [n for n in text.split(",") if n]
        unknown = sorted(set(names) - valid)
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {unknown or text!r}: choose from {', '.join(sorted(valid))}"
            )
        return names

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of the benchmark."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=1_000_000, help="catalog size incl. padding")
    p.add_argument("--users", type=int, default=2000, help="users ranked per call")
    p.add_argument("--dim", type=int, default=64, help="embedding size D")
    p.add_argument("--history", type=int, default=50, help="history items excluded per user")
    p.add_argument("--item-chunk", type=int, default=65536)
    p.add_argument("--user-chunk", type=int, default=4096)
    p.add_argument("--tokens", type=int, default=8, help="text-like item_fn: tokens per item")
    p.add_argument("--vocab", type=int, default=32000, help="text-like item_fn: vocabulary")
    p.add_argument("--sampled", type=int, default=10000, help="N of the sampled:N run")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument(
        "--encoders",
        type=_names({"id", "text_like"}),
        default=["id", "text_like"],
        help="comma-separated item_fn kinds: id,text_like",
    )
    p.add_argument(
        "--cases",
        type=_names({"full", "topk", "sampled"}),
        default=["full", "topk", "sampled"],
        help="comma-separated: full (evaluate_ranking), topk (topk_items, k=10), sampled",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON output path")
    args = p.parse_args(argv)
    if "sampled" in args.cases and not 1 <= args.sampled < args.items:
        p.error(f"--sampled {args.sampled} must be in 1..{args.items - 1} (--items - 1)")
    return args


class PeakMemory:
    """Peak memory above the level at entry: sampled RSS on CPU, the allocator on CUDA."""

    def __init__(self, device: torch.device, interval_s: float = 0.005):
        self.device, self.interval_s = device, interval_s
        self.peak_bytes = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        self._proc = psutil.Process()
        self._base = self._proc.memory_info().rss
        self._peak = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._proc.memory_info().rss)
            time.sleep(self.interval_s)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._base
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._proc.memory_info().rss)
        self.peak_bytes = self._peak - self._base


def text_like_item_fn(
    n_items: int, dim: int, tokens: int, vocab: int, device: torch.device, seed: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """An item encoder that costs work per item: mean of ``tokens`` token embeddings.

    Token ids are a fixed function of the item id (no per-item table), so memory does not
    grow with the catalog: only the chunk being encoded is materialised.
    """
    gen = torch.Generator().manual_seed(seed)
    bag = torch.nn.EmbeddingBag(vocab, dim, mode="mean").to(device)
    with torch.no_grad():
        bag.weight.copy_(torch.randn(vocab, dim, generator=gen).to(device))
    mult = torch.randint(1, vocab, (tokens,), generator=gen).to(device)
    offset = torch.randint(0, vocab, (tokens,), generator=gen).to(device)

    def item_fn(ids: torch.Tensor) -> torch.Tensor:
        token_ids = (ids[:, None] * mult + offset) % vocab  # [n, tokens]
        return bag(token_ids)  # [n, D]

    return item_fn


def timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float, int]:
    """(result, seconds, peak extra bytes) of one call."""
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return out, seconds, mem.peak_bytes


def run(args: argparse.Namespace) -> dict:
    """Run every case; return the figures as a JSON-ready dict."""
    load_before = round(os.getloadavg()[0], 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    users = torch.randn(args.users, args.dim, generator=gen).to(device)
    targets = torch.randint(1, args.items, (args.users,), generator=gen).to(device)
    hist_items = torch.randint(1, args.items, (args.users * args.history,), generator=gen)
    hist_indptr = torch.arange(0, args.users * args.history + 1, args.history)
    table = torch.randn(args.items, args.dim, generator=gen).to(device)
    item_fns = {
        "id": lambda ids: table[ids],
        "text_like": text_like_item_fn(
            args.items, args.dim, args.tokens, args.vocab, device, args.seed
        ),
    }
    common = dict(
        hist_indptr=hist_indptr.to(device),
        hist_items=hist_items.to(device),
        item_chunk=args.item_chunk,
        user_chunk=args.user_chunk,
    )
    # A warm-up on a small catalog so that the first timed call pays no one-off costs.
    evaluate_ranking(users[:8], item_fns["id"], min(args.items, 5000), targets[:8] % 4999 + 1)

    calls = {
        "full": lambda f: evaluate_ranking(users, f, args.items, targets, **common),
        "topk10": lambda f: topk_items(users, f, args.items, 10, **common),
        f"sampled:{args.sampled}": lambda f: evaluate_ranking(
            users,
            f,
            args.items,
            targets,
            mode=f"sampled:{args.sampled}",
            generator=torch.Generator(device=device).manual_seed(args.seed),
            **common,
        ),
    }
    wanted = {"full": "full", "topk": "topk10", "sampled": f"sampled:{args.sampled}"}
    cases = []
    for encoder in args.encoders:
        for name in (wanted[c] for c in args.cases):
            _, seconds, peak = timed(lambda e=encoder, n=name: calls[n](item_fns[e]), device)
            case = {
                "encoder": encoder,
                "case": name,
                "seconds": round(seconds, 3),
                "users_per_s": round(args.users / seconds, 1),
                "peak_extra_mib": round(peak / 2**20, 1),
            }
            cases.append(case)
            print(
                f"{encoder:9s} {name:15s} {seconds:8.2f} s  {case['users_per_s']:9.1f} users/s  "
                f"peak +{case['peak_extra_mib']:.0f} MiB",
                flush=True,
            )
    # The buffer evaluate_ranking reuses: fp32 scores [Uc, C + Uc] (topk_items: [Uc, C]).
    uc, ic = min(args.user_chunk, args.users), min(args.item_chunk, args.items - 1)
    bound_mib = 4 * uc * (ic + uc) / 2**20
    unchunked_mib = 4 * args.users * args.items / 2**20
    print(
        f"score-buffer bound {bound_mib:.0f} MiB; an unchunked score matrix: {unchunked_mib:.0f} MiB"
    )
    return {
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        # The machine may be shared: a 1-minute load above the thread count slows every case.
        "load_average_1m_before": load_before,
        "load_average_1m_after": round(os.getloadavg()[0], 2),
        "cpu": platform.processor() or platform.machine(),
        "score_buffer_bound_mib": round(bound_mib, 1),
        "unchunked_score_matrix_mib": round(unchunked_mib, 1),
        "cases": cases,
    }


def main(argv: list[str] | None = None) -> None:
    """Entry point: run, print, write the JSON atomically."""
    args = parse_args(argv)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
