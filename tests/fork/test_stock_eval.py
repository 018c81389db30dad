"""Stock RecBole models through the fork's evaluator (recbole_fork.stock_eval): the same
split as RecBole's, ranks equal to a brute force over ``full_sort_predict``, and
``exclude_history: false`` equal to RecBole's own evaluation of the same weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recbole_fork import compat
from recbole_fork.data.seq_data import DataSettings
from recbole_fork.evaluation import EvalSettings, ranking_metrics, score_ranks, target_ranks
from recbole_fork.stock_eval import StockEvaluator, eval_protocol
from tests.conftest import run_config, write_atomic_dataset

compat.apply()
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Users by number of interactions: 1, 2, 3 (the one case where the splits differ), 4, 5, 7
# and one of 9; u9 has two pairs of equal timestamps (ties keep the file's order).
HISTORIES = {
    "u1": ["a"],
    "u2": ["b", "c"],
    "u3": ["c", "d", "e"],
    "u4": ["d", "e", "f", "g"],
    "u5": ["a", "c", "e", "g", "h"],
    "u7": ["h", "g", "f", "e", "d", "c", "b"],
    "u9": ["b", "a", "d", "c", "f", "e", "h", "g", "i"],
}
TIES = {("u9", 0): 0, ("u9", 1): 0, ("u9", 4): 5, ("u9", 5): 5}  # (user, position) -> day


def write_histories(root, histories=HISTORIES, name="hist"):
    """An atomic dataset from ``histories`` with the users interleaved row by row (the file
    is not grouped by user; inside a user, file order is history order, so equal
    timestamps keep it); returns the data path."""
    queues = {
        user: [(item, 1_000_000 + 86_400 * TIES.get((user, t), t)) for t, item in enumerate(items)]
        for user, items in histories.items()
    }
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    while any(queues.values()):
        for user, queue in queues.items():
            if queue:
                item, ts = queue.pop(0)
                lines.append(f"{user}\t{item}\t{ts}")
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    return root


# Tiny sizes of each stock model's own keys.
SIZES = {
    "SASRec": {"hidden_size": 8, "inner_size": 16, "n_layers": 1, "n_heads": 1},
    "GRU4Rec": {"embedding_size": 8, "hidden_size": 8, "num_layers": 1},
    "Caser": {"embedding_size": 8, "nv": 2, "nh": 2},
}


def stock_config(data_path, dataset, model="SASRec", **extra):
    return run_config(
        data_path,
        model=model,
        dataset=dataset,
        loss_type="CE",
        **SIZES[model],
        max_seq_length=5,
        train_batch_size=16,
        eval_batch_size=3,
        metrics=["Hit", "NDCG", "MRR"],
        topk=[3],
        valid_metric="NDCG@3",
        metric_decimal_place=12,
        seed=7,
        **extra,
    )


def recbole_side(config):
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    return dataset, train, valid, test


def rows_by_user(loader_or_dataset, dataset) -> dict[str, list[tuple[list[str], str]]]:
    """RecBole's (prefix, target) rows per user, as tokens."""
    feat = getattr(loader_or_dataset, "_dataset", loader_or_dataset).inter_feat
    users = dataset.field2id_token["user_id"][feat["user_id"].numpy()]
    items = dataset.field2id_token["item_id"]
    out: dict[str, list] = {}
    for u, seq, n, target in zip(
        users, feat["item_id_list"].numpy(), feat["item_length"].numpy(), feat["item_id"].numpy()
    ):
        out.setdefault(str(u), []).append((list(items[seq[:n]]), str(items[target])))
    return out


def fork_rows(evaluator, phase) -> dict[str, tuple[list[str], str, list[str]]]:
    """The fork's (window, target, whole history) per user of a phase, as tokens."""
    ds = evaluator.data.dataset
    items, users = ds.field2id_token["item_id"], ds.field2id_token["user_id"]
    out = {}
    for raw in evaluator.data.eval_loader(phase, 100):
        indptr = raw["hist_indptr"].tolist()
        for b, u in enumerate(raw["user"].tolist()):
            n = int(raw["seq_len"][b])
            window = list(items[raw["item_seq"][b, :n].numpy()])
            hist = list(items[raw["hist_items"][indptr[b] : indptr[b + 1]].numpy()])
            out[str(users[u])] = (window, str(items[int(raw["target"][b])]), hist)
    return out


def make_evaluator(config, dataset, **eval_overrides):
    evaluation = EvalSettings.from_mapping({**config.final_config_dict, **eval_overrides})
    return StockEvaluator(
        config, dataset, evaluation, DataSettings.from_mapping(config), seed=config["seed"]
    )


