"""``SeqDataset``: RecBole's atomic-file loading, keeping each user's history once.

RecBole's ``Dataset`` reads ``.inter`` / ``.item`` / ``.user``, filters, remaps tokens to
ids and fills missing values; we reuse all of that. Its ``SequentialDataset`` then builds
one row per prefix (every interaction carries its whole history), which is what makes
RecBole need ~130 GB of RAM for a 15 GB ``.inter`` (REFERENCE section 5). Here the
interaction frame is turned into three flat arrays right after loading and then freed:

* ``hist_items`` int64 [nnz]: item ids of all users, grouped by user, each user's items
  sorted by time (stable: ties keep the order of the loaded frame, i.e. file order unless
  ``rm_dup_inter`` re-sorted it);
* ``hist_times`` int64 [nnz]: the matching unix seconds (0 when no time field is loaded);
* ``hist_seconds`` float64 [nnz]: the same times as the file gives them (fractions kept);
* ``hist_offsets`` int64 [user_num + 1]: user ``u`` owns ``[offsets[u], offsets[u + 1])``.
"""

from __future__ import annotations

import gc
import logging
import math
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from recbole.data.dataset import Dataset
from recbole.utils import FeatureSource, FeatureType

from recbole_fork import compat
from recbole_fork.data.seq_data import DataError
from recbole_fork.encoders import Catalog
from recbole_fork.settings import ConfigError

compat.apply()  # RecBole's numpy 2 / pandas 3 fixes, before RecBole is used

logger = logging.getLogger(__name__)


class TokenIds(Mapping):
    """``token -> id`` of one remapped field, as RecBole's ``field2token_id`` dicts.

    RecBole builds a Python dict over every token (for 3M items, ~0.6 GB of str objects and
    hash entries) that training never reads. This mapping answers the same lookups from the
    ``field2id_token`` array through a pandas Index built on first use.
    """

    def __init__(self, tokens: np.ndarray) -> None:
        self._tokens = tokens  # [n] str, position = id
        self._index: pd.Index | None = None

    def _lookup(self) -> pd.Index:
        if self._index is None:
            self._index = pd.Index(self._tokens)
        return self._index

    def __getitem__(self, token: str) -> int:
        try:
            return int(self._lookup().get_loc(token))
        except (KeyError, TypeError):
            raise KeyError(token) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._tokens.tolist())

    def __len__(self) -> int:
        return len(self._tokens)


