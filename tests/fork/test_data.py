"""Sequential data: windows, leave-one-out split and loaders on a handwritten dataset."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

import recbole_fork  # noqa: F401  (applies the RecBole compatibility fixes)
from recbole_fork.data import DataError, build_seq_data
from recbole_fork.data.windows import gather_windows, sample_slices, samples_per_user
from recbole_fork.settings import ConfigError
from tests.conftest import run_config

# Five users; internal ids follow first appearance: users u1..u5 -> 1..5, items a..g -> 1..7,
# and z (only in the .item file) -> 8.
#   u1: a b c d e f g   (b and c tie at t=20 and keep file order)  train a..e, valid f, test g
#   u2: a b c           (written out of time order)                 train a,    valid b, test c
#   u3: a d             (2 interactions: training only)
#   u4: e a b c d                                                   train e a b, valid c, test d
#   u5: b c d e f g                                                 train b..e, valid f, test g
INTER = """user_id:token\titem_id:token\trating:float\ttimestamp:float
u1\ta\t5\t10
u1\tb\t5\t20
u1\tc\t5\t20
u1\td\t5\t30
u1\te\t5\t40
u1\tf\t5\t50
u1\tg\t5\t60
u2\tb\t5\t5
u2\ta\t5\t3
u2\tc\t5\t7
u3\ta\t5\t1
u3\td\t5\t2
u4\te\t5\t1
u4\ta\t5\t2
u4\tb\t5\t3
u4\tc\t5\t4
u4\td\t5\t5
u5\tb\t5\t1
u5\tc\t5\t2
u5\td\t5\t3
u5\te\t5\t4
u5\tf\t5\t5
u5\tg\t5\t6
"""
ITEM = """item_id:token\tbrand:token\ttitle:token_seq
a\tacme\tred shoe
b\tzeta\tblue hat red
c\t\t
z\tacme\tshoe
"""


def write_dataset(root, name="tiny", inter=INTER, item=ITEM):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / f"{name}.inter").write_text(inter, encoding="utf-8")
    if item is not None:
        (folder / f"{name}.item").write_text(item, encoding="utf-8")
    return root


def make(tmp_path, item=ITEM, **over):
    cfg = {
        "model": "SASRecX",
        "dataset": "tiny",
        "load_col": {"inter": ["user_id", "item_id"], "item": ["item_id", "brand", "title"]},
        "max_seq_length": 3,
        "seed": 7,
        # RecBole drops interactions of items missing from the .item file unless told not to.
        "filter_inter_by_user_or_item": False,
        # The layouts below are pinned at full width in user order; trimming and length
        # ordering have their own tests at the end.
        "trim_padding": False,
        "eval_by_length": False,
    }
    cfg.update(over)
    return build_seq_data(run_config(write_dataset(tmp_path, item=item), **cfg))


def all_batches(loader):
    batches = list(loader)
    return {k: np.concatenate([b[k].numpy() for b in batches]) for k in batches[0]}


def rows(batch, keys=("user", "item_seq", "target")):
    """Sorted list of (user, item_seq, target) tuples, for order-free comparison."""
    out = []
    for i in range(len(batch["user"])):
        out.append(tuple(tuple(np.atleast_1d(batch[k][i]).tolist()) for k in keys))
    return sorted(out)


# ----- windows: pure arithmetic ---------------------------------------------------------


def test_samples_per_user_edges():
    m = np.array([0, 1, 2, 5, 6, 7, 12, 16])
    # L = 5: up to 6 items make one window; 7 items -> 2; 12 -> 1 + ceil(6 / 5) = 3; 16 -> 3.
    assert samples_per_user(m, 5, 5, "all_positions").tolist() == [0, 0, 1, 1, 1, 2, 3, 3]
    assert samples_per_user(m, 5, 2, "all_positions").tolist() == [0, 0, 1, 1, 1, 2, 4, 6]
    assert samples_per_user(m, 5, 5, "last_position").tolist() == [0, 0, 1, 4, 5, 6, 11, 15]


def test_long_history_windows_with_stride_end_at_last_item():
    items = np.arange(1, 13, dtype=np.int64)  # one user, 12 training items 1..12
    times = items * 100
    L = 5
    n = samples_per_user(np.array([12]), L, 5, "all_positions")[0]
    start, length = sample_slices(
        np.zeros(n, np.int64), np.full(n, 12), np.arange(n), L, 5, "all_positions"
    )
    assert start.tolist() == [6, 1, 0] and length.tolist() == [6, 6, 2]
    b = gather_windows(items, times, start, length, L, last_only=False)
    assert b["item_seq"].tolist() == [[7, 8, 9, 10, 11], [2, 3, 4, 5, 6], [1, 0, 0, 0, 0]]
    assert b["target"].tolist() == [[8, 9, 10, 11, 12], [3, 4, 5, 6, 7], [2, 0, 0, 0, 0]]
    assert b["time_seq"][2].tolist() == [100, 0, 0, 0, 0]
    # Every transition t -> t + 1 is supervised exactly once with stride = L.
    assert sorted(b["target"][b["target"] > 0].tolist()) == list(range(2, 13))
    # Stride 2: windows end at 12, 10, 8, 6 (the last clipped at the history's start).
    start, length = sample_slices(
        np.zeros(4, np.int64), np.full(4, 12), np.arange(4), L, 2, "all_positions"
    )
    assert (start + length).tolist() == [12, 10, 8, 6] and start.tolist() == [6, 4, 2, 0]


# ----- leave-one-out split and loaders on atomic files ------------------------------------


def test_split_counts_and_item_features(tmp_path):
    d = make(tmp_path)
    assert (d.n_users, d.n_items) == (6, 9)  # padding included; z comes from the .item file
    assert d.dataset.field2id_token["item_id"].tolist() == list(
        ["[PAD]", "a", "b", "c", "d", "e", "f", "g", "z"]
    )
    assert d.dataset.inter_feat is None and d.dataset.inter_num == 23
    assert d.n_short_users == 1
    assert d.num_train_interactions() == 5 + 1 + 2 + 3 + 4
    assert d.item_counts.tolist() == [0, 4, 3, 2, 3, 3, 0, 0, 0]
    # RecBole's item features come as an Interaction indexed by item id (0 = missing).
    assert d.dataset.item_feat["brand"].tolist() == [0, 1, 2, 0, 0, 0, 0, 0, 1]
    # token_seq: pieces numbered by first appearance (red 1, shoe 2, blue 3, hat 4), padded.
    assert d.dataset.field2id_token["title"].tolist() == ["[PAD]", "red", "shoe", "blue", "hat"]
    title = d.dataset.item_feat["title"].tolist()
    assert title[1] == [1, 2, 0] and title[2] == [3, 4, 1] and title[3] == [0, 0, 0]
    assert title[8] == [2, 0, 0]
    assert d.dataset.token2id("item_id", "c") == 3
    assert d.dataset.token2id("item_id", ["z", "[PAD]"]).tolist() == [8, 0]
    assert d.dataset.id2token("user_id", 4) == "u4"
    with pytest.raises(KeyError):
        d.dataset.field2token_id["item_id"]["nope"]
    assert d.eval_users("valid").tolist() == [1, 2, 4, 5]


def test_remap_numbers_tokens_as_recbole(tmp_path):
    from recbole.data.dataset import Dataset

    d = make(tmp_path)
    stock = Dataset(d.dataset.config)  # RecBole's own loading, same resolved settings
    for field in ("user_id", "item_id", "brand", "title"):
        assert d.dataset.field2id_token[field].tolist() == stock.field2id_token[field].tolist()
    stock_pairs = sorted(
        zip(stock.inter_feat["user_id"].tolist(), stock.inter_feat["item_id"].tolist())
    )
    users = np.repeat(np.arange(d.n_users), np.diff(d.dataset.hist_offsets))
    assert sorted(zip(users.tolist(), d.dataset.hist_items.tolist())) == stock_pairs


def test_build_from_recbole_config(tmp_path):
    """The run's resolved Config path; load_col without the time field still loads it."""
    from recbole_fork.config import build_config

    root = write_dataset(tmp_path, item=None)
    cfg = build_config(
        {
            "model": "SASRec",
            "dataset": "tiny",
            "data_path": str(root),
            "max_seq_length": 3,
            "load_col": {"inter": ["user_id", "item_id"]},
            "eval_by_length": False,
        }
    )
    d = build_seq_data(cfg)
    valid = next(iter(d.eval_loader("valid", 8)))
    assert valid["user"].tolist() == [1, 2, 4, 5] and valid["target_time"].tolist() == [50, 5, 4, 5]
    assert d.train_window_stride == 3 and d.train_mode == "all_positions"


