"""The global temporal split: exactly which interactions land where, ties at a cut included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recbole_fork.data import DataError, build_seq_data
from recbole_fork.data.split import SplitSettings, leave_one_out, resolve_cut
from recbole_fork.settings import ConfigError
from tests.conftest import run_config

# Cuts at 30 and 40 (seconds). Times keep their milliseconds.
ROWS = [
    ("u1", "a", "10"),
    ("u1", "b", "20"),
    ("u1", "c", "30"),  # exactly at the valid cut: the valid period, u1's valid target
    ("u1", "d", "35"),  # valid period, not a target (only the first one is)
    ("u1", "e", "40"),  # exactly at the test cut: u1's test target, history a b c d
    ("u1", "f", "50"),  # after the test target: never used
    ("u2", "a", "5"),
    ("u2", "b", "45"),  # nothing in the valid period: no valid target; test target b
    ("u3", "c", "31"),  # a valid-period first interaction without any history: not evaluated
    ("u3", "d", "32"),
    ("u4", "a", "1"),
    ("u4", "b", "2"),  # training only
    ("u5", "a", "29.999"),  # training (before 30 by a millisecond)
    ("u5", "b", "30.001"),  # valid target
    ("u5", "c", "39.999"),  # valid period
    ("u5", "d", "40.000"),  # test target (at the cut)
]


def _write(root: Path) -> Path:
    folder = root / "tiny"
    folder.mkdir(parents=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    lines += ["\t".join(r) for r in ROWS]
    (folder / "tiny.inter").write_text("\n".join(lines) + "\n")
    return root


def _data(root: Path, **split):
    config = run_config(
        root,
        model="SASRecX",
        dataset="tiny",
        max_seq_length=10,
        eval_by_length=False,
        trim_padding=False,
        split={"type": "time", **split},
    )
    return build_seq_data(config)


def _token(data, field: str, ids) -> list[str]:
    return [str(data.dataset.field2id_token[field][i]) for i in ids]


def _phase(data, phase: str) -> dict[str, tuple[str, list[str]]]:
    """user -> (target item, history items), for every user of the phase."""
    out = {}
    for batch in data.eval_loader(phase, 64):
        indptr = batch["hist_indptr"].numpy()
        hist = batch["hist_items"].numpy()
        for b, (user, target) in enumerate(zip(batch["user"].tolist(), batch["target"].tolist())):
            name = _token(data, "user_id", [user])[0]
            out[name] = (
                _token(data, "item_id", [target])[0],
                _token(data, "item_id", hist[indptr[b] : indptr[b + 1]]),
            )
    return out


def test_time_split_targets_histories_and_ties(tmp_path):
    data = _data(_write(tmp_path), valid_cut=30, test_cut=40)
    assert _phase(data, "valid") == {"u1": ("c", ["a", "b"]), "u5": ("b", ["a"])}
    assert _phase(data, "test") == {
        "u1": ("e", ["a", "b", "c", "d"]),
        "u2": ("b", ["a"]),
        "u5": ("d", ["a", "b", "c"]),
    }
    # Training holds exactly the interactions before the valid cut.
    names = {u: _token(data, "user_id", [u])[0] for u in range(1, data.n_users)}
    train_len = {names[u]: int(data.split.train_len[u]) for u in names}
    assert train_len == {"u1": 2, "u2": 1, "u3": 0, "u4": 2, "u5": 1}
    assert data.num_train_interactions() == 6
    seen = set()
    for batch in data.train_loader(64, 0):
        for row_items, row_targets in zip(batch["item_seq"].tolist(), batch["target"].tolist()):
            seen |= {i for i in row_items + row_targets if i}
    counts = data.item_counts
    assert int(counts.sum()) == 6 and counts[0] == 0
    # Training windows only use training interactions: a, b (u1); a, b (u4).
    assert sorted(_token(data, "item_id", sorted(seen))) == ["a", "b"]
    assert data.n_short_users == 2  # u3 and u4 are evaluated on no phase


def test_fraction_cuts_are_quantiles_of_all_interactions(tmp_path):
    times = np.array([float(t) for _, _, t in ROWS])
    ordered = np.sort(times)
    assert resolve_cut(0.5, times) == ordered[8]  # floor(0.5 * 16)
    assert resolve_cut(0.25, times) == ordered[4]
    assert resolve_cut(1712345678.5, times) == 1712345678.5  # a timestamp stays as it is
    data = _data(_write(tmp_path), valid_cut=0.5, test_cut=0.75)
    assert data.split.cuts == (ordered[8], ordered[12])


def test_leave_one_out_is_the_default_split():
    split = leave_one_out(np.array([0, 5, 2, 3]))
    assert split.train_len.tolist() == [0, 3, 2, 1]
    assert split.valid_users.tolist() == [1, 3] and split.valid_pos.tolist() == [3, 1]
    assert split.test_users.tolist() == [1, 3] and split.test_pos.tolist() == [4, 2]


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ({"type": "time"}, "needs split.valid_cut and split.test_cut"),
        ({"type": "time", "valid_cut": 40, "test_cut": 30}, "is after split.test_cut"),
        ({"type": "time", "valid_cut": 0.5, "test_cut": 30}, "both as fractions"),
        ({"type": "random"}, "unknown split.type 'random'"),
    ],
)
def test_bad_split_settings(split, message):
    with pytest.raises(ConfigError, match=message):
        SplitSettings.from_mapping(
            {"valid_cut": None, "test_cut": None, "targets": "first", **split}
        )


def test_cuts_that_leave_no_user_to_evaluate(tmp_path):
    with pytest.raises(DataError, match="the time split at .* leaves 0 valid"):
        _data(_write(tmp_path), valid_cut=100, test_cut=200)


# ----- the official Amazon Reviews 2023 splits, read back row for row -------------------------


@pytest.mark.parametrize("split", ["last_out", "timestamp"])
def test_official_2023_split_files_are_reproduced_row_for_row(tmp_path, split):
    """The release's split files (handwritten in its format: tests/etl/test_amazon2023.py)
    through the ETL into one atomic dataset, then the fork's split: ``last_out`` is
    leave-one-out, ``timestamp`` the time split at the release's cuts with every row of a
    period a target. Training holds exactly the train file's rows; the targets are exactly
    the valid and test files' rows that have an earlier row of their user (a lone first row
    cannot be scored by a sequential model)."""
    from etl.amazon2023 import find_benchmark_sets
    from etl.official_splits import build_benchmark_datasets
    from tests.etl.test_amazon2023 import (
        LAST_OUT,
        QUIET,
        ROWS,
        TEST_CUT_MS,
        TIMESTAMP,
        VALID_CUT_MS,
        write_items,
        write_official,
    )

    raw, out = tmp_path / "raw", tmp_path / "data"
    write_official(raw, split, history=True)
    build_benchmark_datasets(
        find_benchmark_sets(raw),
        write_items(tmp_path / "items.parquet"),
        out,
        tmp_path / "work",
        engine=QUIET,
    )
    name = f"amazon2023-Toy-5core-{split}"
    if split == "last_out":
        split_cfg, rule = {"type": "leave_one_out"}, LAST_OUT
    else:
        split_cfg = {
            "type": "time",
            "valid_cut": VALID_CUT_MS / 1000,
            "test_cut": TEST_CUT_MS / 1000,
            "targets": "all",
        }
        rule = TIMESTAMP
    config = run_config(
        out, model="SASRecX", dataset=name, max_seq_length=10, split=split_cfg,
        eval_by_length=False, trim_padding=False,
    )  # fmt: skip
    data = build_seq_data(config)
    ds = data.dataset
    users, items = ds.field2id_token[ds.uid_field], ds.field2id_token[ds.iid_field]
    flat_user = np.repeat(np.arange(data.n_users), np.diff(ds.hist_offsets))
    rows = list(zip(users[flat_user], items[ds.hist_items], strict=True))  # the atomic rows

    def official(part: str, scored_only: bool) -> list[tuple[str, str]]:
        out_rows = [(ROWS[i][0], ROWS[i][1]) for i in rule[part]]
        if scored_only:  # rows with an earlier row of their user
            out_rows = [r for r, i in zip(out_rows, rule[part]) if ROWS[i][0] in
                        {ROWS[j][0] for j in range(i)}]  # fmt: skip
        return sorted(out_rows)

    train = [
        rows[ds.hist_offsets[u] + p]
        for u in range(1, data.n_users)
        for p in range(int(data.split.train_len[u]))
    ]
    want_train = official("train", False)
    if split == "last_out":
        # A user with fewer than 3 rows (AE3 here; the 5-core files have none, the 0-core
        # ones may) is training data under leave-one-out, where the release tests its row.
        want_train = sorted([*want_train, ("AE3", "B07")])
    assert sorted((str(a), str(b)) for a, b in train) == want_train
    for phase in ("valid", "test"):
        targets = []
        for batch in data.eval_loader(phase, 64):
            for user, target in zip(batch["user"].tolist(), batch["target"].tolist()):
                targets.append((str(users[user]), str(items[target])))
        assert sorted(targets) == official(phase, True), phase
