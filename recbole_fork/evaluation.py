"""Ranking evaluation over large catalogs: chunked full ranking and sampled ranking.

The protocol is the published one (REFERENCE sections 2, 4 and 6.2): leave-one-out, the
held-out target ranked against every real item, the user's history excluded from the ranking
(``exclude_history: true``, as the eSASRec benchmark's ``filter_viewed`` and HSTU's figures
do). RecBole 1.2.1's sequential full-sort evaluation does NOT exclude history (it passes
``history_index=None`` for sequential models and masks only the padding column):
``exclude_history: false`` is its protocol. A stock RecBole model is scored by the same
rules through ``score_ranks`` (``recbole_fork.stock_eval``, ``stock_evaluator: fork``). A score
matrix of users x items never exists at once: item embeddings are computed one chunk of ids
at a time (``item_fn`` may be a text encoder) and scored against one chunk of users at a
time, so memory is bounded by ``item_chunk x user_chunk`` scores whatever the catalog size.
Where the item embeddings are already computed (the serving path, ``recbole_fork.serving``),
the matrix itself takes the place of ``item_fn`` and each chunk is a view of it: offline
evaluation and serving rank through the same code.

Metrics follow RecBole's definitions with one target per user and a 0-based ``rank`` (the
number of candidate items ranked above the target):

* ``hr@k``   = 1 if rank < k else 0
* ``ndcg@k`` = 1 / log2(rank + 2) if rank < k else 0
* ``mrr@k``  = 1 / (rank + 1) if rank < k else 0

``evaluate_ranking`` returns SUMS over users plus ``count`` so that batches add up and the
caller divides once at the end. MLflow rejects ``@`` in metric names: ``metric_key`` gives the
logged name (``valid_ndcg_at_10``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from recbole_fork.settings import ConfigError, Settings, check_choice, check_range

__all__ = [
    "EvalSettings",
    "evaluate_ranking",
    "metric_key",
    "parse_eval_mode",
    "ranking_metrics",
    "sample_candidates",
    "score_ranks",
    "target_ranks",
    "topk_items",
]

ItemFn = Callable[[torch.Tensor], torch.Tensor]
# An ItemFn, or the item matrix itself: float [n_items, D], row i the embedding of item i.
Items = ItemFn | torch.Tensor

VALID_EVAL_MODES = ("full", "sampled:N")
STOCK_EVALUATORS = ("fork", "recbole")
_SAMPLED_MODE = re.compile(r"sampled:([1-9][0-9]*)")


def parse_eval_mode(mode: str) -> tuple[str, int | None]:
    """Split an ``eval_mode`` string into its kind and sample size.

    Args:
        mode: ``"full"`` (rank against every real item) or ``"sampled:N"`` (rank against N
            items sampled uniformly, N a positive integer).

    Returns:
        ``("full", None)`` or ``("sampled", N)``.

    Raises:
        ValueError: on anything else; the message lists the valid forms.
    """
    if isinstance(mode, str):
        if mode == "full":
            return "full", None
        match = _SAMPLED_MODE.fullmatch(mode)
        if match:
            return "sampled", int(match.group(1))
    raise ValueError(
        f"unknown eval_mode {mode!r}: valid forms are 'full' and 'sampled:N' with N a positive "
        "integer (e.g. 'sampled:10000')"
    )


METRICS = ("hr", "ndcg", "mrr")


@dataclass(frozen=True)
class EvalSettings(Settings):
    """The evaluation slice (defaults: ``properties/evaluation.yaml`` and RecBole's
    ``eval_batch_size`` / ``valid_metric``)."""

    eval_mode: str  # full | sampled:N
    exclude_history: bool  # remove the user's earlier items from the ranking
    stock_evaluator: str  # fork | recbole: who scores a stock RecBole model
    eval_item_chunk: int
    eval_user_chunk: int
    topk: tuple[int, ...]
    eval_batch_size: int
    valid_metric: str  # e.g. NDCG@10 (case-insensitive); must be one of metric_names()

    def __post_init__(self) -> None:
        check_choice("stock_evaluator", self.stock_evaluator, STOCK_EVALUATORS)
        try:
            parse_eval_mode(self.eval_mode)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        for key in ("eval_item_chunk", "eval_user_chunk", "eval_batch_size"):
            check_range(key, getattr(self, key), low=1)
        if not self.topk or any(k < 1 for k in self.topk):
            raise ConfigError(f"topk={list(self.topk)}: must list cut-offs of at least 1")
        if self.valid_metric.lower() not in self.metric_names():
            raise ConfigError(
                f"valid_metric {self.valid_metric!r} is not computed; valid: {self.metric_names()}"
            )

    def metric_names(self) -> list[str]:
        """``['hr@10', 'ndcg@10', 'mrr@10', ...]``: every metric an evaluation computes."""
        return [f"{m}@{k}" for k in self.topk for m in METRICS]


def metric_key(phase: str, name: str) -> str:
    """MLflow name of a metric: ``('valid', 'ndcg@10') -> 'valid_ndcg_at_10'``.

    MLflow rejects ``@`` in metric names (REFERENCE section 5), so ``@`` becomes ``_at_``.

    Raises:
        ValueError: if ``phase`` or ``name`` is empty.
    """
    if not phase or not name:
        raise ValueError(f"metric_key needs a phase and a metric name, got {phase!r}, {name!r}")
    return f"{phase}_{name.replace('@', '_at_')}"


def ranking_metrics(ranks: torch.Tensor, ks: Sequence[int] = (10,)) -> dict[str, float]:
    """Sums over users of HR@k, NDCG@k and MRR@k from 0-based target ranks.

    Args:
        ranks: int [U], the number of candidates ranked above each user's target.
        ks: cut-offs, each >= 1.

    Returns:
        ``{'hr@k': ..., 'ndcg@k': ..., 'mrr@k': ... for each k, 'count': U}`` (sums, not
        means; the sums are taken in float64 so that the order of users does not matter).

    Raises:
        ValueError: if ``ks`` is empty or holds a value that is not a positive integer.
    """
    ks = _check_ks(ks)
    rank = ranks.detach().to(torch.float64).reshape(-1)  # [U]
    out: dict[str, float] = {}
    for k in ks:
        hit = rank < k  # [U] bool
        zero = torch.zeros_like(rank)
        out[f"hr@{k}"] = hit.sum().item() * 1.0
        out[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(rank + 2.0), zero).sum().item()
        out[f"mrr@{k}"] = torch.where(hit, 1.0 / (rank + 1.0), zero).sum().item()
    out["count"] = float(rank.numel())
    return out


@torch.no_grad()
def evaluate_ranking(
    user_vecs: torch.Tensor,
    item_fn: Items,
    n_items: int,
    targets: torch.Tensor,
    ks: Sequence[int] = (10,),
    mode: str = "full",
    hist_indptr: torch.Tensor | None = None,
    hist_items: torch.Tensor | None = None,
    item_chunk: int = 65536,
    user_chunk: int = 4096,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Rank each user's target among the catalog and return summed HR/NDCG/MRR at each k.

    Scores are dot products ``user_vecs[u] . item_fn([i])[0]``. The target's rank is the
    number of candidates other than the target that score higher than it or EQUAL to it:
    ties count against the target (pessimistic), so a degenerate model that gives every item
    the same score gets HR 0, not 1. "Equal" means within ``D * eps * |u| * |v_target|``, the
    float rounding of a D-term dot product: BLAS kernels need not give equal embeddings
    bit-equal scores. A NaN score also counts against the target, and a NaN
    target score ranks last. Candidates are:

    * ``mode="full"``: every real item ``1 .. n_items-1`` (padding id 0 is never ranked);
    * ``mode="sampled:N"``: N distinct real items drawn uniformly without replacement with
      ``generator`` (``sample_candidates``), one draw shared by every user of this call.
      This is the study's "sampled10000" figure: it is NOT comparable with full ranking
      (ranks are much smaller).

    In both modes the user's history (``hist_*``) is removed from the candidates when given,
    as the published HSTU / eSASRec figures do (RecBole's sequential full-sort evaluation
    does not: pass no history for its protocol). The target itself is never removed: if it
    also appears in the history (a repeat; never on de-duplicated Amazon data) it is still
    ranked, where RecBole's non-sequential history masking would mask it to minus infinity.

    ``item_fn`` is called once per chunk of at most ``item_chunk`` candidate ids (ascending,
    never containing 0), plus once per ``item_chunk`` targets for the targets' own
    embeddings; an id's embedding must not depend on the call (``model.eval()`` first).
    Scores are computed in float32 (float64 if ``user_vecs`` are float64). Extra memory is
    one reused buffer of ``min(user_chunk, U) x (min(item_chunk, candidates) +
    min(user_chunk, U))`` scores plus one chunk of item embeddings: each chunk's score
    matrix also holds the targets' scores, so that target and candidates come out of the
    same matrix product and an equal embedding gives a bit-equal score; a target score
    from a separate product could differ in its last bits (another GEMM kernel, TF32)
    and turn exact ties into wins.

    Args:
        user_vecs: float [U, D], one user state per target.
        item_fn: maps int64 ids [n] to float embeddings [n, D]; or the item matrix itself,
            float [n_items, D] (row i = item i), whose chunks are then views, not copies.
        n_items: catalog size, padding id 0 included (RecBole's ``dataset.item_num``).
        targets: int64 [U], each in ``1 .. n_items-1``.
        ks: cut-offs, each >= 1.
        mode: ``"full"`` or ``"sampled:N"`` (see ``parse_eval_mode``).
        hist_indptr: int64 [U+1], CSR row pointers of the items to exclude per user.
        hist_items: int64 [nnz], item ids in ``0 .. n_items-1`` to exclude (0, padding, is
            harmless; repeats are fine).
        item_chunk: candidate ids scored per ``item_fn`` call (at most 2**24).
        user_chunk: users scored per matrix product.
        generator: random source of the sampled mode (ignored in full mode).

    Returns:
        ``{'hr@k', 'ndcg@k', 'mrr@k' for each k: sums over users, 'count': U}``.

    Raises:
        ValueError: on a malformed mode, shape, id, chunk size or cut-off, or if
            ``item_fn`` returns a wrongly shaped tensor.
    """
    ranks = target_ranks(
        user_vecs,
        item_fn,
        n_items,
        targets,
        mode=mode,
        hist_indptr=hist_indptr,
        hist_items=hist_items,
        item_chunk=item_chunk,
        user_chunk=user_chunk,
        generator=generator,
    )
    return ranking_metrics(ranks, ks)