def test_all_positions_windows(tmp_path):
    d = make(tmp_path)
    batch = all_batches(d.train_loader(batch_size=3, epoch=0))
    assert d.num_train_batches(3) == 2
    assert rows(batch) == sorted(
        [
            ((1,), (2, 3, 4), (3, 4, 5)),  # u1 train a..e (b, c tie kept in file order)
            ((1,), (1, 0, 0), (2, 0, 0)),  # the earlier window, clipped at the start
            ((3,), (1, 0, 0), (4, 0, 0)),  # u3: 2 interactions, all training
            ((4,), (5, 1, 0), (1, 2, 0)),  # u4: shorter than L, right-padded
            ((5,), (2, 3, 4), (3, 4, 5)),  # u5: exactly L + 1 training items
        ]
    )
    by_user = {int(u): t for u, t in zip(batch["user"], batch["time_seq"])}
    assert by_user[4].tolist() == [1, 2, 0]
    for key in ("item_seq", "time_seq", "target", "user"):
        assert batch[key].dtype == np.int64


def test_stride_one_adds_overlapping_windows(tmp_path):
    d = make(tmp_path, train_window_stride=1)
    u1 = [r for r in rows(all_batches(d.train_loader(8, 0))) if r[0] == (1,)]
    assert u1 == [((1,), (1, 2, 3), (2, 3, 4)), ((1,), (2, 3, 4), (3, 4, 5))]