class SeqDataset(Dataset):
    """A RecBole ``Dataset`` whose interactions live as flat per-user histories.

    After construction ``inter_feat`` is None (freed); ``user_feat`` / ``item_feat`` are
    RecBole ``Interaction`` objects, as after RecBole's ``build()`` (token_seq fields padded
    into ``[n, seqlen]`` tensors). ``item_num``, ``user_num``, ``field2id_token`` and the
    other token maps behave as in RecBole; ``inter_num`` and ``counter`` read the flat arrays.

    Args:
        config: a RecBole ``Config`` (or a mapping returning None for unknown keys).

    Raises:
        DataError: the time field holds values that are not finite numbers.
    """

    hist_items: np.ndarray
    hist_times: np.ndarray
    hist_seconds: np.ndarray
    hist_offsets: np.ndarray

    def _get_load_and_unload_col(self, source):
        load_col, unload_col = super()._get_load_and_unload_col(source)
        if source == FeatureSource.INTERACTION and load_col is not None:
            # The histories need user, item and time; RecBole's default load_col lists only
            # user and item, which would silently lose the order. Other columns of the
            # .inter (rating, ...) are never read, so only the listed ones load.
            needed = {self.uid_field, self.iid_field, self.time_field} - {None}
            load_col = set(load_col) | needed
        return load_col, unload_col

    def _filter_by_inter_num(self) -> None:
        # RecBole's default intervals "[0,inf)" keep everything, yet RecBole still counts
        # every interaction in Python Counters of token strings (memory and minutes at 10M
        # rows). Skip when both intervals are such no-ops; real k-core filters run as usual.
        def no_op(text) -> bool:
            intervals = self._parse_intervals_str(text)
            return intervals is None or (
                len(intervals) == 1 and intervals[0][1] <= 0 and intervals[0][2] == math.inf
            )

        if no_op(self.config["user_inter_num_interval"]) and no_op(
            self.config["item_inter_num_interval"]
        ):
            return
        super()._filter_by_inter_num()

    def _filter_inter_by_user_or_item(self) -> None:
        # Without .user / .item features nothing can be filtered, but RecBole's version
        # still rebuilds the whole interaction frame (an in-place drop of zero rows).
        if self.user_feat is None and self.item_feat is None:
            return
        super()._filter_inter_by_user_or_item()

    def _remap(self, remap_list) -> None:
        """Token -> id remapping with RecBole's numbering, without per-row Python strings.

        RecBole concatenates every column of a remap group into one object array and
        factorizes it: ids follow first appearance over (inter column, then user/item
        feature columns; a token_seq column flattened row by row), 0 is ``[PAD]`` and
        missing tokens. Factorizing each column on its own and then the (short)
        concatenation of their uniques gives the same ids while never materialising a
        Python string per interaction.
        """
        if not remap_list:
            return
        codes, uniques, seq_lens = [], [], []
        for feat, field, ftype in remap_list:
            lens = None
            if ftype == FeatureType.TOKEN:
                values = feat[field]
            elif ftype == FeatureType.TOKEN_SEQ:
                rows = feat[field].tolist()  # one array of tokens per row
                lens = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
                values = np.concatenate(rows) if int(lens.sum()) else np.array([], dtype=object)
            else:
                raise ValueError(f"field {field!r} of type {ftype} cannot be remapped to ids")
            c, u = pd.factorize(values)  # c: int64 [n], -1 where missing
            codes.append(c)
            uniques.append(np.asarray(u, dtype=object))
            seq_lens.append(lens)
        first = np.cumsum([0] + [len(u) for u in uniques])  # offset of each column's uniques
        gid, tokens = pd.factorize(np.concatenate(uniques))  # first appearance, in order
        mp = np.array(["[PAD]", *tokens])
        token_id = TokenIds(mp)
        for (feat, field, _), c, off, lens in zip(remap_list, codes, first[:-1], seq_lens):
            if field not in self.field2id_token:
                self.field2id_token[field] = mp
                self.field2token_id[field] = token_id
            # Missing tokens (code -1) get id 0. Indexing only the present ones: a column
            # with no token at all (every item's text empty) has no uniques to index.
            ids = np.zeros(len(c), dtype=np.int64)
            present = c >= 0
            ids[present] = gid[c[present] + off] + 1
            if lens is None:
                feat[field] = ids
            else:
                feat[field] = [ids[a:b] for a, b in zip(np.cumsum(lens) - lens, np.cumsum(lens))]

    def _normalize(self) -> None:
        """RecBole's min-max normalisation of float fields, never of the time field.

        RecBole's own ``ml-100k`` properties set ``normalize_all: True``, which would scale the
        timestamp to [0, 1] as well: HSTU's time bias would then see fractions of the whole
        period (every gap in bucket 0, the ``next`` / ``own`` options identical) and a
        ``split: time`` cut in seconds would fall outside the data. Every other float field is
        normalised as configured.

        Raises:
            ConfigError: ``normalize_field`` lists the time field.
        """
        time_field = self.time_field
        listed = self.config["normalize_field"] or []
        if time_field is not None and time_field in listed:
            raise ConfigError(
                f"normalize_field lists the time field {time_field!r}; the fork keeps times in "
                "the file's seconds (HSTU's time bias, split: time): remove it from the list"
            )
        if time_field is None or listed or not self.config["normalize_all"]:
            super()._normalize()
            return
        others = [f for f in self.float_like_fields if f != time_field]
        saved = {k: self.config[k] for k in ("normalize_all", "normalize_field")}
        self.config["normalize_all"], self.config["normalize_field"] = None, others or None
        try:
            super()._normalize()
        finally:
            for key, value in saved.items():
                self.config[key] = value

    def _from_scratch(self) -> None:
        super()._from_scratch()
        self._build_histories()

    def _build_histories(self) -> None:
        """Flat arrays from ``inter_feat``, then free the frame and convert side features."""
        df = self.inter_feat
        uid = df[self.uid_field].to_numpy(dtype=np.int64)
        iid = df[self.iid_field].to_numpy(dtype=np.int64)
        if self.time_field is not None and self.time_field in df:
            ts = df[self.time_field].to_numpy(dtype=np.float64)
            if not np.isfinite(ts).all():
                bad = int((~np.isfinite(ts)).sum())
                inter = Path(self.dataset_path) / f"{self.dataset_name}.inter"
                raise DataError(
                    f"{inter}: {bad} values of time field {self.time_field!r} are not finite "
                    "numbers (NaN or infinite); fix or drop those lines"
                )
        else:
            self.logger.warning(
                f"dataset {self.dataset_name!r}: no time field loaded "
                f"(TIME_FIELD={self.time_field!r}); histories keep file order, times are 0"
            )
            ts = np.zeros(len(uid), dtype=np.float64)
        # Two stable sorts = sort by (user, time) with ties in frame order.
        order = np.argsort(ts, kind="stable")
        order = order[np.argsort(uid[order], kind="stable")]
        self.hist_items = iid[order]
        # The file's own values (milliseconds kept) for the temporal split; whole seconds for
        # the models (HSTU's time buckets).
        self.hist_seconds = ts[order]
        self.hist_times = np.rint(self.hist_seconds).astype(np.int64)
        counts = np.bincount(uid, minlength=self.user_num).astype(np.int64)
        self.hist_offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.hist_offsets[1:])
        del df, uid, iid, ts, order
        self.inter_feat = None
        gc.collect()
        self.feat_name_list = [n for n in self.feat_name_list if n != "inter_feat"]
        for name in self.feat_name_list:
            feat = getattr(self, name)
            if feat is not None:
                setattr(self, name, self._dataframe_to_interaction(feat))

    @property
    def inter_num(self) -> int:
        """Number of interactions (after RecBole's filtering)."""
        return len(self.hist_items)

    def __len__(self) -> int:
        return self.inter_num

    def counter(self, field: str) -> Counter:
        """Occurrences of each user or item id among the interactions.

        Raises:
            ValueError: ``field`` is neither the user nor the item id field.
        """
        if field == self.uid_field:
            counts = np.diff(self.hist_offsets)
        elif field == self.iid_field:
            counts = np.bincount(self.hist_items, minlength=self.item_num)
        else:
            raise ValueError(
                f"counter({field!r}): SeqDataset keeps only {self.uid_field!r} and "
                f"{self.iid_field!r} of the interactions"
            )
        nz = np.flatnonzero(counts)
        return Counter(dict(zip(nz.tolist(), counts[nz].tolist())))

    def build(self):
        """Not available: RecBole's split materialises frames; use ``SeqData`` loaders."""
        raise NotImplementedError(
            "SeqDataset keeps no interaction frame; use recbole_fork.data.build_seq_data(config)"
        )