@torch.no_grad()
def target_ranks(
    user_vecs: torch.Tensor,
    item_fn: Items,
    n_items: int,
    targets: torch.Tensor,
    mode: str = "full",
    hist_indptr: torch.Tensor | None = None,
    hist_items: torch.Tensor | None = None,
    item_chunk: int = 65536,
    user_chunk: int = 4096,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """0-based rank of each target among the candidates; see ``evaluate_ranking``.

    Returns:
        int64 [U] on ``user_vecs``' device: how many candidates (not padding, not history,
        not the target) score higher than or equal to the target.

    Raises:
        ValueError: as ``evaluate_ranking``.
    """
    kind, n_sampled = parse_eval_mode(mode)
    n_users, dim = _check_user_vecs(user_vecs)
    _check_catalog(n_items, item_chunk, user_chunk)
    _check_items(item_fn, n_items, dim)
    device = user_vecs.device
    targets = _check_targets(targets, n_users, n_items, device)
    hist = _check_history(hist_indptr, hist_items, n_users, n_items, device)
    candidates = _candidates(kind, n_sampled, n_items, generator, device)
    counts = torch.zeros(n_users, dtype=torch.int64, device=device)
    if n_users == 0:
        return counts

    dtype = _compute_dtype(user_vecs)
    users = user_vecs.to(dtype)
    # Targets' embeddings once, in slices no larger than a catalog chunk.
    target_emb = torch.cat(
        [
            _embed(item_fn, targets[s : s + item_chunk], None, dim, dtype, device)
            for s in range(0, n_users, item_chunk)
        ]
    )  # [U, D]
    user_slices = list(_user_slices(n_users, user_chunk))
    # Pairs (row within its user chunk, item id) to remove from the candidates: the history
    # and the target's own id (it must not be compared with itself).
    excluded = []
    for u0, u1 in user_slices:
        rows, items = _history_pairs(hist, u0, u1, device)
        own = torch.arange(u1 - u0, device=device)
        excluded.append((torch.cat([rows, own]), torch.cat([items, targets[u0:u1]])))

    # Scores within the float rounding of a dot product of the target's score count as ties
    # (against the target): one matmul does not give bit-equal scores to equal embeddings,
    # because BLAS kernels sum the columns of a block and of its tail in different orders
    # (seen on AVX-512 MKL: a candidate equal to the target scored 1 ulp above it). The bound
    # D * eps * |u| * |v| covers any summation order of a D-term dot product.
    tol = dim * torch.finfo(dtype).eps * users.norm(dim=1) * target_emb.norm(dim=1)  # [U]

    max_users = min(user_chunk, n_users)
    n_candidates = n_items - 1 if candidates is None else candidates.numel()
    buffer = _Buffer(max_users * (min(item_chunk, n_candidates) + max_users), dtype, device)
    for chunk_ids, start in _chunks(candidates, n_items, item_chunk, device):
        emb = _embed(item_fn, chunk_ids, start, dim, dtype, device)  # [C, D]
        n_cand = chunk_ids.numel()
        for (u0, u1), (rows, items) in zip(user_slices, excluded, strict=True):
            # One product gives the chunk's scores and the targets' scores (same dtype, same
            # kernel family); near-equal scores then fall within `tol` and count as ties.
            both = torch.cat([emb, target_emb[u0:u1]])  # [C + Uc, D]
            scores = buffer.matrix(u1 - u0, n_cand + u1 - u0)  # [Uc, C + Uc]
            torch.matmul(users[u0:u1], both.T, out=scores)
            own = scores[:, n_cand:].diagonal().clone().unsqueeze(1)  # [Uc, 1]
            own -= tol[u0:u1].unsqueeze(1)  # a candidate must beat the target's score - tol
            # In place, as 1.0 / 0.0 floats: bool tensors are several times slower to
            # reduce on CPU, and a fresh [Uc, C] allocation costs more than the comparison.
            # `<` (not `>=`) so that NaN scores count against the target.
            below = torch.lt(scores[:, :n_cand], own, out=scores[:, :n_cand])  # [Uc, C]
            r, c = _columns_in_chunk(chunk_ids, rows, items)
            below[r, c] = 1.0  # excluded candidates never count as above the target
            # Exact: sums of 0/1 in float32 stay exact below 2**24 (item_chunk is capped).
            counts[u0:u1] += n_cand - below.sum(dim=1).to(torch.int64)
    return counts


@torch.no_grad()
def score_ranks(
    scores: torch.Tensor,
    targets: torch.Tensor,
    mode: str = "full",
    hist_indptr: torch.Tensor | None = None,
    hist_items: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """0-based target ranks from a score matrix over the whole catalog (a model that scores
    every item itself, such as RecBole's ``full_sort_predict``).

    The candidates are ``target_ranks``' (every real item, or the ``sampled:N`` draw from
    ``generator``; the history removed when given; the target never compared with itself)
    and a candidate counts against the target when it does not score below it: ties and
    NaN scores count against the target, a NaN target ranks last. The scores come from one
    matrix, so ties are exact equality here (``target_ranks`` widens them by the rounding
    of a dot product it computes itself).

    Args:
        scores: float [U, n_items], column = item id (column 0, padding, is never ranked).
        targets: int64 [U], each in ``1 .. n_items-1``.
        mode: ``"full"`` or ``"sampled:N"``.
        hist_indptr, hist_items: CSR of the items to exclude per user, as in
            ``evaluate_ranking``.
        generator: random source of the sampled mode.

    Returns:
        int64 [U] on ``scores``' device.

    Raises:
        ValueError: on a malformed mode, shape or id.
    """
    kind, n_sampled = parse_eval_mode(mode)
    n_users, n_items = _check_user_vecs(scores)
    if n_items < 2:
        raise ValueError(
            f"scores must cover n_items >= 2 columns (padding 0 included), got {n_items}"
        )
    device = scores.device
    targets = _check_targets(targets, n_users, n_items, device)
    hist = _check_history(hist_indptr, hist_items, n_users, n_items, device)
    candidate = torch.zeros(n_items, dtype=torch.bool, device=device)  # [n_items]
    sampled = _candidates(kind, n_sampled, n_items, generator, device)
    if sampled is None:
        candidate[1:] = True
    else:
        candidate[sampled] = True
    keep = candidate.expand(n_users, n_items).clone()  # [U, n_items]
    rows, items = _history_pairs(hist, 0, n_users, device)
    keep[rows, items] = False
    users = torch.arange(n_users, device=device)
    keep[users, targets] = False
    own = scores[users, targets].unsqueeze(1)  # [U, 1]
    # `<` (not `>=`) so that NaN scores, and every score against a NaN target, count.
    return (keep & ~(scores < own)).sum(dim=1)


@torch.no_grad()
def topk_items(
    user_vecs: torch.Tensor,
    item_fn: Items,
    n_items: int,
    k: int,
    hist_indptr: torch.Tensor | None = None,
    hist_items: torch.Tensor | None = None,
    item_chunk: int = 65536,
    user_chunk: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best-scoring real items per user, history excluded, merged across item chunks.

    Same chunking, ``item_fn`` contract and score precision as ``evaluate_ranking`` (no
    target embeddings are needed here; the buffer is ``user_chunk x item_chunk`` scores).
    The order among equal scores is unspecified. A user with fewer than k
    rankable items gets id 0 with score -inf in the slots left over.

    Args:
        user_vecs: float [U, D].
        item_fn: maps int64 ids [n] to float embeddings [n, D]; or the item matrix itself,
            float [n_items, D], as in ``evaluate_ranking``.
        n_items: catalog size, padding id 0 included.
        k: list length, ``1 <= k <= n_items - 1``.
        hist_indptr, hist_items: CSR of the items to exclude per user, as in
            ``evaluate_ranking``.
        item_chunk, user_chunk: chunk sizes, as in ``evaluate_ranking``.

    Returns:
        ``(scores, ids)``: float [U, k] in descending order and int64 [U, k].

    Raises:
        ValueError: on a malformed shape, id, chunk size or k.
    """
    n_users, dim = _check_user_vecs(user_vecs)
    _check_catalog(n_items, item_chunk, user_chunk)
    _check_items(item_fn, n_items, dim)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_items - 1:
        raise ValueError(f"topk_items: k must be an integer in 1..{n_items - 1}, got {k!r}")
    device = user_vecs.device
    hist = _check_history(hist_indptr, hist_items, n_users, n_items, device)
    dtype = _compute_dtype(user_vecs)
    best_scores = torch.full((n_users, k), -math.inf, dtype=dtype, device=device)
    best_ids = torch.zeros((n_users, k), dtype=torch.int64, device=device)
    if n_users == 0:
        return best_scores, best_ids

    users = user_vecs.to(dtype)
    user_slices = list(_user_slices(n_users, user_chunk))
    excluded = [_history_pairs(hist, u0, u1, device) for u0, u1 in user_slices]
    buffer = _Buffer(min(user_chunk, n_users) * min(item_chunk, n_items - 1), dtype, device)
    for chunk_ids, start in _chunks(None, n_items, item_chunk, device):
        emb = _embed(item_fn, chunk_ids, start, dim, dtype, device)  # [C, D]
        for (u0, u1), (rows, items) in zip(user_slices, excluded, strict=True):
            scores = buffer.matrix(u1 - u0, chunk_ids.numel())  # [Uc, C]
            torch.matmul(users[u0:u1], emb.T, out=scores)
            r, c = _columns_in_chunk(chunk_ids, rows, items)
            scores[r, c] = -math.inf
            top_s, top_j = scores.topk(min(k, chunk_ids.numel()), dim=1)  # [Uc, k']
            merged_s = torch.cat([best_scores[u0:u1], top_s], dim=1)  # [Uc, k + k']
            merged_i = torch.cat([best_ids[u0:u1], chunk_ids[top_j]], dim=1)
            # Stable sort: among equal scores the earlier (lower-id) item stays first.
            order = merged_s.sort(dim=1, descending=True, stable=True).indices[:, :k]
            best_scores[u0:u1] = merged_s.gather(1, order)
            best_ids[u0:u1] = merged_i.gather(1, order)
    best_ids[best_scores == -math.inf] = 0
    return best_scores, best_ids


# --------------------------------------------------------------------------- helpers

# float32 sums of 0/1 flags are exact up to 2**24 (see target_ranks).
MAX_ITEM_CHUNK = 2**24


class _Buffer:
    """One flat score buffer reused for every chunk: a fresh [Uc, C] tensor per chunk costs
    page faults (the CPU allocator hands large blocks back to the OS) and allocator churn."""

    def __init__(self, numel: int, dtype: torch.dtype, device: torch.device):
        self.flat = torch.empty(numel, dtype=dtype, device=device)

    def matrix(self, rows: int, cols: int) -> torch.Tensor:
        return self.flat[: rows * cols].view(rows, cols)


def _compute_dtype(user_vecs: torch.Tensor) -> torch.dtype:
    """float64 if the users are float64, else float32 (half-precision scores tie too often)."""
    return torch.float64 if user_vecs.dtype == torch.float64 else torch.float32


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = list(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty list of positive integers (topk), got {ks!r}")
    return ks


def _check_user_vecs(user_vecs: torch.Tensor) -> tuple[int, int]:
    if user_vecs.dim() != 2 or not user_vecs.is_floating_point():
        raise ValueError(
            f"user_vecs must be a float tensor [U, D], got {user_vecs.dtype} "
            f"{tuple(user_vecs.shape)}"
        )
    return user_vecs.shape[0], user_vecs.shape[1]


def _check_catalog(n_items: int, item_chunk: int, user_chunk: int) -> None:
    if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 2:
        raise ValueError(f"n_items must be an integer >= 2 (padding 0 included), got {n_items!r}")
    for name, value in (("item_chunk", item_chunk), ("user_chunk", user_chunk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if item_chunk > MAX_ITEM_CHUNK:
        raise ValueError(f"item_chunk must be at most {MAX_ITEM_CHUNK}, got {item_chunk}")


def _check_targets(
    targets: torch.Tensor, n_users: int, n_items: int, device: torch.device
) -> torch.Tensor:
    if targets.shape != (n_users,) or targets.is_floating_point() or targets.is_complex():
        raise ValueError(
            f"targets must be an integer tensor [U]={n_users} matching user_vecs, got "
            f"{targets.dtype} {tuple(targets.shape)}"
        )
    targets = targets.to(device=device, dtype=torch.int64)
    if n_users and (targets.min().item() < 1 or targets.max().item() >= n_items):
        raise ValueError(
            f"targets must be real item ids in 1..{n_items - 1}, got values in "
            f"{targets.min().item()}..{targets.max().item()} (0 is padding)"
        )
    return targets


def _check_history(
    hist_indptr: torch.Tensor | None,
    hist_items: torch.Tensor | None,
    n_users: int,
    n_items: int,
    device: torch.device,
) -> tuple[list[int], torch.Tensor] | None:
    """Validated history as (row pointers as a Python list, items on ``device``) or None."""
    if hist_indptr is None and hist_items is None:
        return None
    if hist_indptr is None or hist_items is None:
        raise ValueError("hist_indptr and hist_items go together: pass both or neither")
    if hist_indptr.shape != (n_users + 1,) or hist_items.dim() != 1:
        raise ValueError(
            f"history must be CSR: hist_indptr [U+1]={n_users + 1} and hist_items [nnz], got "
            f"{tuple(hist_indptr.shape)} and {tuple(hist_items.shape)}"
        )
    indptr = hist_indptr.to(torch.int64).tolist()
    if (
        indptr[0] != 0
        or indptr[-1] != hist_items.numel()
        or any(a > b for a, b in zip(indptr[:-1], indptr[1:]))
    ):
        raise ValueError(
            "hist_indptr must start at 0, never decrease and end at len(hist_items) "
            f"({hist_items.numel()}), got {indptr[0]} .. {indptr[-1]}"
        )
    items = hist_items.to(device=device, dtype=torch.int64)
    if items.numel() and (items.min().item() < 0 or items.max().item() >= n_items):
        raise ValueError(
            f"hist_items must be item ids in 0..{n_items - 1}, got values in "
            f"{items.min().item()}..{items.max().item()}"
        )
    return indptr, items


def sample_candidates(
    n_items: int, n_sampled: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The candidates of ``eval_mode="sampled:N"``: N distinct real ids, uniform, sorted.

    Args:
        n_items: catalog size, padding id 0 included.
        n_sampled: N, ``1 <= N <= n_items - 1``.
        generator: random source (its device is where the draw happens); None = torch's
            global one.

    Returns:
        int64 [N], ascending ids in ``1 .. n_items-1`` (drawn without replacement, so a
        sample of the whole catalog ranks exactly like ``"full"``).

    Raises:
        ValueError: if N is not in ``1 .. n_items - 1``.
    """
    n_real = n_items - 1
    if (
        isinstance(n_sampled, bool)
        or not isinstance(n_sampled, int)
        or not 1 <= n_sampled <= n_real
    ):
        raise ValueError(
            f"eval_mode 'sampled:{n_sampled}' needs 1 <= N <= the catalog's {n_real} real items: "
            "use a smaller N or 'full'"
        )
    device = generator.device if generator is not None else torch.device("cpu")
    drawn = torch.randperm(n_real, generator=generator, device=device)[:n_sampled] + 1
    # Sorted, so chunks are ascending like the full catalog's and searchsorted finds ids.
    return drawn.sort().values


def _candidates(
    kind: str,
    n_sampled: int | None,
    n_items: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor | None:
    """Sorted candidate ids of the sampled mode on ``device``, or None for the full catalog."""
    if kind == "full":
        return None
    return sample_candidates(n_items, n_sampled, generator).to(device)


def _chunks(
    candidates: torch.Tensor | None, n_items: int, item_chunk: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, int | None]]:
    """Ascending int64 id chunks of at most ``item_chunk``: the sample or ids 1..n_items-1.

    Each comes with its first id when the chunk is a contiguous range (the full catalog), so
    that an item matrix is sliced rather than gathered; None for a sample's chunks.
    """
    if candidates is not None:
        for chunk in candidates.split(item_chunk):
            yield chunk, None
        return
    for start in range(1, n_items, item_chunk):
        yield torch.arange(start, min(start + item_chunk, n_items), device=device), start


def _user_slices(n_users: int, user_chunk: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n_users, user_chunk):
        yield start, min(start + user_chunk, n_users)


def _check_items(items: Items, n_items: int, dim: int) -> None:
    """An item matrix must hold one float row of width D per id, padding included."""
    if isinstance(items, torch.Tensor) and (
        items.shape != (n_items, dim) or not items.is_floating_point()
    ):
        raise ValueError(
            f"an item matrix must be float [n_items, D]=[{n_items}, {dim}], got {items.dtype} "
            f"{tuple(items.shape)}"
        )


def _embed(
    items: Items,
    ids: torch.Tensor,
    start: int | None,
    dim: int,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """Embeddings [n, D] of ``ids``: ``items(ids)``, or rows of the item matrix ``items``
    (a view when the ids are the contiguous range from ``start``, a gather otherwise)."""
    if isinstance(items, torch.Tensor):
        emb = (
            items[start : start + ids.numel()] if start is not None else items[ids.to(items.device)]
        )
        return emb.to(device=device, dtype=dtype)
    emb = items(ids)
    if not isinstance(emb, torch.Tensor) or emb.shape != (ids.numel(), dim):
        shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
        raise ValueError(
            f"item_fn must map ids [n] to embeddings [n, D]=[{ids.numel()}, {dim}] "
            f"(D of user_vecs), got {shape}"
        )
    return emb.to(device=device, dtype=dtype)


def _history_pairs(
    hist: tuple[list[int], torch.Tensor] | None, u0: int, u1: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row within the user chunk [nnz_c], item id [nnz_c]) of users ``u0 .. u1-1``."""
    if hist is None:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty
    indptr, items = hist
    lengths = torch.tensor(
        [b - a for a, b in zip(indptr[u0:u1], indptr[u0 + 1 : u1 + 1])], device=device
    )
    rows = torch.repeat_interleave(torch.arange(u1 - u0, device=device), lengths)
    return rows, items[indptr[u0] : indptr[u1]]


def _columns_in_chunk(
    chunk_ids: torch.Tensor, rows: torch.Tensor, items: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) in the chunk's score matrix of each (row, item) pair whose item is in it."""
    inside = (items >= chunk_ids[0]) & (items <= chunk_ids[-1])
    rows, items = rows[inside], items[inside]
    cols = torch.searchsorted(chunk_ids, items)
    # In the sampled mode an id within the chunk's range need not be one of its candidates.
    found = chunk_ids[cols.clamp_max(chunk_ids.numel() - 1)] == items
    return rows[found], cols[found]