def test_last_position_prefixes(tmp_path):
    d = make(tmp_path, train_mode="last_position")
    batch = all_batches(d.train_loader(4, 0))
    # One sample per prefix: sum over users of (training items - 1) = 4 + 0 + 1 + 2 + 3.
    assert len(batch["user"]) == 10 == d.num_train_batches(1)
    u1 = [r for r in rows(batch) if r[0] == (1,)]
    assert u1 == sorted(
        [
            ((1,), (1, 0, 0), (2, 0, 0)),
            ((1,), (1, 2, 0), (0, 3, 0)),
            ((1,), (1, 2, 3), (0, 0, 4)),
            ((1,), (2, 3, 4), (0, 0, 5)),  # only the last L items before the target
        ]
    )
    assert ((batch["target"] > 0).sum(1) == 1).all()


def test_eval_batches(tmp_path):
    d = make(tmp_path)
    valid = next(iter(d.eval_loader("valid", batch_size=10)))
    assert valid["user"].tolist() == [1, 2, 4, 5]
    assert valid["item_seq"].tolist() == [[3, 4, 5], [1, 0, 0], [5, 1, 2], [3, 4, 5]]
    assert valid["seq_len"].tolist() == [3, 1, 3, 3]
    assert valid["target"].tolist() == [6, 2, 3, 6]
    assert valid["target_time"].tolist() == [50, 5, 4, 5]
    assert valid["hist_indptr"].tolist() == [0, 5, 6, 9, 13]
    assert valid["hist_items"].tolist() == [1, 2, 3, 4, 5, 1, 5, 1, 2, 2, 3, 4, 5]
    test = next(iter(d.eval_loader("test", batch_size=2)))  # first batch only: u1, u2
    assert test["item_seq"].tolist() == [[4, 5, 6], [1, 2, 0]]
    assert test["target"].tolist() == [7, 3] and test["seq_len"].tolist() == [3, 2]
    assert test["hist_indptr"].tolist() == [0, 6, 8]
    assert test["hist_items"].tolist() == [1, 2, 3, 4, 5, 6, 1, 2]
    # train phase: as many users as the valid set (4) among those with 2+ training items.
    train = all_batches(d.eval_loader("train", batch_size=3))
    assert train["user"].tolist() == [1, 3, 4, 5]
    assert train["target"].tolist() == [5, 4, 2, 5]
    assert train["item_seq"][0].tolist() == [2, 3, 4] and train["seq_len"].tolist() == [3, 1, 2, 3]
    with pytest.raises(ValueError, match="phase='dev' is not one of"):
        d.eval_loader("dev", 4)


