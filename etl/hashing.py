"""Stable 64-bit string hashes, vectorised with numpy.

Python's `hash()` changes with PYTHONHASHSEED, so partitioning and user sampling use
FNV-1a over the UTF-8 bytes followed by the splitmix64 finaliser (FNV alone mixes its
low bits poorly, and the partition id is taken modulo a small number).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


def _offsets_and_data(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The value offsets (int64 [N+1], into `data`) and bytes (uint8) of a string array.

    Zero-copy for string and binary arrays of either offset width (no cast to large_binary,
    which would copy the offsets of a whole chunk for nothing).
    """
    if pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type):
        offset_type = np.int64
    elif pa.types.is_string(values.type) or pa.types.is_binary(values.type):
        offset_type = np.int32
    else:
        values = values.cast(pa.large_binary())
        offset_type = np.int64
    n = len(values)
    _, offsets_buf, data_buf = values.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=offset_type)[values.offset : values.offset + n + 1]
    data = (
        np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    )
    return offsets.astype(np.int64, copy=False), data


_MAX_MATRIX_WIDTH = 64  # bytes per string gathered at once; ids are far shorter


def _fnv1a(values: pa.Array) -> np.ndarray:
    """FNV-1a 64 of each string of `values` (no nulls): one numpy pass per byte position."""
    offsets, data = _offsets_and_data(values)
    n = len(offsets) - 1
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    if n == 0:
        return h
    starts, lengths = offsets[:-1], np.diff(offsets)
    min_len, max_len = int(lengths.min()), int(lengths.max())
    if min_len == max_len:
        # Fixed width (asins): the bytes already form an [N, L] matrix, no copy.
        width = max_len
        matrix = data[starts[0] : starts[0] + n * width].reshape(n, width)
    else:
        # Mixed widths (reviewer ids): each string's first `width` bytes, [N, width], gathered
        # in one call through a sliding-window view instead of one gather per byte position.
        # Bytes past a string's end belong to the next string (or the zero padding) and are
        # masked below. The width is capped so that one stray long string costs no memory.
        width = min(max_len, _MAX_MATRIX_WIDTH)
        padded = np.concatenate([data[: offsets[-1]], np.zeros(width, dtype=np.uint8)])
        matrix = np.lib.stride_tricks.sliding_window_view(padded, width)[starts]
    for j in range(min(min_len, width)):  # every string has a byte here
        h ^= matrix[:, j]
        h *= _FNV_PRIME
    for j in range(min_len, width):  # only strings longer than j have a byte here
        h = np.where(lengths > j, (h ^ matrix[:, j]) * _FNV_PRIME, h)
    longer = np.flatnonzero(lengths > width)  # the rare strings longer than the matrix
    for j in range(width, max_len):
        longer = longer[lengths[longer] > j]
        h[longer] = (h[longer] ^ data[starts[longer] + j]) * _FNV_PRIME
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
    """Partition id in [0, n_parts) of each string (int32 [N]); stable across runs.

    Each distinct string is hashed once: user ids repeat within a chunk of ratings (a user
    rates several items), and dictionary encoding them (one C++ hash-table pass, about half
    the cost of hashing every row) leaves fewer strings to hash byte by byte.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()
    encoded = pc.dictionary_encode(values)
    parts = (stable_hash64(encoded.dictionary) % np.uint64(n_parts)).astype(np.int32)  # [U]
    return parts[encoded.indices.to_numpy(zero_copy_only=False)]


def sample_keys(values: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """Seeded sampling key of each string (uint64 [N]): sorting by it is a seeded shuffle."""
    seed_mix = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    return _splitmix64(stable_hash64(values) ^ seed_mix)
