"""RecBole 1.2.1 on today's numpy, torch and pandas: each breakage fixed at its cause.

Applied once by ``import recbole_fork`` (see ``apply()``). Every fix has a test in
``tests/fork/test_compat.py`` that fails without it. REFERENCE section 5 lists the breakages:

* numpy 2 removed ``np.float_``, ``np.complex_``, ``np.unicode_`` (and the bare ``np.float``,
  ``np.int`` ... aliases that RecBole's metrics still use). RecBole's
  ``Config.compatibility_settings`` assigns the bare aliases *from* the removed names, so
  building any ``Config`` raises AttributeError. We replace that method with one that only
  fills in the aliases numpy lacks, pointing them at today's types.
* torch >= 2.6 loads with ``weights_only=True``; RecBole pickles its ``Config`` into every
  checkpoint, so reloading the best model fails. The cause is the writer: our trainers write
  plain-dict checkpoints (``recbole_fork.checkpoint``) that load with ``weights_only=True``,
  and nothing here loads a pickled ``Config``. Nothing to patch in this module.
* pandas 3 (copy-on-write): ``Dataset._fill_nan`` and ``Dataset._load_feat`` call
  ``df[col].fillna(..., inplace=True)``, which now fills a temporary copy, so missing values
  stay missing (NaN in a float or token column; NaN in a ``token_seq`` column crashes the
  split). We replace both methods with versions that assign the filled column back.
  ``_load_feat`` also switches pandas to its C parser (RecBole asks for the slow Python one).
* pandas 3: ``Series.agg(len)`` returns the length of the Series, no longer the length of
  each cell, so ``Dataset._remap`` splits the remapped ids of a ``token_seq`` field (item
  titles) at the wrong places and fails. We replace ``_remap`` with one that measures each
  cell and assigns the split ids back as an object column.
* ``recbole.quick_start`` imports ``ray.tune`` at import time: this package never imports
  ``recbole.quick_start``; Ray is imported only by the sweep code (``recbole_fork.scaling``).
* ``Config()`` reads ``sys.argv`` itself: ``recbole_fork.config.ForkConfig`` turns that off.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Old numpy alias -> what it meant. Only names missing from the installed numpy are set.
_NUMPY_ALIASES = {
    "bool": np.bool_,
    "int": np.int_,
    "float": np.float64,
    "complex": np.complex128,
    "object": np.object_,
    "str": np.str_,
    "long": np.int_,
    "unicode": np.str_,
    "float_": np.float64,
    "complex_": np.complex128,
    "unicode_": np.str_,
    "bool8": np.bool_,
}

_applied = False
ORIGINALS: dict[str, object] = {}  # RecBole's own methods, kept so tests can show the breakage


def _numpy_aliases(self=None) -> None:
    """Replacement for ``Config.compatibility_settings``: set only the aliases numpy lacks."""
    for name, value in _NUMPY_ALIASES.items():
        if name not in np.__dict__:
            setattr(np, name, value)


def _fill_nan(self) -> None:
    """Missing-value imputation with RecBole's rules, written back (pandas 3 safe).

    token: 0 (``[PAD]``); float: the column mean; token_seq / float_seq: an empty array.
    """
    from recbole.utils import FeatureType

    for feat_name in self.feat_name_list:
        feat = getattr(self, feat_name)
        for field in feat:
            ftype = self.field2type[field]
            if ftype == FeatureType.TOKEN:
                feat[field] = feat[field].fillna(value=0)
            elif ftype == FeatureType.FLOAT:
                feat[field] = feat[field].fillna(value=feat[field].mean())
            else:
                dtype = np.int64 if ftype == FeatureType.TOKEN_SEQ else np.float64
                feat[field] = [
                    np.array([], dtype=dtype) if isinstance(x, float) else x for x in feat[field]
                ]


def _load_feat(self, filepath, source):
    """Load one atomic file into a DataFrame, setting RecBole's per-field metadata.

    Same contract as RecBole's ``Dataset._load_feat`` (load_col / unload_col, field types,
    ``seq_len`` truncation, ``field2seqlen``), but empty sequence cells become empty arrays
    under pandas 3, and the file is parsed by pandas' C engine.
    """
    from recbole.utils import FeatureSource, FeatureType

    load_col, unload_col = self._get_load_and_unload_col(source)
    if load_col == set():
        return None
    sep = self.config["field_separator"]
    encoding = self.config["encoding"]
    with open(filepath, encoding=encoding) as f:
        header = f.readline().rstrip("\n").rstrip("\r")
    columns, usecols, dtype = [], [], {}
    for field_type in header.split(sep):
        field, _, type_name = field_type.partition(":")
        try:
            ftype = FeatureType(type_name)
        except ValueError:
            raise ValueError(
                f"{filepath}: type {type_name!r} of field {field!r} is not supported "
                f"(one of {[t.value for t in FeatureType]})"
            ) from None
        if load_col is not None and field not in load_col:
            continue
        if unload_col is not None and field in unload_col:
            continue
        if isinstance(source, FeatureSource) or source != "link":
            self.field2source[field] = source
            self.field2type[field] = ftype
            if not ftype.value.endswith("seq"):
                self.field2seqlen[field] = 1
            if "float" in ftype.value:
                self.field2bucketnum[field] = 2
        columns.append(field)
        usecols.append(field_type)
        dtype[field_type] = np.float64 if ftype == FeatureType.FLOAT else str
    if not columns:
        self.logger.warning(f"No columns has been loaded from [{source}]")
        return None

    df = pd.read_csv(
        filepath, delimiter=sep, usecols=usecols, dtype=dtype, encoding=encoding, engine="c"
    )
    df = df[usecols]  # the C engine keeps file order; RecBole's columns follow the header order
    df.columns = columns
    seq_sep = self.config["seq_separator"]
    seq_len_cfg = self.config["seq_len"] or {}
    for field in columns:
        ftype = self.field2type[field]
        if not ftype.value.endswith("seq"):
            continue
        cast = str if ftype == FeatureType.TOKEN_SEQ else float
        values = df[field].fillna("").to_numpy()
        seqs = [np.array([cast(t) for t in s.split(seq_sep) if t]) for s in values]
        max_len = max(map(len, seqs), default=0)
        if field in seq_len_cfg:
            cut = seq_len_cfg[field]
            seqs = [s[:cut] for s in seqs]
            max_len = min(cut, max_len)
        df[field] = seqs
        self.field2seqlen[field] = max_len
    return df


def _remap(self, remap_list) -> None:
    """Remap tokens to ids with one ``pd.factorize`` over every listed field (RecBole's rule:
    fields remapped together share one id space, id 0 is ``[PAD]``), pandas 3 safe."""
    from recbole.utils import FeatureType

    if not remap_list:
        return
    tokens, lengths = [], []
    for feat, field, ftype in remap_list:
        if ftype == FeatureType.TOKEN:
            tokens.append(feat[field].to_numpy())
        else:  # TOKEN_SEQ: every cell is an array of tokens
            cells = feat[field].tolist()
            lengths.append(np.fromiter(map(len, cells), dtype=np.int64, count=len(cells)))
            tokens.append(np.concatenate(cells) if cells else np.array([], dtype=object))
    split_at = np.cumsum([len(t) for t in tokens])[:-1]
    codes, uniques = pd.factorize(np.concatenate(tokens))
    id_token = np.array(["[PAD]", *uniques])
    token_id = {t: i for i, t in enumerate(id_token)}
    seq_lengths = iter(lengths)
    for (feat, field, ftype), ids in zip(remap_list, np.split(codes + 1, split_at)):
        if field not in self.field2id_token:
            self.field2id_token[field] = id_token
            self.field2token_id[field] = token_id
        if ftype == FeatureType.TOKEN:
            feat[field] = ids
        else:
            cells = np.split(ids, np.cumsum(next(seq_lengths))[:-1])
            feat[field] = pd.Series(cells, index=feat.index, dtype=object)


def apply() -> None:
    """Install the fixes (idempotent). Called by ``import recbole_fork``."""
    global _applied
    if _applied:
        return
    _numpy_aliases()
    from recbole.config import Config
    from recbole.data.dataset import Dataset

    ORIGINALS.update(
        compatibility_settings=Config.compatibility_settings,
        _fill_nan=Dataset._fill_nan,
        _load_feat=Dataset._load_feat,
        _remap=Dataset._remap,
    )
    Config.compatibility_settings = _numpy_aliases
    Dataset._fill_nan = _fill_nan
    Dataset._load_feat = _load_feat
    Dataset._remap = _remap
    _applied = True