def test_eval_max_users_scores_a_fixed_sample_whatever_the_seed(tmp_path):
    """eval_max_users=2 of the 4 valid/test users: the same 2 in valid and test, the same for
    every seed (drawn from the user count alone), the train phase as many; None = all."""
    from tests.conftest import write_atomic_dataset

    root = write_atomic_dataset(tmp_path, n_users=30)

    def users(phase, **over):
        cfg = {"model": "SASRecX", "dataset": "tiny", "max_seq_length": 3, **over}
        d = build_seq_data(run_config(root, **cfg))
        return all_batches(d.eval_loader(phase, batch_size=7))["user"].tolist()

    full = users("test", seed=1)
    assert len(full) == 30
    valid = users("valid", seed=1, eval_max_users=8)
    test = users("test", seed=1, eval_max_users=8)
    assert len(test) == 8 and sorted(valid) == sorted(test) and set(test) < set(full)
    assert users("test", seed=2, eval_max_users=8) == test  # not from the run's seed
    expected = np.sort(np.random.default_rng([0xE7A1, 30]).choice(30, 8, replace=False)) + 1
    assert sorted(test) == expected.tolist()
    assert len(users("train", seed=1, eval_max_users=8)) == 8
    assert len(users("test", seed=1, eval_max_users=30)) == 30
    with pytest.raises(ConfigError, match="eval_max_users"):
        users("test", eval_max_users=0)


def test_shuffle_is_seeded_by_epoch(tmp_path):
    d = make(tmp_path, train_mode="last_position")
    first = [b["user"].tolist() for b in d.train_loader(1, epoch=3)]
    again = [b["user"].tolist() for b in d.train_loader(1, epoch=3)]
    other = [b["user"].tolist() for b in d.train_loader(1, epoch=4)]
    assert first == again and first != other
    assert sorted(first) == sorted(other)


def test_shards_split_users_and_run_equal_steps(tmp_path):
    d = make(tmp_path)
    # rank 0: users 2, 4 -> 1 sample; rank 1: users 1, 3, 5 -> 4 samples; both run 1.
    r0 = all_batches(d.train_loader(2, 0, rank=0, world_size=2))
    r1 = all_batches(d.train_loader(2, 0, rank=1, world_size=2))
    assert r0["user"].tolist() == [4] and len(r1["user"]) == 1 and r1["user"][0] in (1, 3, 5)
    assert d.num_train_batches(1, rank=1, world_size=2) == 1
    v0 = next(iter(d.eval_loader("valid", 8, rank=0, world_size=2)))
    assert v0["user"].tolist() == [2, 4]
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        d.train_loader(2, 0, rank=2, world_size=2)


