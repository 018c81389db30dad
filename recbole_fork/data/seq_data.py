"""``SeqData``: the leave-one-out split and the data loaders of one run.

Split (``recbole_fork/data/split.py``, the ``split`` settings): leave-one-out by default
(RecBole's ``eval_args: {split: {LS: valid_and_test}, order: TO}``): for a user with
``n >= 3`` interactions in time order, item ``n - 2`` is the valid target, item ``n - 1``
the test target, and items ``0 .. n - 3`` are training data. A user with fewer than 3
interactions has nothing to hold out: all of their items are training data and they are
never evaluated (counted in ``n_short_users``). RecBole's split agrees for every user
with at least 4 interactions and for those with 1 or 2; a user with exactly 3 gets no
valid row there (RecBole trains on ``<i0> -> i1`` and tests ``<i0, i1> -> i2``), where we
keep valid and test on the same users so the two are comparable
(``recbole_fork/stock_eval.py``, tested in ``tests/fork/test_stock_eval.py``). Or a global
temporal split (``split: {type: time, valid_cut, test_cut}``): see ``split.py``.

Loaders yield the dict batches of DESIGN.md ("Item ids and batches"). Nothing is stored per
sample: a sample is an index into the cumulative per-user sample counts (see ``windows``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recbole_fork.data.split import SplitSettings, make_split
from recbole_fork.data.windows import (
    TRAIN_MODES,
    gather_eval,
    gather_windows,
    sample_slices,
    samples_per_user,
)
from recbole_fork.errors import UserError
from recbole_fork.settings import ConfigError, Settings, check_choice, check_range

logger = logging.getLogger(__name__)


class DataError(UserError):
    """A dataset that cannot be used (missing files, nothing to train or evaluate)."""


EVAL_PHASES = ("valid", "test", "train")


@dataclass(frozen=True)
class DataSettings(Settings):
    """The data slice (defaults: ``properties/data.yaml``; ``seed`` is RecBole's)."""

    max_seq_length: int  # L, input positions of a sample
    train_mode: str  # all_positions | last_position
    train_window_stride: int | None  # None = max_seq_length
    pin_memory: bool
    trim_padding: bool
    eval_by_length: bool
    train_bucket_batches: int  # 0 = plain shuffled batches
    eval_max_users: int | None  # valid/test score a fixed sample of at most this many users
    seed: int  # shuffles and the train-phase evaluation sample
    split: SplitSettings  # leave_one_out or a global temporal split (data/split.py)

    def __post_init__(self) -> None:
        check_choice("train_mode", self.train_mode, TRAIN_MODES)
        check_range("max_seq_length", self.max_seq_length, low=1)
        if self.train_window_stride is not None:
            check_range("train_window_stride", self.train_window_stride, low=1)
            if self.train_window_stride > self.max_seq_length:
                raise ConfigError(
                    f"train_window_stride={self.train_window_stride}: must be between 1 and "
                    f"max_seq_length={self.max_seq_length} (a larger stride would skip "
                    "training transitions)"
                )
        check_range("train_bucket_batches", self.train_bucket_batches, low=0)
        if self.eval_max_users is not None:
            check_range("eval_max_users", self.eval_max_users, low=1)


def _check_shard(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard rank={rank}, world_size={world_size}: need 0 <= rank < world_size")


def _eval_sample(
    users: np.ndarray, pos: np.ndarray, max_users: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_users`` of a phase's ``users`` (ascending) with their target positions.

    The draw depends only on the number of users, not on the run's seed, so every run on a
    dataset scores the same users (a paired comparison across sizes, seeds and budgets);
    with leave-one-out, valid and test have the same users and get the same sample.
    """
    if max_users is None or len(users) <= max_users:
        return users, pos
    rng = np.random.default_rng([0xE7A1, len(users)])
    keep = np.sort(rng.choice(len(users), size=max_users, replace=False))
    return users[keep], pos[keep]


def _check_batch_size(batch_size: int) -> None:
    if int(batch_size) < 1:
        raise ValueError(f"batch_size={batch_size}: must be at least 1")


class SeqData:
    """Histories, split and loaders of one run (built once, by ``build_seq_data``).

    Attributes:
        dataset: the ``SeqDataset`` (RecBole ``Dataset``: item features, token maps, ...).
        n_items: item ids including padding 0 (``dataset.item_num``).
        n_users: user ids including padding 0 (``dataset.user_num``).
        item_counts: int64 [n_items], occurrences of each item in the training split
            (0 for padding and for items seen only as valid / test targets).
        n_short_users: users evaluated on no phase (leave-one-out: 1 or 2 interactions).
        split: the ``Split`` (training prefix per user, valid and test users and targets).
        max_seq_length, train_mode, train_window_stride, seed, trim_padding,
            bucket_batches, eval_by_length: the settings in use (``properties/data.yaml``).
    """

    def __init__(self, dataset, settings: DataSettings) -> None:
        max_seq_length = settings.max_seq_length
        train_mode = settings.train_mode
        stride = settings.train_window_stride or max_seq_length
        self.dataset = dataset
        self.settings = settings
        self.name = str(dataset.dataset_name)
        self.max_seq_length = max_seq_length
        self.train_mode = train_mode
        self.train_window_stride = stride
        self.seed = settings.seed
        self.pin_memory = settings.pin_memory and torch.cuda.is_available()
        self.trim_padding = settings.trim_padding
        self.bucket_batches = settings.train_bucket_batches
        self.eval_by_length = settings.eval_by_length
        self.n_items = int(dataset.item_num)
        self.n_users = int(dataset.user_num)

        self._items = dataset.hist_items  # [nnz]
        self._times = dataset.hist_times  # [nnz]
        self._offsets = dataset.hist_offsets  # [n_users + 1]
        n = np.diff(self._offsets)  # [n_users], interactions per user
        self._n = n
        self.split = make_split(settings.split, self._offsets, dataset.hist_seconds)
        self._valid = _eval_sample(
            self.split.valid_users, self.split.valid_pos, settings.eval_max_users
        )
        self._test = _eval_sample(
            self.split.test_users, self.split.test_pos, settings.eval_max_users
        )
        self._train_len = self.split.train_len  # [n_users]
        evaluated = np.zeros(len(n), dtype=bool)
        evaluated[self.split.valid_users] = True
        evaluated[self.split.test_users] = True
        self.n_short_users = int(((n > 0) & ~evaluated).sum())
        if len(self.split.valid_users) == 0 or len(self.split.test_users) == 0:
            if settings.split.type == "leave_one_out":
                raise DataError(
                    f"dataset {self.name!r}: no user has the 3 interactions needed for a valid "
                    f"and a test item ({self.n_short_users} users have fewer); nothing to evaluate"
                )
            raise DataError(
                f"dataset {self.name!r}: the time split at {self.split.cuts} leaves "
                f"{len(self.split.valid_users)} valid and {len(self.split.test_users)} test "
                "users (a user needs an interaction in the period and one before it); move "
                "the cuts"
            )

        # Position of every interaction inside its user's history -> training-split mask.
        pos = np.arange(len(self._items), dtype=np.int64) - np.repeat(self._offsets[:-1], n)
        train_mask = pos < np.repeat(self._train_len, n)
        del pos
        self.item_counts = np.bincount(self._items[train_mask], minlength=self.n_items).astype(
            np.int64
        )
        self.item_counts[0] = 0
        self._num_train_interactions = int(train_mask.sum())
        del train_mask

        self._samples = samples_per_user(
            self._train_len, self.max_seq_length, stride, train_mode
        )  # [n_users]
        if int(self._samples.sum()) == 0:
            raise DataError(
                f"dataset {self.name!r}: no user has 2 training items, so there is nothing to train on"
            )
        # Train-phase evaluation: as many users as the valid set (or every eligible user),
        # drawn once from the seed so that every epoch scores the same users.
        eligible = np.flatnonzero(self._train_len >= 2).astype(np.int64)
        size = min(len(self._valid[0]), len(eligible))
        rng = np.random.default_rng([self.seed, 0x7EA1])
        self._train_eval_users = np.sort(rng.choice(eligible, size=size, replace=False))
        logger.info(
            "dataset %s: %d users (%d valid, %d test, %d never evaluated: training only), "
            "%d items, %d interactions (%d in training), %d training samples (%s, L=%d, stride=%d)",
            self.name,
            int((n > 0).sum()),
            len(self.split.valid_users),
            len(self.split.test_users),
            self.n_short_users,
            self.n_items - 1,
            len(self._items),
            self._num_train_interactions,
            int(self._samples.sum()),
            train_mode,
            self.max_seq_length,
            stride,
        )

    # ----- sizes ---------------------------------------------------------------------------

    def num_train_interactions(self) -> int:
        """Interactions in the training split (every user's history minus held-out items)."""
        return self._num_train_interactions

    def num_train_samples(self, *, rank: int = 0, world_size: int = 1) -> int:
        """Training samples one epoch yields on this shard (equal on every shard).

        Shards hold the users ``u`` with ``u % world_size == rank``; each epoch every shard
        uses as many samples as the smallest shard holds, so all ranks run the same number
        of steps (the few extra samples of larger shards change with the epoch's shuffle).
        """
        _check_shard(rank, world_size)
        return min(int(self._samples[r::world_size].sum()) for r in range(world_size))

    def num_train_batches(self, batch_size: int, *, rank: int = 0, world_size: int = 1) -> int:
        """Batches per epoch of ``train_loader`` (the last one may be smaller)."""
        _check_batch_size(batch_size)
        return math.ceil(self.num_train_samples(rank=rank, world_size=world_size) / batch_size)

    def eval_users(self, phase: str, *, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """Internal user ids (int64, ascending) that ``eval_loader(phase)`` covers.

        Raises:
            ValueError: unknown phase (valid ones listed) or bad shard.
        """
        users, _ = self._phase(phase)
        _check_shard(rank, world_size)
        return users[users % world_size == rank]

    def _phase(self, phase: str) -> tuple[np.ndarray, np.ndarray]:
        """The users of ``phase`` (ascending; the sample of ``eval_max_users`` if set) and
        their targets' positions."""
        if phase == "valid":
            return self._valid
        if phase == "test":
            return self._test
        if phase == "train":
            return self._train_eval_users, self._train_len[self._train_eval_users] - 1
        raise ValueError(f"phase={phase!r} is not one of {list(EVAL_PHASES)}")

    # ----- loaders -------------------------------------------------------------------------

    def train_loader(
        self, batch_size: int, epoch: int, *, rank: int = 0, world_size: int = 1
    ) -> TrainLoader:
        """Shuffled training batches of one epoch (order fixed by ``(seed, epoch, rank)``).

        Yields dicts ``item_seq``, ``time_seq``, ``target``, ``target_time`` int64 [B, L] and
        ``user`` int64 [B] (``target_time``: the time of the item after each input position).
        """
        _check_batch_size(batch_size)
        _check_shard(rank, world_size)
        return TrainLoader(self, int(batch_size), int(epoch), rank, world_size)

    def eval_loader(
        self, phase: str, batch_size: int, *, rank: int = 0, world_size: int = 1
    ) -> EvalLoader:
        """Evaluation batches of ``phase`` (``valid``, ``test`` or ``train``).

        Users come in ascending id order, or, with ``eval_by_length``, ordered by the length
        of their input window (ties by id), so that trimmed batches carry little padding: the
        encoder then costs about the real positions, not ``B x max_seq_length``. Metrics are
        sums over users, so the order changes them only by float rounding (and, in sampled
        mode, by which users share a batch's candidates).

        ``train`` scores a fixed sample of users (as many as the valid set) on their last
        training item. Each batch holds ``item_seq``, ``time_seq`` [B, L], ``seq_len``,
        ``target``, ``target_time``, ``user`` [B], ``hist_indptr`` [B + 1], ``hist_items``.

        Raises:
            ValueError: unknown phase, batch size below 1 or bad shard.
        """
        _check_batch_size(batch_size)
        _check_shard(rank, world_size)
        users, target_pos = self._phase(phase)
        mine = users % world_size == rank
        users, target_pos = users[mine], target_pos[mine]
        if self.eval_by_length:
            order = np.argsort(np.minimum(target_pos, self.max_seq_length), kind="stable")
            users, target_pos = users[order], target_pos[order]
        return EvalLoader(self, users, target_pos, int(batch_size))

    def _to_torch(self, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        if self.trim_padding:
            arrays = _trim(arrays)
        out = {
            k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64)) for k, v in arrays.items()
        }
        if self.pin_memory:
            out = {k: v.pin_memory() for k, v in out.items()}
        return out


class TrainLoader:
    """One epoch of training batches of one shard; iterate once or many times (same order)."""

    def __init__(self, data: SeqData, batch_size: int, epoch: int, rank: int, world_size: int):
        self.data = data
        self.batch_size = batch_size
        self.epoch = epoch
        self.rank = rank
        self.world_size = world_size
        self._users = np.arange(rank, data.n_users, world_size, dtype=np.int64)  # shard
        counts = data._samples[self._users]
        self._cum = np.zeros(len(counts) + 1, dtype=np.int64)  # samples before each user
        np.cumsum(counts, out=self._cum[1:])
        self.num_samples = data.num_train_samples(rank=rank, world_size=world_size)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def _slices(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Users and flat window slices of sample ids ``g`` -> (users, start, length) [len(g)]."""
        d = self.data
        j = np.searchsorted(self._cum, g, side="right") - 1  # shard-local user index
        users = self._users[j]
        start, length = sample_slices(
            d._offsets[users],
            d._train_len[users],
            g - self._cum[j],
            d.max_seq_length,
            d.train_window_stride,
            d.train_mode,
        )
        return users, start, length

    def batches(self) -> list[np.ndarray]:
        """The epoch's batches as arrays of sample ids, in the order they are yielded."""
        return self._plan()[0]

    def batch_shapes(self) -> list[tuple[int, int, int, int, int]]:
        """What every batch of the epoch will hold, in the order they are yielded, without
        building the batches (to plan a compute budget): ``(batch size, width, real input
        positions, supervised positions, distinct item ids)``.

        ``width`` is the trimmed width (the longest real row) with ``trim_padding``, else
        ``max_seq_length``. The distinct ids are those of the windows' inputs and targets,
        plus the padding id 0 when a row is shorter than the width: the ids a training step
        embeds before its negatives.
        """
        d = self.data
        out = []
        for g in self._plan()[0]:
            _, start, length = self._slices(g)
            n_in = length - 1  # a window of n items has n - 1 inputs
            width = int(n_in.max()) if d.trim_padding else d.max_seq_length
            supervised = int(n_in.sum()) if d.train_mode == "all_positions" else len(g)
            # Every item of every window: inputs are its first n - 1, targets its last n - 1
            # (or the last one alone), together the whole window.
            ends = np.cumsum(length)
            flat = np.repeat(start - (ends - length), length) + np.arange(int(ends[-1]))
            distinct = len(np.unique(d._items[flat])) + int(bool((n_in < width).any()))
            out.append((len(g), max(width, 1), int(n_in.sum()), supervised, distinct))
        return out

    def _plan(self) -> tuple[list[np.ndarray], list[int] | None]:
        """The epoch's batches, and with bucketing their supervised positions.

        Plain: one seeded permutation cut into consecutive batches (positions None).
        Bucketed (``bucket_batches = N``): the same permutation, each run of N batches'
        samples sorted by window length (stable, so ties keep the shuffled order), cut into
        batches, then the batches of the whole epoch permuted by the same generator. The
        window lengths are computed once, for the sort and the positions alike.
        """
        d = self.data
        rng = np.random.default_rng([d.seed, self.epoch, self.rank])
        order = rng.permutation(int(self._cum[-1]))[: self.num_samples]  # [S] sample ids
        cuts = list(range(self.batch_size, self.num_samples, self.batch_size))
        if d.bucket_batches <= 0:
            return np.split(order, cuts), None
        _, _, length = self._slices(order)
        group = np.arange(len(order)) // (d.bucket_batches * self.batch_size)
        sort = np.lexsort((length, group))  # by group, then length, stable
        order = order[sort]
        # Supervised positions per sample: every input (all_positions) or the last one.
        positions = length[sort] - 1 if d.train_mode == "all_positions" else np.ones_like(order)
        shuffle = rng.permutation(len(cuts) + 1)
        out, per_sample = np.split(order, cuts), np.split(positions, cuts)
        return [out[i] for i in shuffle], [int(per_sample[i].sum()) for i in shuffle]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        d = self.data
        batches, per_batch = self._plan()
        # Bucketed batches differ in their number of supervised positions, so each batch's
        # mean loss is weighted by its positions over the epoch's mean positions per batch:
        # the epoch then weighs every position alike, as plain shuffled batches do, and the
        # mean of the weighted batch losses is the mean loss per position.
        mean_positions = None
        if per_batch is not None:
            mean_positions = sum(per_batch) / max(len(per_batch), 1)
        for b, g in enumerate(batches):
            users, start, length = self._slices(g)
            arrays = gather_windows(
                d._items,
                d._times,
                start,
                length,
                d.max_seq_length,
                last_only=d.train_mode == "last_position",
            )
            arrays["user"] = users
            out = d._to_torch(arrays)
            if mean_positions is not None:
                out["loss_scale"] = torch.tensor(per_batch[b] / mean_positions)
            yield out


class EvalLoader:
    """Evaluation batches over fixed users and target positions, in user order."""

    def __init__(self, data: SeqData, users: np.ndarray, target_pos: np.ndarray, batch_size: int):
        self.data = data
        self.users = users
        self.target_pos = target_pos
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.users) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        d = self.data
        for lo in range(0, len(self.users), self.batch_size):
            users = self.users[lo : lo + self.batch_size]
            arrays = gather_eval(
                d._items,
                d._times,
                d._offsets[users],
                self.target_pos[lo : lo + self.batch_size],
                d.max_seq_length,
            )
            arrays["user"] = users
            yield d._to_torch(arrays)


def _trim(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop the trailing columns that are padding in every row of a right-padded batch.

    ``item_seq`` decides the width (at least 1); every other [B, L] array is cut to it.
    """
    seq = arrays["item_seq"]
    real = np.flatnonzero((seq > 0).any(axis=0))
    width = int(real[-1]) + 1 if len(real) else 1
    if width == seq.shape[1]:
        return arrays
    return {
        k: v[:, :width] if v.ndim == 2 and v.shape == seq.shape else v for k, v in arrays.items()
    }


def build_seq_data(config: Any, settings: DataSettings | None = None) -> SeqData:
    """Load the atomic files named by ``config`` and prepare the split and loaders.

    The RecBole edge of the data: RecBole's ``Config`` (``build_config``) tells
    ``SeqDataset`` where and how to read the atomic files; everything after that reads only
    the data slice.

    Args:
        config: the run's RecBole ``Config`` (``recbole_fork.config.build_config``).
        settings: the data slice; None reads it from ``config``.

    Raises:
        DataError: missing ``.inter`` file, or a dataset with no user to evaluate or
            nothing to train on (the message names the dataset).
    """
    from recbole_fork.data.dataset import SeqDataset, atomic_file_errors

    settings = settings or DataSettings.from_mapping(config)
    inter_file(config)
    with atomic_file_errors(config):
        dataset = SeqDataset(config)
    return SeqData(dataset, settings)


def inter_file(config: Any) -> Path:
    """The ``.inter`` file of the config's dataset: ``<data_path>/<dataset>/<dataset>.inter``.

    Checked before anything loads, for every model: RecBole would otherwise offer to download
    a dataset it knows by name, or fail deep inside its loader.

    Raises:
        DataError: the data folder, the dataset's folder or its ``.inter`` file is missing.
    """
    name = str(config["dataset"])
    folder = Path(config["data_path"])  # a resolved Config: <data_path>/<dataset>
    inter = folder / f"{name}.inter"
    if inter.is_file():
        return inter
    if not folder.parent.is_dir():
        raise DataError(
            f"dataset {name!r} not found: data path {folder.parent} does not exist "
            "(check --data-path or data_path)"
        )
    if not folder.is_dir():
        found = sorted(d.name for d in folder.parent.iterdir() if (d / f"{d.name}.inter").is_file())
        raise DataError(
            f"dataset {name!r} not found: no folder {folder}; datasets under {folder.parent}: "
            f"{found} (check the dataset name and --data-path)"
        )
    what = "is not a regular file" if inter.exists() else "not found"
    raise DataError(f"dataset {name!r}: {inter} {what} (check data_path and dataset)")
