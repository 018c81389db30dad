"""How a run's interactions are held out: leave-one-out, or a global temporal split.

Both work on the flat, time-sorted histories of ``SeqDataset`` (each user's interactions in
time order, ties in file order) and give, per user, how many leading interactions are
training data, and per evaluated phase the users and the position of their target. A
target's history is everything of its user before it.

* ``leave_one_out`` (the published protocol): for a user with ``n >= 3`` interactions, item
  ``n - 2`` is the valid target, item ``n - 1`` the test target, items ``0 .. n - 3`` are
  training data. A user with fewer than 3 interactions is training data only.
* ``time`` (a global temporal split, e.g. the Amazon Reviews 2023 ``timestamp`` benchmark):
  two cuts ``valid_cut <= test_cut``. Training never sees an interaction at or after the
  valid cut. A user's valid target is their first interaction at or after the valid cut and
  before the test cut; their test target is their first interaction at or after the test
  cut, with everything before it (valid-period interactions included) as history. Users
  with nothing in a period, or with no interaction before its target, are not evaluated on
  that phase. An interaction exactly at a cut belongs to the later period.
  A cut at most 1 is a fraction of all interactions in time order (``0.8``: the timestamp
  of the interaction at that quantile), a larger one a timestamp in the atomic file's unit
  (unix seconds; kept exactly, milliseconds included).
  ``targets: all`` makes every interaction of a period a target instead of the user's first
  one, each with everything of its user before it (earlier targets included) as history:
  the Amazon Reviews 2023 ``timestamp`` benchmark's own protocol, so its official files are
  reproduced row for row (a row with no earlier interaction of its user cannot be scored by
  a sequential model and is left out).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recbole_fork.settings import ConfigError, Settings, check_choice

SPLITS = ("leave_one_out", "time")
TARGETS = ("first", "all")


@dataclass(frozen=True)
class SplitSettings(Settings):
    """``split: {type: ..., valid_cut: ..., test_cut: ...}`` (defaults: ``data.yaml``)."""

    type: str  # leave_one_out | time
    valid_cut: float | None  # time: a timestamp, or a fraction (<= 1) of all interactions
    test_cut: float | None
    targets: str  # time: first (a user's first interaction of a period) | all (every one)

    def __post_init__(self) -> None:
        check_choice("split.type", self.type, SPLITS)
        check_choice("split.targets", self.targets, TARGETS)
        if self.type != "time":
            return
        if self.valid_cut is None or self.test_cut is None:
            raise ConfigError(
                "split type 'time' needs split.valid_cut and split.test_cut (timestamps, or "
                "fractions of all interactions in time order)"
            )
        for key in ("valid_cut", "test_cut"):
            if getattr(self, key) < 0:
                raise ConfigError(f"split.{key}={getattr(self, key)}: must be >= 0")
        if (self.valid_cut <= 1) != (self.test_cut <= 1):
            raise ConfigError(
                f"split cuts {self.valid_cut} and {self.test_cut}: give both as fractions "
                "(<= 1) or both as timestamps"
            )
        if self.valid_cut > self.test_cut:
            raise ConfigError(
                f"split.valid_cut={self.valid_cut} is after split.test_cut={self.test_cut}"
            )


@dataclass(frozen=True)
class Split:
    """Where each user's data goes.

    Attributes:
        train_len: int64 [n_users], leading interactions of each user that are training data.
        valid_users, valid_pos: int64, ascending users and their valid target's position (a
            user appears once per target: once, or, with ``targets: all``, once per row).
        test_users, test_pos: the same for test.
        cuts: the cut timestamps used (``time``), else None.
    """

    train_len: np.ndarray
    valid_users: np.ndarray
    valid_pos: np.ndarray
    test_users: np.ndarray
    test_pos: np.ndarray
    cuts: tuple[float, float] | None = None


def leave_one_out(counts: np.ndarray) -> Split:
    """The leave-one-out split of users with ``counts`` interactions each (int64 [n_users])."""
    evaluated = counts >= 3
    users = np.flatnonzero(evaluated).astype(np.int64)
    return Split(
        train_len=np.where(evaluated, counts - 2, counts).astype(np.int64),
        valid_users=users,
        valid_pos=(counts[users] - 2).astype(np.int64),
        test_users=users,
        test_pos=(counts[users] - 1).astype(np.int64),
    )


def resolve_cut(cut: float, times: np.ndarray) -> float:
    """A cut as a timestamp: a fraction (<= 1) becomes the time of the interaction at that
    quantile of all interactions in time order; a timestamp stays as it is."""
    if cut > 1:
        return float(cut)
    ordered = np.sort(times, kind="stable")
    if len(ordered) == 0:
        return float("inf")
    index = min(int(np.floor(cut * len(ordered))), len(ordered) - 1)
    return float(ordered[index]) if cut < 1 else float("inf")


def temporal(
    offsets: np.ndarray,
    times: np.ndarray,
    valid_cut: float,
    test_cut: float,
    targets: str = "first",
) -> Split:
    """The global temporal split (see the module docstring).

    Args:
        offsets: int64 [n_users + 1], user u owns ``[offsets[u], offsets[u + 1])``.
        times: float64 [nnz], each user's interactions in time order.
        valid_cut, test_cut: timestamps (already resolved from fractions).
        targets: ``first`` or ``all`` interactions of a period are targets.
    """
    counts = np.diff(offsets)
    if targets == "all":
        return _every_target(offsets, times, valid_cut, test_cut)
    # Per user, the interactions before each cut; times within a user are sorted, so that
    # count is also the position of the user's first interaction at or after the cut.
    user = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    before_valid = np.bincount(user[times < valid_cut], minlength=len(counts)).astype(np.int64)
    before_test = np.bincount(user[times < test_cut], minlength=len(counts)).astype(np.int64)
    # Valid: the first interaction at or after the valid cut, if it is before the test cut,
    # and the user has some history before it.
    has_valid = (before_test > before_valid) & (before_valid > 0)
    valid_users = np.flatnonzero(has_valid).astype(np.int64)
    has_test = (counts > before_test) & (before_test > 0)
    test_users = np.flatnonzero(has_test).astype(np.int64)
    return Split(
        train_len=before_valid,
        valid_users=valid_users,
        valid_pos=before_valid[valid_users],
        test_users=test_users,
        test_pos=before_test[test_users],
        cuts=(float(valid_cut), float(test_cut)),
    )


def _every_target(
    offsets: np.ndarray, times: np.ndarray, valid_cut: float, test_cut: float
) -> Split:
    """``targets: all``: every interaction of a period with an earlier one of its user."""
    counts = np.diff(offsets)
    user = np.repeat(np.arange(len(counts), dtype=np.int64), counts)  # [nnz], ascending
    pos = np.arange(len(times), dtype=np.int64) - np.repeat(offsets[:-1], counts)  # [nnz]
    in_valid = (times >= valid_cut) & (times < test_cut) & (pos > 0)
    in_test = (times >= test_cut) & (pos > 0)
    return Split(
        train_len=np.bincount(user[times < valid_cut], minlength=len(counts)).astype(np.int64),
        valid_users=user[in_valid],
        valid_pos=pos[in_valid],
        test_users=user[in_test],
        test_pos=pos[in_test],
        cuts=(float(valid_cut), float(test_cut)),
    )


def make_split(settings: SplitSettings, offsets: np.ndarray, times: np.ndarray) -> Split:
    """The split ``settings`` names, over the time-sorted histories."""
    if settings.type == "leave_one_out":
        return leave_one_out(np.diff(offsets))
    valid_cut = resolve_cut(settings.valid_cut, times)
    test_cut = resolve_cut(settings.test_cut, times)
    return temporal(offsets, times, valid_cut, test_cut, settings.targets)


__all__ = [
    "SPLITS",
    "Split",
    "SplitSettings",
    "leave_one_out",
    "make_split",
    "resolve_cut",
    "temporal",
]
