"""Parameter counts: exact numbers computed by hand."""

from __future__ import annotations

from torch import nn

from recbole_fork.config import build_config
from recbole_fork.params import count_parameters, training_flops_per_token


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.item_embedding = nn.Embedding(10, 4, padding_idx=0)  # 40, embedding
        self.position_embedding = nn.Embedding(5, 4)  # 20, non-embedding (as in the study)
        self.proj = nn.Linear(4, 4)  # 16 + 4
        self.norm = nn.LayerNorm(4)  # 4 + 4
        self.tied = self.proj  # a shared module is counted once


def test_tiny_model_counts_by_hand():
    counts = count_parameters(Tiny())
    assert (counts.total, counts.embedding, counts.non_embedding) == (88, 40, 48)
    assert counts.as_dict() == {
        "params_total": 88,
        "params_embedding": 40,
        "params_non_embedding": 48,
    }


def test_model_may_name_its_embedding_tables():
    class Text(Tiny):
        def embedding_parameter_names(self):
            return {"item_embedding.weight", "proj.weight"}

    counts = count_parameters(Text())
    assert (counts.embedding, counts.non_embedding) == (56, 32)


def test_stock_sasrec_counts_in_closed_form(tiny_dataset):
    from recbole.data import create_dataset
    from recbole.model.sequential_recommender import SASRec

    d, inner, layers, length = 8, 16, 2, 10
    config = build_config(
        {
            "model": "SASRec", "dataset": "tiny", "data_path": str(tiny_dataset), "hidden_size": d,
            "inner_size": inner, "n_layers": layers, "n_heads": 2, "max_seq_length": length,
        }
    )  # fmt: skip
    dataset = create_dataset(config)
    model = SASRec(config, dataset)
    n_items = 20 + 1  # 20 items and the padding row
    per_layer = 4 * (d * d + d) + 2 * d + (d * inner + inner) + (inner * d + d) + 2 * d
    non_embedding = length * d + layers * per_layer + 2 * d  # positions, blocks, final LayerNorm
    counts = count_parameters(model)
    assert counts.embedding == n_items * d
    assert counts.non_embedding == non_embedding
    assert counts.total == n_items * d + non_embedding
    flops = training_flops_per_token(
        model, seq_len=length, hidden=d, n_layers=layers, scored_items=n_items
    )
    assert flops == 3 * (2 * non_embedding + 2 * layers * length * d + 2 * d * n_items)
