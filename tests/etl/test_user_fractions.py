"""Nested user fractions of a built dataset (etl/user_fractions.py): who is chosen, what is
written, nesting, determinism and the errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest

from etl.errors import EtlError
from etl.hashing import sample_keys
from etl.user_fractions import fraction_name, main, user_order, write_user_fractions

HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
ITEM = "item_id:token\ttitle:token_seq\tbrand:token_seq\nI1\t▁a\t\nI2\t▁b\t\nI3\t\t▁c\nI9\t\t\n"


def _dataset(tmp_path, n_users: int = 20):
    """A dataset of `n_users` users U00..U19; user k has k % 4 + 3 interactions."""
    folder = tmp_path / "ds"
    folder.mkdir()
    lines = []
    for u in range(n_users):
        for j in range((u % 4) + 3):
            lines.append(f"U{u:02d}\tI{(u + j) % 3 + 1}\t5\t{1000 + j}\n")
    (folder / "ds.inter").write_text(HEADER + "".join(lines))
    (folder / "ds.item").write_text(ITEM)
    return tmp_path, lines


def _users(path) -> list[str]:
    return [line.split("\t")[0] for line in path.read_text().splitlines()[1:]]


def test_user_order_is_the_seeded_key_then_the_id():
    users = pa.array(["b", "a", "c", "a", "d"])
    keys = dict(zip(["a", "b", "c", "d"], sample_keys(pa.array(["a", "b", "c", "d"]), 7).tolist()))
    expected = sorted(keys, key=lambda u: (keys[u], u))
    assert user_order(users, 7).to_pylist() == expected
    assert user_order(users, 8).to_pylist() != expected or len(expected) < 3


def test_fractions_are_nested_whole_users_with_the_source_lines_and_catalog(tmp_path):
    data, lines = _dataset(tmp_path)
    summary = write_user_fractions(data, "ds", [50, 25], seed=3)
    assert [s["dataset"] for s in summary] == ["ds-25pct", "ds-50pct"]
    assert [s["users"] for s in summary] == [5, 10]  # ceil(20 * p / 100)
    order = user_order(pa.array([f"U{u:02d}" for u in range(20)]), 3).to_pylist()
    chosen = {}
    for p, n in ((25, 5), (50, 10)):
        name = fraction_name("ds", p)
        inter = data / name / f"{name}.inter"
        text = inter.read_text()
        assert text.startswith(HEADER)
        # Exactly the chosen users' lines, byte for byte, in the source order.
        expected = [line for line in lines if line.split("\t")[0] in set(order[:n])]
        assert text == HEADER + "".join(expected)
        assert (data / name / f"{name}.item").read_text() == ITEM  # the whole catalog
        chosen[p] = set(_users(inter))
        assert chosen[p] == set(order[:n])
        assert summary[p // 50]["interactions"] == len(expected)
        assert summary[p // 50]["items"] == len({line.split("\t")[1] for line in expected})
    assert chosen[25] < chosen[50]


def test_same_seed_same_bytes_other_seed_other_users(tmp_path):
    data, _ = _dataset(tmp_path, n_users=40)
    write_user_fractions(data, "ds", [25], seed=1)
    first = (data / "ds-25pct" / "ds-25pct.inter").read_bytes()
    write_user_fractions(data, "ds", [25], seed=1)
    assert (data / "ds-25pct" / "ds-25pct.inter").read_bytes() == first
    write_user_fractions(data, "ds", [25], seed=2)
    assert (data / "ds-25pct" / "ds-25pct.inter").read_bytes() != first
    assert not list(data.glob(".ds-25pct*"))  # no staging leftovers


def test_fraction_sizes_round_up(tmp_path):
    data, _ = _dataset(tmp_path, n_users=7)
    summary = write_user_fractions(data, "ds", [10, 50, 99], seed=0)
    assert [s["users"] for s in summary] == [math.ceil(7 * p / 100) for p in (10, 50, 99)]


@pytest.mark.parametrize("percents", [[0], [100], [], [25, 150]])
def test_bad_percents_are_user_errors(tmp_path, percents):
    data, _ = _dataset(tmp_path)
    with pytest.raises(EtlError, match="whole numbers from 1 to 99"):
        write_user_fractions(data, "ds", percents)


def test_missing_dataset_names_the_file(tmp_path):
    with pytest.raises(EtlError, match=r"nope\.inter not found; build nope first"):
        write_user_fractions(tmp_path, "nope", [25])


def test_command_line_prints_counts_and_errors_in_one_line(tmp_path, capsys):
    data, _ = _dataset(tmp_path)
    assert main(["--data-path", str(data), "--dataset", "ds", "--percents", "25,50"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["users"] for o in out] == [5, 10]
    assert main(["--data-path", str(data), "--dataset", "zz", "--percents", "25"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "zz.inter not found" in err[0]
    with pytest.raises(SystemExit):
        main(["--data-path", str(data), "--dataset", "ds", "--percents", "a,b"])


def test_real_beauty_fractions_are_nested_and_sized(shared_data, tmp_path):
    """On the real Beauty 5-core (built as benchmarks/quality.py does): 25% and 50% of its
    22,363 users, nested, every fraction with the full 12,101-item catalog file."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import quality

    data = quality.build_beauty(shared_data, tmp_path / "beauty")
    summary = write_user_fractions(data, "amazon-beauty", [25, 50], seed=42)
    assert [s["users"] for s in summary] == [5591, 11182]
    u25 = set(_users(data / "amazon-beauty-25pct" / "amazon-beauty-25pct.inter"))
    u50 = set(_users(data / "amazon-beauty-50pct" / "amazon-beauty-50pct.inter"))
    assert len(u25) == 5591 and len(u50) == 11182 and u25 < u50
    rows = (data / "amazon-beauty-25pct" / "amazon-beauty-25pct.item").read_text().splitlines()
    assert len(rows) - 1 == 12101
    counts = np.array([s["interactions"] for s in summary])
    assert np.all(counts > 0) and counts[0] < counts[1] < 198_502