def catalog_from_dataset(dataset, text_fields=()) -> Catalog:
    """The item catalog of a RecBole dataset: item count and the token ids of ``text_fields``.

    Raises:
        ConfigError: see ``text_fields_from_dataset``.
    """
    tokens, vocabs = ({}, {})
    if text_fields:
        tokens, vocabs = text_fields_from_dataset(dataset, list(text_fields))
    return Catalog(
        n_items=int(dataset.num(dataset.iid_field)),
        tokens=tokens,
        vocabs=vocabs,
        name=str(getattr(dataset, "dataset_name", "dataset")),
    )


def text_fields_from_dataset(
    dataset, fields: list[str]
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Token ids and vocabularies of ``fields`` from a RecBole dataset's item features.

    Args:
        dataset: a RecBole ``Dataset`` whose ``.item` file was loaded.
        fields: names of ``token`` or ``token_seq`` item fields.

    Returns:
        (field -> int64 ``[n_items, T_f]`` or ``[n_items]``, field -> token strings).

    Raises:
        ConfigError: the dataset has no item features, a field is missing or not a token
            field, or every field is empty for every item.
    """
    name = getattr(dataset, "dataset_name", "dataset")
    if dataset.item_feat is None:
        raise ConfigError(
            f"item_encoder 'text' needs item features, but {name} has no .item file loaded "
            "(add the fields to `load_col: {item: [...]}` or use item_encoder: id)"
        )
    tokens, vocabs = {}, {}
    for field in fields:
        if field not in dataset.field2type or dataset.field2source.get(field) != FeatureSource.ITEM:
            raise ConfigError(
                f"text field {field!r} is not an item field of {name}; "
                f"check `text_fields` and `load_col` (item fields: {_item_fields(dataset)})"
            )
        if dataset.field2type[field] not in (FeatureType.TOKEN, FeatureType.TOKEN_SEQ):
            raise ConfigError(f"text field {field!r} of {name} must be a token or token_seq field")
        tokens[field] = dataset.item_feat[field].long()
        vocabs[field] = [str(s) for s in dataset.field2id_token[field]]
    # A field whose vocabulary is the padding token alone is empty for every item (the ETL
    # writes such a .item when a catalog has no metadata): the text encoder would see nothing.
    empty = [field for field in fields if len(vocabs[field]) <= 1]
    if empty and len(empty) == len(fields):
        raise ConfigError(
            f"text fields {empty} of {name} are empty for every item (no item metadata?), so "
            "a text item encoder has nothing to read; use item_encoder: id"
        )
    if empty:
        logger.warning("text fields %s of %s are empty for every item", empty, name)
    return tokens, vocabs


def _item_fields(dataset) -> list[str]:
    return sorted(f for f, s in dataset.field2source.items() if s == FeatureSource.ITEM)


# ----- one-line errors for unreadable atomic files ---------------------------------------------

_FIELD_TYPES = ("token", "token_seq", "float", "float_seq")


@contextmanager
def atomic_file_errors(config: Any) -> Iterator[None]:
    """Turn RecBole's and pandas' ``ValueError`` on reading a dataset into a one-line
    ``DataError`` naming the file and line (a value that is not a number, a bad header, a
    ``.inter`` with no rows, nothing left after filtering).

    The files are scanned only after a load failed. An error the scan cannot pin on a file
    is re-raised unchanged: it is a bug, and keeps its traceback.

    Args:
        config: the run's RecBole ``Config`` (``data_path`` is ``<data_path>/<dataset>``).
    """
    try:
        yield
    except ValueError as e:
        if isinstance(e, DataError):
            raise
        problem = atomic_file_problem(config)
        if problem is None and str(e).startswith("Some feat is empty"):
            problem = (
                f"dataset {config['dataset']!r}: no interactions left after loading and "
                "filtering; check load_col, user_inter_num_interval, item_inter_num_interval "
                "and val_interval"
            )
        if problem is None:
            raise
        raise DataError(problem) from e


def atomic_file_problem(config: Any) -> str | None:
    """The first problem found in the dataset's ``.inter``, ``.user`` and ``.item`` files,
    as one line naming the file and line; None when they read fine.

    Checks the header (``field:type`` columns of a known type), the UTF-8 (or
    ``encoding``) text, the number of fields per line, the values of ``float`` and
    ``float_seq`` columns that are loaded, and that the ``.inter`` holds a row.
    """
    folder = Path(config["data_path"])
    name = str(config["dataset"])
    load_col = config["load_col"]
    unload_col = config["unload_col"] or {}
    for suffix in ("inter", "user", "item"):
        path = folder / f"{name}.{suffix}"
        if not path.is_file() or (isinstance(load_col, Mapping) and suffix not in load_col):
            continue
        loaded = None
        if isinstance(load_col, Mapping):
            loaded = set(load_col[suffix])
            if suffix == "inter":  # SeqDataset always loads them (see _get_load_and_unload_col)
                loaded |= {config["USER_ID_FIELD"], config["ITEM_ID_FIELD"], config["TIME_FIELD"]}
        skipped = set(unload_col.get(suffix) or ()) if isinstance(unload_col, Mapping) else set()
        problem = _file_problem(
            path,
            sep=config["field_separator"] or "\t",
            seq_sep=config["seq_separator"] or " ",
            encoding=config["encoding"] or "utf-8",
            loaded=loaded,
            skipped=skipped,
            needs_rows=suffix == "inter",
        )
        if problem is not None:
            return problem
    return None


def _file_problem(
    path: Path,
    *,
    sep: str,
    seq_sep: str,
    encoding: str,
    loaded: set[str] | None,
    skipped: set[str],
    needs_rows: bool,
) -> str | None:
    """One atomic file's first problem (see ``atomic_file_problem``), or None."""
    columns: list[tuple[int, str, str]] = []  # (position, field, type) of numeric loaded columns
    n_fields = 0
    line_no = 0
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode(encoding).rstrip("\r\n")
            except UnicodeDecodeError as e:
                return f"{path}, line {line_no}: not {encoding} text (byte {e.start} of the line)"
            fields = line.split(sep)
            if line_no == 1:
                for i, column in enumerate(fields):
                    field, _, ftype = column.partition(":")
                    if ftype not in _FIELD_TYPES:
                        return (
                            f"{path}, line 1: header column {column!r} is not field:type with "
                            f"a type of {list(_FIELD_TYPES)}"
                        )
                    wanted = (loaded is None or field in loaded) and field not in skipped
                    if wanted and ftype.startswith("float"):
                        columns.append((i, field, ftype))
                n_fields = len(fields)
                continue
            if len(fields) > n_fields:
                return (
                    f"{path}, line {line_no}: {len(fields)} fields, but the header has {n_fields}"
                )
            for i, field, ftype in columns:
                value = fields[i] if i < len(fields) else ""
                pieces = value.split(seq_sep) if ftype == "float_seq" else [value]
                for piece in pieces:
                    if piece.strip() and not _is_number(piece):
                        return (
                            f"{path}, line {line_no}: field {field!r} ({ftype}) holds "
                            f"{piece[:40]!r}, not a number"
                        )
    if line_no == 0:
        return f"{path} is empty: not even a header line"
    if needs_rows and line_no == 1:
        return f"{path} holds no interactions, only its header line (a failed export?)"
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
