"""Stable 64-bit string hashes, vectorised with numpy.

Python's `hash()` changes with PYTHONHASHSEED, so partitioning and user sampling use
FNV-1a over the UTF-8 bytes followed by the splitmix64 finaliser (FNV alone mixes its
low bits poorly, and the partition id is taken modulo a small number).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = x.copy()
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _fnv1a(values: pa.Array) -> np.ndarray:
    """FNV-1a 64 of each string of `values` (no nulls): one numpy pass per byte position."""
    arr = values.cast(pa.large_binary())
    n = len(arr)
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset : arr.offset + n + 1]
    data = (
        np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    )
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    if n == 0:
        return h
    max_len = int(lengths.max())
    if int(lengths.min()) == max_len:
        # Common case (Amazon ids have fixed widths): the bytes form an [N, L] matrix.
        matrix = data[offsets[0] : offsets[0] + n * max_len].reshape(n, max_len)
        for j in range(max_len):
            h ^= matrix[:, j]
            h *= _FNV_PRIME
        return h
    for j in range(max_len):
        active = np.flatnonzero(lengths > j)
        if len(active) == n:
            h ^= data[starts + j]
            h *= _FNV_PRIME
        else:
            h[active] = (h[active] ^ data[starts[active] + j]) * _FNV_PRIME
    return h


def stable_hash64(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Hash each string to a uint64 that is the same on every machine, run and process.

    Args:
        values: string array [N] without nulls.

    Returns:
        uint64 array [N].
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return _splitmix64(_fnv1a(values))


def partition_of(values: pa.Array | pa.ChunkedArray, n_parts: int) -> np.ndarray:
    """Partition id in [0, n_parts) of each string (int32 [N]); stable across runs."""
    return (stable_hash64(values) % np.uint64(n_parts)).astype(np.int32)


def sample_keys(values: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """Seeded sampling key of each string (uint64 [N]): sorting by it is a seeded shuffle."""
    seed_mix = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    return _splitmix64(stable_hash64(values) ^ seed_mix)
