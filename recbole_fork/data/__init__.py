"""Sequential data: histories stored once, windows cut on the fly, leave-one-out split."""

from recbole_fork.data.dataset import SeqDataset
from recbole_fork.data.seq_data import (
    EVAL_PHASES,
    EvalLoader,
    SeqData,
    TrainLoader,
    as_recbole_config,
    build_seq_data,
)
from recbole_fork.data.windows import TRAIN_MODES

__all__ = [
    "EVAL_PHASES",
    "TRAIN_MODES",
    "EvalLoader",
    "SeqData",
    "SeqDataset",
    "TrainLoader",
    "as_recbole_config",
    "build_seq_data",
]