@pytest.fixture
def hist_data(tmp_path):
    return write_histories(tmp_path / "data")


# ----- the split -------------------------------------------------------------------------


def test_same_split_as_recbole_for_users_of_4_or_more(hist_data):
    """RecBole's LS split and the fork's SeqData agree row for row, ties in file order,
    except for the users with exactly 3 interactions (module doc of stock_eval)."""
    config = stock_config(hist_data, "hist")
    dataset, train, valid, test = recbole_side(config)
    evaluator = make_evaluator(config, dataset)
    assert evaluator.split_differs == 1  # u3

    rb_train, rb_valid, rb_test = (rows_by_user(x, dataset) for x in (train, valid, test))
    fk_valid, fk_test = fork_rows(evaluator, "valid"), fork_rows(evaluator, "test")
    # Ties: u9's first two items (same day) and items 4, 5 keep the file's order.
    assert fk_test["u9"][2] == HISTORIES["u9"][:-1]
    assert rb_test["u9"] == [(HISTORIES["u9"][-6:-1], "i")]  # the last 5 = max_seq_length
    for user, items in HISTORIES.items():
        n = len(items)
        if n >= 3:  # test: the same rows (window = last 5 items before the target)
            assert rb_test[user] == [(fk_test[user][0], fk_test[user][1])]
            assert fk_test[user][1] == items[-1] and fk_test[user][2] == items[:-1]
        if n >= 4:  # valid: the same rows; training: targets 1 .. n-3 on both sides
            assert rb_valid[user] == [(fk_valid[user][0], fk_valid[user][1])]
            assert [t for _, t in rb_train[user]] == items[1 : n - 2]
        if n <= 2:  # training only on both sides
            assert user not in rb_valid and user not in rb_test and user not in fk_test
            assert [t for _, t in rb_train.get(user, [])] == items[1:]
    # The one difference: u3 has no valid row in RecBole and trains on <c> -> d, which is
    # the fork's valid row.
    assert "u3" not in rb_valid and rb_train["u3"] == [(["c"], "d")]
    assert fk_valid["u3"][:2] == (["c"], "d")


# ----- ranks from a score matrix ------------------------------------------------------------


def brute_ranks(scores, targets, history, candidates=None):
    out = []
    n_items = scores.shape[1]
    for u in range(scores.shape[0]):
        t = int(targets[u])
        own = float(scores[u, t])
        pool = range(1, n_items) if candidates is None else candidates
        rank = 0
        for i in pool:
            if i == t or i in history[u]:
                continue
            s = float(scores[u, i])
            if math.isnan(own) or math.isnan(s) or s >= own:
                rank += 1
        out.append(rank)
    return out


def test_score_ranks_equal_a_brute_force_with_ties_nan_history_and_samples():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (7, 15), generator=gen).float()  # many exact ties
    scores[2, 4] = float("nan")
    scores[3, 9] = float("nan")  # user 3's target: ranks last
    targets = torch.tensor([1, 5, 6, 9, 14, 2, 3])
    history = [[2, 3], [], [4, 7, 7], [1, 2], [0, 13], [1, 3], []]  # repeats, padding id
    indptr = torch.tensor(np.cumsum([0] + [len(h) for h in history]))
    items = torch.tensor([i for h in history for i in h])
    got = score_ranks(scores, targets, hist_indptr=indptr, hist_items=items)
    assert got.tolist() == brute_ranks(scores, targets, history)
    assert got[3] == 14 - 1 - 2  # every candidate but the target and its 2 history items
    kept = score_ranks(scores, targets)
    assert kept.tolist() == brute_ranks(scores, targets, [[] for _ in history])
    sampled = score_ranks(
        scores, targets, mode="sampled:6", generator=torch.Generator().manual_seed(3)
    )
    from recbole_fork.evaluation import sample_candidates

    pool = sample_candidates(15, 6, torch.Generator().manual_seed(3)).tolist()
    assert sampled.tolist() == brute_ranks(scores, targets, [[] for _ in history], pool)


def test_score_ranks_agree_with_the_dot_product_ranks():
    """Without ties, a score matrix of dot products ranks like ``target_ranks``."""
    gen = torch.Generator().manual_seed(1)
    users, table = torch.randn(9, 4, generator=gen), torch.randn(20, 4, generator=gen)
    targets = torch.randint(1, 20, (9,), generator=gen)
    indptr = torch.tensor([0, 2, 2, 3, 5, 5, 6, 6, 8, 9])
    items = torch.tensor([3, 4, 5, 1, 2, 7, 8, 9, 19])
    want = target_ranks(users, lambda ids: table[ids], 20, targets, hist_indptr=indptr, hist_items=items)  # fmt: skip
    got = score_ranks(users @ table.T, targets, hist_indptr=indptr, hist_items=items)
    assert got.tolist() == want.tolist()


