"""Stock RecBole models scored by the fork's evaluator: one protocol for every table.

``stock_evaluator: fork`` (``properties/evaluation.yaml``) scores a stock RecBole model
(SASRec, GRU4Rec, ...) exactly as the fork scores its own models: the users, targets and
input windows of ``SeqData``'s leave-one-out split, the candidates of ``eval_mode`` and the
history exclusion of ``exclude_history``, the metrics of ``evaluation.ranking_metrics``.
The model only supplies scores: its own ``full_sort_predict`` over every item, read in the
fork's item order. ``stock_evaluator: recbole`` keeps RecBole's own evaluation instead.

What "the same split" means. The model is TRAINED on RecBole's split (its
``SequentialDataset`` prefixes, ``eval_args: {split: {LS: valid_and_test}, order: TO}``)
and SCORED on the fork's. Both order a user's interactions by time with ties in the
loaded file's order (two stable sorts on both sides), so for every user with at least 4
interactions they agree item for item: RecBole's training rows have targets ``1 .. n-3``
(the fork trains on items ``0 .. n-3``), its valid row is the prefix ``0 .. n-3`` with
target ``n-2`` and its test row the prefix ``0 .. n-2`` with target ``n-1`` (the last
``MAX_ITEM_LIST_LENGTH`` items of each prefix), as ``SeqData``'s. Users with 1 or 2
interactions are training only on both sides. They differ for users with EXACTLY 3
interactions: RecBole trains on ``<i0> -> i1``, has no valid row and tests ``<i0, i1> ->
i2``; the fork validates ``<i0> -> i1`` and tests ``<i0, i1> -> i2``. Such a user's valid
target is then a training target of the stock model; ``StockEvaluator.split_differs`` counts
them (0 on ml-100k and on Beauty 5-core, where every user has at least 5) and a run logs it
and warns.

``exclude_history: false`` then reproduces RecBole's sequential full-sort protocol on the
same users (RecBole 1.2.1 passes ``history_index=None`` for sequential models and masks
only the padding column): the ranks equal RecBole's wherever no two scores tie.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from recbole_fork.data.seq_data import DataSettings, SeqData
from recbole_fork.evaluation import EvalSettings, parse_eval_mode, ranking_metrics, score_ranks
from recbole_fork.stock_trainer import StockTrainer

logger = logging.getLogger(__name__)

# The fork's trainer seeds each phase's sampled-mode draws the same way (trainer._PHASE_SEED).
_PHASE_SEED = {"valid": 202, "test": 303}


def eval_protocol(evaluation: EvalSettings, stock_evaluator: str | None = None) -> str:
    """A one-line name of the protocol a run is scored by (logged as ``eval_protocol``).

    ``"full, history excluded"``; ``"sampled10000 (not comparable with full), history
    kept"``; a stock model scored by RecBole gets ``"recbole full-sort (history kept)"``.
    """
    if stock_evaluator == "recbole":
        return "recbole full-sort (history kept)"
    kind, n = parse_eval_mode(evaluation.eval_mode)
    mode = "full" if kind == "full" else f"sampled{n} (not comparable with full)"
    history = "history excluded" if evaluation.exclude_history else "history kept"
    return f"{mode}, {history}"


def _id_map(fork_dataset, recbole_dataset, field: str) -> torch.Tensor:
    """int64 [fork ids]: the RecBole id of each fork id of ``field``, matched by token."""
    fork_tokens = np.asarray(fork_dataset.field2id_token[field], dtype=object)
    rb_tokens = np.asarray(recbole_dataset.field2id_token[field], dtype=object)
    index = pd.Index(rb_tokens).get_indexer(fork_tokens)
    if (index < 0).any():
        missing = fork_tokens[index < 0][:3].tolist()
        raise ValueError(
            f"{field}: tokens {missing} of the fork's dataset are not in RecBole's; both must "
            "load the same atomic files with the same filters"
        )
    return torch.from_numpy(index.astype(np.int64))


class StockEvaluator:
    """Ranks a stock RecBole model's ``full_sort_predict`` scores on the fork's split.

    Args:
        config: the run's RecBole ``Config`` (the fork's ``SeqDataset`` reads the same files).
        recbole_dataset: RecBole's dataset the model was built on (its token -> id maps).
        evaluation: the evaluation slice (mode, history exclusion, cut-offs, batch size).
        data: the data slice; its ``max_seq_length`` is replaced by RecBole's
            ``MAX_ITEM_LIST_LENGTH``, the window the stock model reads.
        seed: seeds the sampled mode's draws per phase, as the fork's trainer does.
        device: where the model runs.

    Attributes:
        data: the fork's ``SeqData`` (users, targets, windows, histories).
        split_differs: users with exactly 3 interactions, whose split differs (module doc).
    """

    def __init__(
        self,
        config: Any,
        recbole_dataset,
        evaluation: EvalSettings,
        data: DataSettings,
        seed: int,
        device: torch.device | str = "cpu",
    ) -> None:
        from recbole_fork.data.dataset import SeqDataset

        self.evaluation = evaluation
        self.seed = int(seed)
        self.device = torch.device(device)
        self.length = int(config["MAX_ITEM_LIST_LENGTH"])
        settings = dataclasses.replace(data, max_seq_length=self.length)
        self.data = SeqData(SeqDataset(config), settings)
        fork = self.data.dataset
        self._item_map_cpu = _id_map(fork, recbole_dataset, fork.iid_field)  # [n_items]
        self.item_map = self._item_map_cpu.to(self.device)
        self.user_map = _id_map(fork, recbole_dataset, fork.uid_field)
        self.n_items = int(fork.item_num)
        self.recbole_items = int(recbole_dataset.item_num)
        self.item_seq_field = fork.iid_field + config["LIST_SUFFIX"]
        self.length_field = config["ITEM_LIST_LENGTH_FIELD"]
        self.user_field = fork.uid_field
        n = np.diff(fork.hist_offsets)
        self.split_differs = int((n == 3).sum())
        if self.split_differs:
            logger.warning(
                "%d users have exactly 3 interactions: RecBole trains the stock model on their "
                "valid target (it gives them no valid row); see recbole_fork.stock_eval",
                self.split_differs,
            )

    def _interaction(self, raw: dict[str, torch.Tensor]):
        """RecBole's input rows for an evaluation batch: item lists padded to the model's
        length, in RecBole's ids."""
        from recbole.data.interaction import Interaction

        seq = raw["item_seq"]  # [B, W], W <= L after trimming
        seq = torch.nn.functional.pad(seq, (0, self.length - seq.shape[1]))  # [B, L]
        return Interaction(
            {
                self.item_seq_field: self._item_map_cpu[seq],
                self.length_field: raw["seq_len"],
                self.user_field: self.user_map[raw["user"]],
            }
        )

    def scores(self, model, raw: dict[str, torch.Tensor]) -> torch.Tensor:
        """float32 [B, n_items]: the model's scores of every fork item id (column = fork id)."""
        out = model.full_sort_predict(self._interaction(raw).to(self.device))
        out = out.reshape(len(raw["user"]), self.recbole_items)  # [B, RecBole items]
        return out[:, self.item_map].float()

    @torch.no_grad()
    def evaluate(self, model, phase: str) -> dict[str, float]:
        """Means over the phase's users of HR/NDCG/MRR at each k, and ``count``.

        Args:
            model: a stock RecBole model (``eval()`` is set here).
            phase: ``valid`` or ``test``.

        Raises:
            ValueError: another phase.
        """
        if phase not in _PHASE_SEED:
            raise ValueError(f"phase={phase!r}: a stock model is scored on 'valid' or 'test'")
        ev = self.evaluation
        model.eval()
        gen = torch.Generator(device=self.device).manual_seed(self.seed + _PHASE_SEED[phase])
        sums: dict[str, float] = {}
        count = 0
        for raw in self.data.eval_loader(phase, ev.eval_batch_size):
            scores = self.scores(model, raw)
            ranks = score_ranks(
                scores,
                raw["target"].to(self.device),
                mode=ev.eval_mode,
                hist_indptr=raw["hist_indptr"] if ev.exclude_history else None,
                hist_items=raw["hist_items"] if ev.exclude_history else None,
                generator=gen,
            )
            result = ranking_metrics(ranks, ev.topk)
            n = int(result.pop("count"))
            for key, value in result.items():
                sums[key] = sums.get(key, 0.0) + value
            count += n
        out = {key: value / max(count, 1) for key, value in sums.items()}
        out["count"] = count
        return out


