"""The recommender behind the server: the item matrix on the device, requests resolved to
item ids, batches ranked through the evaluator's own engine, new items encoded from text.

Ranking is offline evaluation's (``evaluation.topk_items``): every item is embedded once at
start (``model.item_embeddings``, in the evaluator's chunks, so each row is bit-equal to the
one evaluation computes), the matrix stays on the device, and a batch of users is ranked by
one matrix product per item chunk plus an exact top-k merged across chunks. A user's state
comes from ``model.user_vectors`` over a batch that ``data.windows.gather_eval`` lays out,
as an evaluation batch is: the last ``max_seq_length`` items, left-aligned.

Histories of ``{"user_id": ...}`` requests come from the dataset, in time order:

* ``cutoff: "all"`` (default): every interaction of the user; the list is what the model
  recommends next, after everything the dataset knows of them.
* ``cutoff: "test"``: everything before the user's test item, the last one (leave-one-out):
  exactly the history, input window and exclusions of the offline test ranking, so the list
  is the one ``topk_items`` gives on the test batch of ``SeqData.eval_loader("test")``.
* ``cutoff: "valid"``: everything before the validation item (the second to last).

``"test"`` and ``"valid"`` need a user with at least 3 interactions, as the split does.
``exclude_history`` removes the whole history given (not only its last window) from the
candidates, as offline evaluation does.

Not thread-safe: the server runs every call that touches the model or the matrix
(``recommend``, ``add_items``) on one worker thread (``batching.MicroBatcher``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from recbole_fork.data.windows import gather_eval
from recbole_fork.evaluation import topk_items
from recbole_fork.serving.loading import Servable

logger = logging.getLogger(__name__)

CUTOFFS = ("all", "test", "valid")
_HELD_OUT = {"all": 0, "test": 1, "valid": 2}  # items left off the end of a user's history
# Items a /items call may add before the matrix grows again (text models only).
_SPARE_ROWS = 1024


class RequestError(Exception):
    """A request the server refuses: an HTTP status (4xx) and a one-line reason."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may ask (each beyond-limit request is answered 400, naming it)."""

    max_k: int = 1000  # longest list
    max_history: int = 10_000  # items in a request's history
    max_exclude: int = 10_000  # items in a request's exclude list
    max_new_items: int = 1000  # items one /items call adds


@dataclass
class Query:
    """One resolved request.

    Attributes:
        history: int64 [n] item ids, oldest first (n >= 1).
        times: int64 [n] unix seconds, or None when the model does not read time.
        query_time: unix seconds of the event the list is for (HSTU's ``next`` time bias
            reads the gap from each history item to it), or None when the model does not
            read time.
        k: list length.
        exclude: int64 [m] item ids never recommended (the history, when asked, and the
            request's ``exclude``).
    """

    history: np.ndarray
    times: np.ndarray | None
    k: int
    exclude: np.ndarray
    query_time: int | None = None


@dataclass
class Ranking:
    """One answer: raw item ids (the dataset's tokens) best first, and their scores."""

    items: list[str]
    scores: list[float]


def _describe_unknown(tokens: list[str], limit: int = 5) -> str:
    unique = list(dict.fromkeys(tokens))
    shown = ", ".join(repr(t) for t in unique[:limit])
    return shown + (f" and {len(unique) - limit} more" if len(unique) > limit else "")