# ----- a stock model through the evaluator ----------------------------------------------------


def stock_model(config, dataset, train):
    from recbole.utils import get_model

    torch.manual_seed(3)
    model = get_model(config["model"])(config, train._dataset)
    # A few steps so that the scores are not those of a fresh initialisation.
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    for _ in range(3):
        for batch in train:
            opt.zero_grad()
            model.calculate_loss(batch).backward()
            opt.step()
    return model.eval()


def brute_force_metrics(model, loader, dataset, exclude_history: bool, k: int = 3):
    """HR/NDCG/MRR@k from ``full_sort_predict`` on RecBole's own rows, the user's earlier
    items masked (every item before the target in time order, read from the atomic rows)."""
    feat = loader._dataset.inter_feat
    users = dataset.field2id_token["user_id"][feat["user_id"].numpy()]
    item_ids = dataset.field2token_id["item_id"]
    ranks = []
    with torch.no_grad():
        scores = model.full_sort_predict(feat)  # [rows, n_items]
    for r, user in enumerate(users):
        target = int(feat["item_id"][r])
        items = HISTORIES[str(user)]
        position = items.index(dataset.field2id_token["item_id"][target])
        earlier = {item_ids[i] for i in items[:position]} if exclude_history else set()
        ranks.append(brute_ranks(scores[r : r + 1], [target], [earlier])[0])
    return ranking_metrics(torch.tensor(ranks), [k])


@pytest.mark.parametrize(
    ("model", "exclude_history"),
    [("SASRec", True), ("SASRec", False), ("GRU4Rec", True), ("Caser", True)],
)
def test_stock_model_through_the_evaluator_equals_a_brute_force(hist_data, model, exclude_history):
    """Any stock sequential model the scripts accept: SASRec, GRU4Rec, and Caser, which
    also reads the user id."""
    config = stock_config(hist_data, "hist", model=model)
    dataset, train, valid, test = recbole_side(config)
    model = stock_model(config, dataset, train)
    evaluator = make_evaluator(config, dataset, exclude_history=exclude_history)
    got = evaluator.evaluate(model, "test")
    want = brute_force_metrics(model, test, dataset, exclude_history)
    assert got["count"] == want["count"] == 5  # users with >= 3 interactions
    for key in ("hr@3", "ndcg@3", "mrr@3"):
        assert got[key] == pytest.approx(want[key] / want["count"], abs=1e-12)


def test_history_kept_equals_recbole_own_evaluation(tmp_path):
    """``exclude_history: false`` gives RecBole's own figures for the same weights, on
    valid and test (a dataset without 3-interaction users, where the splits agree)."""
    from recbole_fork.stock_trainer import StockTrainer

    root = write_atomic_dataset(tmp_path / "data", name="tiny", n_users=25, n_items=30, per_user=7)
    config = stock_config(root, "tiny", checkpoint_dir=str(tmp_path / "saved"))
    dataset, train, valid, test = recbole_side(config)
    model = stock_model(config, dataset, train)
    trainer = StockTrainer(config, model, tmp_path / "stock.pth")
    evaluator = make_evaluator(config, dataset, exclude_history=False)
    for phase, loader in (("valid", valid), ("test", test)):
        theirs = trainer.evaluate(loader, load_best_model=False)
        ours = evaluator.evaluate(model, phase)
        assert ours["count"] == 25
        assert ours["hr@3"] == pytest.approx(theirs["hit@3"], abs=1e-9)
        assert ours["ndcg@3"] == pytest.approx(theirs["ndcg@3"], abs=1e-9)
        assert ours["mrr@3"] == pytest.approx(theirs["mrr@3"], abs=1e-9)
    # And excluding history changes the figures here (the history holds 5-6 of 30 items).
    excluded = make_evaluator(config, dataset).evaluate(model, "test")
    assert excluded["hr@3"] >= ours["hr@3"] and excluded != ours


def test_eval_protocol_names():
    ev = EvalSettings.from_mapping(run_config(model="SASRec", dataset="x").final_config_dict)
    assert eval_protocol(ev) == "full, history excluded"
    assert eval_protocol(ev, "recbole") == "recbole full-sort (history kept)"
    kept = EvalSettings.from_mapping({**ev.__dict__, "exclude_history": False, "eval_mode": "sampled:50"})  # fmt: skip
    assert eval_protocol(kept) == "sampled50 (not comparable with full), history kept"