class ForkEvalStockTrainer(StockTrainer):
    """``StockTrainer`` whose validation (early stopping, best epoch) and test scoring go
    through a ``StockEvaluator``; RecBole's training loop is untouched.

    Args:
        evaluator: the fork's evaluator for this model; the rest as ``StockTrainer``.
    """

    def __init__(self, *args: Any, evaluator: StockEvaluator, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fork_evaluator = evaluator
        self._cpu_mark = time.process_time()

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self._cpu_mark = time.process_time()
        return super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)

    @torch.no_grad()
    def _score_valid(self, valid_data, show_progress=False):
        """(score, metrics) on the valid set by the fork's evaluator, logging nothing."""
        result = self.fork_evaluator.evaluate(self.model, "valid")
        result.pop("count")
        return result[self.valid_metric], result

    @torch.no_grad()
    def _valid_epoch(self, valid_data, show_progress=False):
        """Valid metrics by the fork's evaluator; also logs ``valid_time_s`` (the
        evaluation's wall seconds) and ``epoch_cpu_s`` (this process's CPU seconds of the
        epoch's training and evaluation, every thread)."""
        start = time.perf_counter()
        score, result = self._score_valid(valid_data, show_progress)
        seconds = time.perf_counter() - start
        metrics = {f"valid_{k}": v for k, v in result.items()}
        cpu = time.process_time() - self._cpu_mark
        self._log({**metrics, "valid_time_s": seconds, "epoch_cpu_s": cpu}, self._epoch)
        return score, result

    @torch.no_grad()
    def evaluate(self, eval_data=None, load_best_model=True, model_file=None, show_progress=False):
        """Test metrics (``hr@10``, ...) by the fork's evaluator, with the best epoch's
        weights when ``load_best_model`` (the checkpoint RecBole's loop saved)."""
        if load_best_model:
            self._load_best(model_file)
        result = self.fork_evaluator.evaluate(self.model, "test")
        result.pop("count")
        return result


__all__ = ["ForkEvalStockTrainer", "StockEvaluator", "eval_protocol"]
