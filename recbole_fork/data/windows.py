"""Training samples as arithmetic over per-user lengths, and vectorised batch assembly.

Every user's history lives once in a flat array (``items[offsets[u]:offsets[u + 1]]``).
A training sample is never stored as a row: it is a number ``g`` in ``[0, n_samples)``
that maps to a (user, k) pair through the cumulative count of samples per user, and the
(user, k) pair maps to a slice ``[start, end)`` of that user's training items. Batches are
gathered from the flat arrays with index matrices, one numpy call per field.

Two modes:

* ``all_positions``: user histories are cut into windows of at most ``L + 1`` items (L
  inputs, each followed by its target). A history of ``m <= L + 1`` training items is one
  window; a longer one gives ``1 + ceil((m - L - 1) / stride)`` windows whose ends step back
  from ``m`` by ``stride``, the earliest clipped at the start of the history. With
  ``stride = L`` consecutive windows share one item, so every transition
  ``item[t] -> item[t + 1]`` is supervised exactly once per epoch.
* ``last_position``: RecBole's prefixes. Sample ``k`` of a user predicts training item
  ``k + 1`` from the (at most L) items before it; only that last position has a target.
"""

from __future__ import annotations

import numpy as np

TRAIN_MODES = ("all_positions", "last_position")


def samples_per_user(train_len: np.ndarray, max_len: int, stride: int, mode: str) -> np.ndarray:
    """Number of training samples of each user.

    Args:
        train_len: int64 [U], training items per user.
        max_len: L, the number of input positions of a sample.
        stride: distance in items between the ends of consecutive windows (all_positions).
        mode: ``all_positions`` or ``last_position``.

    Returns:
        int64 [U]; 0 for users with fewer than 2 training items (no input-target pair).
    """
    m = np.asarray(train_len, dtype=np.int64)
    if mode == "last_position":
        return np.maximum(m - 1, 0)
    extra = np.maximum(m - max_len - 1, 0)
    n = 1 + (extra + stride - 1) // stride  # ceil division on int64, no float rounding
    return np.where(m >= 2, n, 0).astype(np.int64)


def sample_slices(
    user_start: np.ndarray,
    user_train_len: np.ndarray,
    k: np.ndarray,
    max_len: int,
    stride: int,
    mode: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Slices of the flat item array that samples ``k`` of the given users cover.

    Args:
        user_start: int64 [B], flat offset of each sample's user.
        user_train_len: int64 [B], that user's number of training items ``m``.
        k: int64 [B], the sample's rank within its user (``0 <= k < samples_per_user``).
        max_len, stride, mode: as in ``samples_per_user``.

    Returns:
        ``(start, length)``, int64 [B] each: the window is ``items[start:start + length]``,
        ``2 <= length <= L + 1``; inputs are its first ``length - 1`` items.
    """
    if mode == "last_position":
        end = k + 2  # exclusive end inside the user's history: target is item k + 1
    else:
        end = user_train_len - k * stride
    begin = np.maximum(end - max_len - 1, 0)
    return user_start + begin, end - begin


def gather_windows(
    items: np.ndarray,
    times: np.ndarray,
    start: np.ndarray,
    length: np.ndarray,
    max_len: int,
    last_only: bool,
) -> dict[str, np.ndarray]:
    """Right-padded training arrays for windows ``items[start:start + length]``.

    Args:
        items, times: int64 [nnz], the flat histories.
        start, length: int64 [B] (``length >= 2``), from ``sample_slices``.
        max_len: L.
        last_only: True puts a target only at the last real position (last_position mode).

    Returns:
        ``item_seq``, ``time_seq``, ``target``, ``target_time``: int64 [B, L], 0 at padding /
        no target. ``target_time`` is the time of the item after each input position (the
        target's time where there is one; HSTU's time bias reads it), at every real position.
    """
    pos = np.arange(max_len, dtype=np.int64)  # [L]
    n_in = length - 1  # [B]
    real = pos[None, :] < n_in[:, None]  # [B, L]
    idx = np.where(real, start[:, None] + pos[None, :], 0)  # [B, L], 0 keeps the gather in range
    item_seq = np.where(real, items[idx], 0)
    time_seq = np.where(real, times[idx], 0)
    if last_only:
        tgt_mask = pos[None, :] == (n_in - 1)[:, None]
    else:
        tgt_mask = real
    target = np.where(tgt_mask, items[np.where(tgt_mask, idx + 1, 0)], 0)
    target_time = np.where(real, times[np.where(real, idx + 1, 0)], 0)
    return {
        "item_seq": item_seq,
        "time_seq": time_seq,
        "target": target,
        "target_time": target_time,
    }


def gather_eval(
    items: np.ndarray,
    times: np.ndarray,
    user_start: np.ndarray,
    target_pos: np.ndarray,
    max_len: int,
) -> dict[str, np.ndarray]:
    """Evaluation arrays: the last L items before each target, and the full history as CSR.

    Args:
        items, times: int64 [nnz], the flat histories.
        user_start: int64 [B], flat offset of each user.
        target_pos: int64 [B], the target's position inside its user's history (>= 1).
        max_len: L.

    Returns:
        ``item_seq``, ``time_seq`` int64 [B, L]; ``seq_len``, ``target``, ``target_time``
        int64 [B]; ``hist_indptr`` int64 [B + 1] and ``hist_items`` int64 [nnz_b]: every item
        before the target (the whole history, not only the last L).
    """
    seq_len = np.minimum(target_pos, max_len)  # [B]
    first = user_start + target_pos - seq_len  # [B]
    pos = np.arange(max_len, dtype=np.int64)
    real = pos[None, :] < seq_len[:, None]  # [B, L]
    idx = np.where(real, first[:, None] + pos[None, :], 0)
    tgt = user_start + target_pos
    indptr = np.zeros(len(target_pos) + 1, dtype=np.int64)
    np.cumsum(target_pos, out=indptr[1:])
    # hist position j of row b is user_start[b] + (j - indptr[b]): one repeat per field.
    hist_idx = np.arange(indptr[-1], dtype=np.int64) + np.repeat(
        user_start - indptr[:-1], target_pos
    )
    return {
        "item_seq": np.where(real, items[idx], 0),
        "time_seq": np.where(real, times[idx], 0),
        "seq_len": seq_len.astype(np.int64),
        "target": items[tgt],
        "target_time": times[tgt],
        "hist_indptr": indptr,
        "hist_items": items[hist_idx],
    }
