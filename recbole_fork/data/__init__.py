"""Sequential data: histories stored once, windows cut on the fly, leave-one-out split."""

from recbole_fork.data.dataset import SeqDataset, catalog_from_dataset
from recbole_fork.data.seq_data import (
    EVAL_PHASES,
    DataError,
    DataSettings,
    EvalLoader,
    SeqData,
    TrainLoader,
    build_seq_data,
)
from recbole_fork.data.windows import TRAIN_MODES

__all__ = [
    "EVAL_PHASES",
    "TRAIN_MODES",
    "DataError",
    "DataSettings",
    "EvalLoader",
    "SeqData",
    "SeqDataset",
    "TrainLoader",
    "build_seq_data",
    "catalog_from_dataset",
]