class Recommender:
    """Serves one checkpoint's model (see the module docstring).

    Args:
        servable: the loaded checkpoint, model and dataset (``loading.load_servable``).
        limits: what one request may ask (default ``Limits()``).
        sentencepiece: the dataset's SentencePiece model, for ``add_items``; default
            ``<data path>/sentencepiece/spm.model`` (where the ETL writes it).
        item_chunk, user_chunk: the ranking engine's chunks; default: the checkpoint's
            ``eval_item_chunk`` / ``eval_user_chunk``.
    """

    def __init__(
        self,
        servable: Servable,
        *,
        limits: Limits | None = None,
        sentencepiece: str | Path | None = None,
        item_chunk: int | None = None,
        user_chunk: int | None = None,
    ) -> None:
        from recbole_fork.finetune.transfer import text_encoders

        self.servable = servable
        self.model = servable.model.eval()
        self.device = servable.device
        self.limits = limits or Limits()
        settings = servable.settings
        self.item_chunk = item_chunk or settings.evaluation.eval_item_chunk
        self.user_chunk = user_chunk or settings.evaluation.eval_user_chunk
        self.max_seq_length = int(self.model.max_seq_length)
        self.uses_time = bool(getattr(self.model.backbone, "use_time_bias", False))
        ds = servable.dataset
        self.dataset_name = str(ds.dataset_name)
        self._item_tokens = np.asarray(ds.field2id_token[ds.iid_field])  # [n_items], id -> token
        self._item_index = pd.Index(self._item_tokens)
        self._user_index = pd.Index(np.asarray(ds.field2id_token[ds.uid_field]))
        self._n_users = int(ds.user_num)
        self._hist_items = ds.hist_items  # [nnz], grouped by user, time order
        self._hist_times = ds.hist_times
        self._offsets = ds.hist_offsets  # [n_users + 1]
        self._field_types = {f: str(t.value) for f, t in ds.field2type.items()}
        self.n_catalog = int(ds.item_num)  # the dataset's ids, padding included
        self.n_items = self.n_catalog  # plus the items added through add_items
        self._added: dict[str, int] = {}
        self._added_tokens: list[str] = []
        encoders = text_encoders(self.model)
        self._text = encoders.get("item_encoder")  # a pure text encoder, else None
        self._spm_path = (
            Path(sentencepiece)
            if sentencepiece
            else servable.data_path / "sentencepiece" / "spm.model"
        )
        self._tokenizer = None
        spare = _SPARE_ROWS if self._text is not None else 0
        self._matrix = self._embed_catalog(spare)  # [capacity, D], rows 0 .. n_items-1 used

    # ----- the item matrix -----------------------------------------------------------------

    @torch.no_grad()
    def _embed_catalog(self, spare: int) -> torch.Tensor:
        """Every item's embedding, float32 [n_items + spare, D] on the device.

        Chunks are the ranking engine's (ids 1.., ``item_chunk`` at a time; padding apart)
        so that a text encoder's batched adapter gives the rows evaluation computes.
        """
        n, dev = self.n_items, self.device
        first = self.model.item_embeddings(torch.zeros(1, dtype=torch.long, device=dev))
        matrix = torch.zeros(n + spare, first.shape[-1], dtype=torch.float32, device=dev)
        matrix[0] = first[0].float()
        for start in range(1, n, self.item_chunk):
            ids = torch.arange(start, min(start + self.item_chunk, n), device=dev)
            matrix[start : start + ids.numel()] = self.model.item_embeddings(ids).float()
        return matrix

    @property
    def item_matrix(self) -> torch.Tensor:
        """float32 [n_items, D] on the device: row i is item i (a view, no copy)."""
        return self._matrix[: self.n_items]

    # ----- resolving requests (event-loop thread) ------------------------------------------

    def item_ids(self, tokens: list[Any], what: str) -> np.ndarray:
        """Item ids of raw item tokens.

        Raises:
            RequestError: unknown tokens (named), or the padding token.
        """
        toks = [str(t) for t in tokens]
        ids = self._item_index.get_indexer(toks).astype(np.int64)  # -1: unknown, 0: [PAD]
        bad = np.flatnonzero(ids <= 0)
        for j in bad:
            ids[j] = self._added.get(toks[j], -1)
        bad = [toks[j] for j in np.flatnonzero(ids <= 0)]
        if bad:
            raise RequestError(
                f"unknown item id(s) in '{what}': {_describe_unknown(bad)} "
                f"(not items of dataset {self.dataset_name!r})"
            )
        return ids

    def user_history(self, user_id: Any, cutoff: str = "all") -> tuple[np.ndarray, np.ndarray]:
        """A dataset user's history up to ``cutoff`` (module docstring): (items, times).

        Raises:
            RequestError: unknown user, unknown cutoff, or too short for the cutoff.
        """
        token = str(user_id)
        if cutoff not in CUTOFFS:
            raise RequestError(f"cutoff {cutoff!r} is not one of {list(CUTOFFS)}")
        uid = int(self._user_index.get_indexer([token])[0])
        if uid <= 0:
            raise RequestError(
                f"unknown user_id {token!r}: not a user of dataset {self.dataset_name!r}"
            )
        a, b = int(self._offsets[uid]), int(self._offsets[uid + 1])
        held_out = _HELD_OUT[cutoff]
        if held_out and b - a < 3:
            raise RequestError(
                f"user {token!r} has {b - a} interaction(s): a held-out {cutoff} item exists "
                "only for users with 3 or more (leave-one-out); use cutoff 'all'"
            )
        return self._hist_items[a : b - held_out], self._hist_times[a : b - held_out]

    def held_out_time(self, user_id: Any, cutoff: str) -> int:
        """Unix seconds of a user's held-out ``test`` or ``valid`` item."""
        uid = int(self._user_index.get_indexer([str(user_id)])[0])
        b = int(self._offsets[uid + 1])
        return int(self._hist_times[b - _HELD_OUT[cutoff]])

    def resolve(
        self,
        *,
        history: list[Any] | None = None,
        user_id: Any = None,
        cutoff: str = "all",
        timestamps: list[int] | None = None,
        query_time: int | None = None,
        k: int = 10,
        exclude_history: bool = True,
        exclude: list[Any] | None = None,
    ) -> Query:
        """Check one request and turn it into a ``Query``.

        Args:
            history: raw item ids, oldest first (or ``user_id``, not both).
            user_id: a dataset user's raw id; the history comes from the dataset.
            cutoff: ``all``, ``test`` or ``valid`` (``user_id`` requests; module docstring).
            timestamps: unix seconds of ``history``'s items (models that read time gaps).
            query_time: unix seconds of the event to recommend for (the ``next`` time
                bias); default: the held-out item's time for a ``test`` / ``valid`` cutoff
                (the offline protocol), else the time of the request.
            k: list length, 1 .. min(``max_k``, catalog size).
            exclude_history: never recommend an item of the history.
            exclude: raw item ids never recommended.

        Raises:
            RequestError: the first problem found, in one line.
        """
        lim = self.limits
        if (history is None) == (user_id is None):
            raise RequestError("give exactly one of 'history' (item ids) or 'user_id'")
        if user_id is not None:
            if timestamps is not None:
                raise RequestError("'timestamps' go with 'history'; a user's come from the dataset")
            items, times = self.user_history(user_id, cutoff)
            if query_time is None and cutoff != "all":
                # The offline protocol: the held-out item's own time.
                query_time = int(self.held_out_time(user_id, cutoff))
        else:
            if cutoff != "all":
                raise RequestError("'cutoff' applies to 'user_id' requests only")
            if len(history) == 0:
                raise RequestError("'history' is empty: give at least one item id, oldest first")
            if len(history) > lim.max_history:
                raise RequestError(
                    f"'history' holds {len(history)} items; this server takes at most "
                    f"{lim.max_history}"
                )
            items = self.item_ids(history, "history")
            if timestamps is not None and len(timestamps) != len(history):
                raise RequestError(
                    f"'timestamps' holds {len(timestamps)} values for {len(history)} history items"
                )
            if self.uses_time and timestamps is None:
                raise RequestError(
                    f"this model ({self.model.describe()}) reads the time between interactions: "
                    "send 'timestamps' (unix seconds, one per history item)"
                )
            times = np.asarray(timestamps if timestamps is not None else [], dtype=np.int64)
        top = min(lim.max_k, self.n_items - 1)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= top:
            raise RequestError(
                f"k={k!r} is out of range: 1 to {top} (catalog of {self.n_items - 1} items, "
                f"server limit {lim.max_k})"
            )
        exclude = exclude or []
        if len(exclude) > lim.max_exclude:
            raise RequestError(
                f"'exclude' holds {len(exclude)} items; this server takes at most {lim.max_exclude}"
            )
        extra = self.item_ids(exclude, "exclude") if exclude else np.zeros(0, dtype=np.int64)
        excluded = np.concatenate([items, extra]) if exclude_history else extra
        if self.uses_time and query_time is None:
            query_time = int(time.time())
        return Query(
            history=np.asarray(items, dtype=np.int64),
            times=np.asarray(times, dtype=np.int64) if self.uses_time else None,
            k=k,
            exclude=excluded.astype(np.int64),
            query_time=query_time if self.uses_time else None,
        )

    # ----- ranking (worker thread) ---------------------------------------------------------

    def batch_arrays(self, queries: list[Query]) -> dict[str, torch.Tensor]:
        """The evaluation batch of ``queries`` (``gather_eval``'s layout, trimmed to the
        longest window): ``item_seq`` [B, W], ``seq_len`` [B], ``time_seq`` [B, W] when the
        model reads time; on the device."""
        lengths = np.array([len(q.history) for q in queries], dtype=np.int64)  # [B]
        starts = np.zeros(len(queries), dtype=np.int64)
        np.cumsum(lengths[:-1] + 1, out=starts[1:])
        # Each history is followed by a 0: gather_eval reads a "target" after the history.
        flat = np.zeros(int(lengths.sum()) + len(queries), dtype=np.int64)
        times = np.zeros_like(flat)
        for q, s in zip(queries, starts):
            flat[s : s + len(q.history)] = q.history
            if q.times is not None:
                times[s : s + len(q.history)] = q.times
        arrays = gather_eval(flat, times, starts, lengths, self.max_seq_length)
        width = int(arrays["seq_len"].max())  # windows are left-aligned: the rest is padding
        batch = {
            "item_seq": torch.from_numpy(np.ascontiguousarray(arrays["item_seq"][:, :width])),
            "seq_len": torch.from_numpy(arrays["seq_len"]),
        }
        if self.uses_time:
            batch["time_seq"] = torch.from_numpy(
                np.ascontiguousarray(arrays["time_seq"][:, :width])
            )
            # The time of the event each list is for: the "target" the last position predicts.
            batch["target_time"] = torch.tensor([q.query_time for q in queries], dtype=torch.long)
        return {k: v.to(self.device) for k, v in batch.items()}

    @torch.no_grad()
    def user_vectors(self, queries: list[Query]) -> torch.Tensor:
        """float32 [B, D] user states of ``queries`` (normalised when the model does)."""
        return self.model.user_vectors(self.batch_arrays(queries)).float()

    @torch.no_grad()
    def recommend(self, queries: list[Query]) -> list[Ranking]:
        """Rank the catalog for a batch of queries: one user pass, one ``topk_items`` call.

        Items that cannot be recommended (a list longer than the items left after the
        exclusions) are left off: such a list is shorter than k.
        """
        if not queries:
            return []
        user = self.user_vectors(queries)  # [B, D]
        counts = np.array([len(q.exclude) for q in queries], dtype=np.int64)
        indptr = np.zeros(len(queries) + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        excluded = np.concatenate([q.exclude for q in queries])
        k = max(q.k for q in queries)
        scores, ids = topk_items(
            user,
            self.item_matrix,
            self.n_items,
            k,
            hist_indptr=torch.from_numpy(indptr),
            hist_items=torch.from_numpy(excluded),
            item_chunk=self.item_chunk,
            user_chunk=self.user_chunk,
        )
        scores, ids = scores.cpu().numpy(), ids.cpu().numpy()
        out = []
        for row, q in enumerate(queries):
            top_ids, top_scores = ids[row, : q.k], scores[row, : q.k]
            real = top_ids > 0  # 0 with -inf: no item left for that slot
            out.append(Ranking(self.tokens(top_ids[real]), top_scores[real].tolist()))
        return out

    def tokens(self, ids: np.ndarray) -> list[str]:
        """Raw item ids (the dataset's tokens, or an added item's) of internal ids."""
        return [
            str(self._item_tokens[i])
            if i < self.n_catalog
            else self._added_tokens[i - self.n_catalog]
            for i in ids.tolist()
        ]

    # ----- new items (worker thread) -------------------------------------------------------

    def _refuse_new_items(self) -> None:
        kind = self.servable.settings.spec.encoder.item_encoder
        if kind == "id":
            raise RequestError(
                f"this model ({self.model.describe()}) encodes items by their ID only: a new "
                "item has no trained row, so it cannot be added without training; serve a "
                "text model (item_encoder: text) to add items by their text"
            )
        if self._text is None:
            raise RequestError(
                f"this model ({self.model.describe()}) adds a trained per-item ID row to the "
                "text encoding: a new item has none, so it would be scored on another scale; "
                "serve a text model (item_encoder: text) or fine-tune on the new catalog"
            )

    def _load_tokenizer(self):
        if self._tokenizer is None:
            from etl.text import Tokenizer

            if not self._spm_path.is_file():
                raise RequestError(
                    f"this server has no SentencePiece model: {self._spm_path} not found (the "
                    "ETL writes it under <out-dir>/sentencepiece/); restart serve.py with "
                    "--sentencepiece PATH"
                )
            self._tokenizer = Tokenizer(self._spm_path)
        return self._tokenizer

    @torch.no_grad()
    def add_items(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Add items given by their text; they are recommendable at once.

        Each row is ``{"item_id": new raw id, <text field>: text, ...}`` over the model's
        text fields (a missing field is empty text). Text is cleaned and tokenised as the
        ETL does (``etl.text``: ``token_seq`` fields with the dataset's SentencePiece model,
        title cut at 40 pieces and brand at 8; ``token`` fields as one cleaned token), then
        re-encoded into the model's vocabulary by string as fine-tuning's transfer does:
        pieces the model never saw are dropped. The items live in this server only (lost
        at restart).

        Returns:
            ``{"added": [...], "catalog_size": real items now, "unseen_pieces": {field: n},
            "items_without_known_pieces": [...]}``.

        Raises:
            RequestError: a model that is not a text model (400, saying why), no
                SentencePiece model, or a bad row (named).
        """
        from etl.text import BRAND_PIECES, TITLE_PIECES, clean_token
        from recbole_fork.finetune.transfer import remap_tokens

        if self._text is None:
            self._refuse_new_items()
        if not rows:
            raise RequestError("'items' is empty: give at least one item")
        if len(rows) > self.limits.max_new_items:
            raise RequestError(
                f"'items' holds {len(rows)} items; this server adds at most "
                f"{self.limits.max_new_items} per call"
            )
        enc = self._text
        fields = list(enc.fields)
        new_tokens: list[str] = []
        for j, row in enumerate(rows):
            token = row.get("item_id")
            if not isinstance(token, str | int) or isinstance(token, bool) or str(token) == "":
                raise RequestError(f"items[{j}]: 'item_id' must be a non-empty string")
            token = str(token)
            known = self._item_index.get_indexer([token])[0] > 0 or token in self._added
            if known or token in new_tokens or token == "[PAD]":
                raise RequestError(f"items[{j}]: item id {token!r} is already in the catalog")
            unknown = sorted(set(row) - {"item_id"} - set(fields))
            if unknown:
                raise RequestError(
                    f"items[{j}]: field(s) {unknown} are not text fields of this model "
                    f"(it reads {fields})"
                )
            for field in fields:
                value = row.get(field)
                if value is not None and not isinstance(value, str):
                    raise RequestError(f"items[{j}]: field {field!r} must be a string")
            new_tokens.append(token)
        tokenizer = self._load_tokenizer()
        limits = {"title": TITLE_PIECES, "brand": BRAND_PIECES}
        mapped: list[torch.Tensor] = []
        unseen_counts: dict[str, int] = {}
        for field in fields:
            texts = [row.get(field) or "" for row in rows]
            if self._field_types.get(field) == "token_seq":
                # Fields the ETL does not write are not cut (it cuts title and brand only).
                pieces = [p.split() for p in tokenizer.pieces(texts, limits.get(field, 1 << 30))]
            else:
                pieces = [[t] if t else [] for t in (clean_token(x) for x in texts)]
            own_vocab = ["[PAD]", *sorted({p for ps in pieces for p in ps})]
            own_id = {p: i for i, p in enumerate(own_vocab)}
            width = max(1, max(len(ps) for ps in pieces))
            own = torch.zeros(len(rows), width, dtype=torch.long)  # [m, T]
            for r, ps in enumerate(pieces):
                own[r, : len(ps)] = torch.tensor([own_id[p] for p in ps], dtype=torch.long)
            ids, unseen = remap_tokens(own, own_vocab, enc.vocab()[field])
            unseen_counts[field] = len(unseen)
            mapped.append(ids)
        has_piece = torch.stack([(ids > 0).any(dim=1) for ids in mapped]).any(dim=0)  # [m]

        start, m = self.n_items, len(rows)
        for i, ids in enumerate(mapped):
            old = getattr(enc, f"tokens_{i}")  # [n, T]
            width = max(old.shape[1], ids.shape[1])
            pad = torch.nn.functional.pad
            grown = torch.cat(
                [pad(old, (0, width - old.shape[1])), pad(ids, (0, width - ids.shape[1])).to(old)]
            )
            setattr(enc, f"tokens_{i}", grown)  # a registered buffer: replaced in place
        enc.n_items += m
        self.model.n_items += m
        new_ids = torch.arange(start, start + m, device=self.device)
        emb = self.model.item_embeddings(new_ids).float()  # [m, D]
        self._reserve(start + m)
        self._matrix[start : start + m] = emb
        for offset, token in enumerate(new_tokens):
            self._added[token] = start + offset
        self._added_tokens.extend(new_tokens)
        self.n_items = start + m
        return {
            "added": new_tokens,
            "catalog_size": self.n_items - 1,
            "unseen_pieces": unseen_counts,
            "items_without_known_pieces": [
                t for t, ok in zip(new_tokens, has_piece.tolist()) if not ok
            ],
        }

    def _reserve(self, rows: int) -> None:
        """Make the matrix hold at least ``rows`` rows (grown by an eighth, at least 1024)."""
        have = self._matrix.shape[0]
        if rows <= have:
            return
        grown = torch.zeros(
            rows + max(_SPARE_ROWS, rows // 8), self._matrix.shape[1], device=self.device
        )
        grown[: self.n_items] = self._matrix[: self.n_items]
        self._matrix = grown

    # ----- description ---------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """What ``GET /metadata`` answers: the model, its run and version, parameter counts,
        the dataset, the catalog and the offline metrics the checkpoint recorded."""
        from recbole_fork.params import count_parameters

        sv = self.servable
        settings = sv.settings
        ckpt = sv.ckpt
        state = ckpt.get("state") or {}
        final = state.get("final_metrics") or {}
        ev = settings.evaluation
        return {
            "model": settings.model,
            "description": self.model.describe(),
            "run_name": sv.run_name,
            "version": sv.version,
            "checkpoint": str(sv.checkpoint),
            "mlflow_run_id": ckpt.get("mlflow_run_id"),
            "params": count_parameters(self.model).as_dict(""),
            "dataset": settings.dataset,
            "data_path": str(sv.data_path),
            "catalog_size": self.n_items - 1,
            "added_items": len(self._added_tokens),
            "users": self._n_users - 1,
            "item_encoder": settings.spec.encoder.item_encoder,
            "text_fields": list(self._text.fields) if self._text is not None else [],
            "max_seq_length": self.max_seq_length,
            "reads_time": self.uses_time,
            "epochs_trained": int(state.get("epoch_done", -1)) + 1,
            "best_epoch": final.get("best_epoch"),
            "test_metrics": {
                k[len("best_") :]: v for k, v in final.items() if k.startswith("best_test_")
            },
            "valid_metrics": {
                k[len("best_") :]: v for k, v in final.items() if k.startswith("best_valid_")
            },
            "eval_protocol": (
                f"leave-one-out, {ev.eval_mode} ranking, history "
                f"{'excluded' if ev.exclude_history else 'kept'}"
            ),
            "fine_tune_strategy": (ckpt.get("fine_tune") or {}).get("strategy"),
            "device": str(self.device),
        }


__all__ = ["CUTOFFS", "Limits", "Query", "Ranking", "Recommender", "RequestError"]