def test_bad_settings_and_empty_dataset(tmp_path):
    with pytest.raises(ConfigError, match="unknown train_mode 'every'"):
        make(tmp_path / "a", train_mode="every")
    with pytest.raises(ConfigError, match="train_window_stride=4"):
        make(tmp_path / "b", train_window_stride=4)
    short = "user_id:token\titem_id:token\ttimestamp:float\nu1\ta\t1\nu1\tb\t2\nu2\ta\t1\n"
    root = write_dataset(tmp_path / "c", name="short", inter=short, item=None)
    with pytest.raises(DataError, match="dataset 'short': no user has the 3 interactions"):
        build_seq_data(run_config(root, model="SASRecX", dataset="short", max_seq_length=3))
    with pytest.raises(DataError, match="dataset 'nope'.*not found"):
        build_seq_data(run_config(tmp_path, model="SASRecX", dataset="nope"))


def test_times_stay_in_seconds_when_float_fields_are_normalised(tmp_path):
    """normalize_all (RecBole's ml-100k properties set it) scales other float fields, never
    the time field: HSTU's time bias and split: time need the file's seconds."""
    item = "item_id:token\tprice:float\na\t10\nb\t30\nc\t20\n"
    load_col = {"inter": ["user_id", "item_id"], "item": ["item_id", "price"]}
    d = make(tmp_path / "a", item=item, load_col=load_col, normalize_all=True)
    assert d.dataset.hist_seconds[:7].tolist() == [10, 20, 20, 30, 40, 50, 60]  # u1 as written
    assert d.dataset.item_feat["price"][1:4].tolist() == [0.0, 1.0, 0.5]  # min-max: a b c
    assert d.dataset.config["normalize_all"] is True  # the run's settings are left as given
    with pytest.raises(ConfigError, match="normalize_field lists the time field 'timestamp'"):
        make(tmp_path / "b", item=item, load_col=load_col, normalize_field=["timestamp"])


def test_bundled_ml100k_keeps_unix_seconds(tmp_path):
    """RecBole's bundled ml-100k: its properties normalise every float field, yet the
    histories hold the file's unix seconds (Sept 1997 to April 1998)."""
    from benchmarks.ml100k import ml100k_data_path

    d = build_seq_data(
        run_config(ml100k_data_path(), model="HSTU", dataset="ml-100k", max_seq_length=50)
    )
    seconds = d.dataset.hist_seconds
    assert d.dataset.config["normalize_all"] is True
    assert 874_700_000 < seconds.min() < seconds.max() < 893_300_000


def test_real_beauty_5core(shared_data, tmp_path):
    """The standard Beauty 5-core (22,363 users, 12,101 items, 198,502 interactions)."""
    ref = shared_data / "seqrec_reference"
    with gzip.open(ref / "Beauty.txt.gz", "rt") as f:
        seqs = f.read().split("\n")
    with gzip.open(ref / "Beauty_time.txt.gz", "rt") as f:
        times = f.read().split("\n")
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for s, t in zip(filter(None, seqs), filter(None, times)):
        user, *items = s.split()
        _, *ts = t.split()
        lines += [f"{user}\t{i}\t{x}" for i, x in zip(items, ts)]
    folder = tmp_path / "beauty"
    folder.mkdir()
    (folder / "beauty.inter").write_text("\n".join(lines) + "\n")
    d = build_seq_data(run_config(tmp_path, model="SASRecX", dataset="beauty", max_seq_length=50))
    assert (d.n_users, d.n_items, d.dataset.inter_num) == (22364, 12102, 198502)
    assert d.n_short_users == 0 and len(d.eval_users("valid")) == 22363
    assert d.num_train_interactions() == 198502 - 2 * 22363
    assert int(d.item_counts.sum()) == d.num_train_interactions()
    # Every training transition is supervised exactly once per epoch (stride = L).
    n_targets = sum(int((b["target"] > 0).sum()) for b in d.train_loader(4096, 0))
    assert n_targets == d.num_train_interactions() - 22363


def _samples(loader):
    """Every (user, inputs, targets) row of an epoch, padding stripped (batches differ in width)."""
    out = []
    for b in loader:
        for u, s, t in zip(b["user"].tolist(), b["item_seq"].tolist(), b["target"].tolist()):
            n = sum(1 for x in s if x > 0)
            out.append((u, tuple(s[:n]), tuple(t[:n])))
    return sorted(out)


def test_trim_padding_cuts_to_the_longest_real_row(tmp_path):
    d = make(tmp_path, trim_padding=True, train_mode="last_position")
    widths = {}
    for b in d.train_loader(1, 0):
        n = int((b["item_seq"] > 0).sum())
        assert b["item_seq"].shape == b["time_seq"].shape == b["target"].shape == (1, n)
        widths[n] = widths.get(n, 0) + 1
    # last_position prefixes: 1, 2, 3, 3 inputs for u1; 1 for u3; 1, 2 for u4; 1, 2, 3 for u5.
    assert widths == {1: 4, 2: 3, 3: 3}
    full = make(tmp_path / "full", train_mode="last_position")
    assert _samples(d.train_loader(1, 0)) == _samples(full.train_loader(1, 0))
    valid = next(iter(d.eval_loader("valid", 10)))
    assert valid["item_seq"].shape == (4, 3) and valid["hist_items"].shape == (13,)


def test_bucketed_batches_keep_every_sample_once_and_weight_positions(tmp_path):
    plain = make(tmp_path / "p", train_mode="last_position", trim_padding=True)
    d = make(tmp_path / "b", train_mode="last_position", trim_padding=True, train_bucket_batches=2)
    # The same samples each epoch, in batches of similar length.
    assert _samples(d.train_loader(2, 5)) == _samples(plain.train_loader(2, 5))
    batches = list(d.train_loader(2, 5))
    assert [len(b["user"]) for b in batches].count(2) == 5  # 10 samples, batch size 2
    again = [b["user"].tolist() for b in d.train_loader(2, 5)]
    assert again == [b["user"].tolist() for b in batches]  # seeded by (seed, epoch, rank)
    # last_position: one supervised position per sample, so each full batch weighs 1.
    assert [float(b["loss_scale"]) for b in batches] == [1.0] * 5
    assert "loss_scale" not in next(iter(plain.train_loader(2, 5)))

    # all_positions: windows of 1..3 inputs; the weights are positions / mean positions, so
    # the mean of the weighted batch means is the mean over every position of the epoch.
    a = make(tmp_path / "a", trim_padding=True, train_bucket_batches=4)
    batches = list(a.train_loader(2, 0))
    positions = [int((b["target"] > 0).sum()) for b in batches]
    mean = sum(positions) / len(positions)
    assert [float(b["loss_scale"]) for b in batches] == pytest.approx([p / mean for p in positions])
    # Sorted by length inside the bucket of 4 batches (5 samples: one bucket here).
    lengths = [int((b["item_seq"] > 0).sum(1).max()) for b in batches]
    assert sorted(lengths) == [1, 3, 3]
    with pytest.raises(ConfigError, match="train_bucket_batches=-1"):
        make(tmp_path / "bad", train_bucket_batches=-1)


def test_eval_by_length_orders_users_by_input_length(tmp_path):
    d = make(tmp_path, eval_by_length=True, trim_padding=True)
    batches = list(d.eval_loader("valid", 1))
    # valid input lengths (L = 3): u1 3, u2 1, u4 3, u5 3 -> u2 first, ties by user id.
    assert [b["user"].tolist() for b in batches] == [[2], [1], [4], [5]]
    assert batches[0]["item_seq"].tolist() == [[1]] and batches[0]["target"].tolist() == [2]
    assert [b["hist_indptr"].tolist() for b in batches] == [[0, 1], [0, 5], [0, 3], [0, 4]]
