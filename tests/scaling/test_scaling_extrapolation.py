"""The extrapolation test: a correct held-out point passes, a planted wrong one is flagged."""

from __future__ import annotations

import numpy as np
import pytest

from recbole_fork.scaling.cells import Cell
from recbole_fork.scaling.extrapolation import extrapolation_test, holdout_split
from recbole_fork.scaling.laws import FORMS, FitError

LAW = {"E": 2.0, "A": 60.0, "alpha": 0.3, "B": 90.0, "beta": 0.35}
SIZES_N = [1e4, 3e4, 1e5, 3e5, 1e6]
SIZES_D = [1e5, 1e6, 1e7]


def law(n: float, d: float) -> float:
    return LAW["E"] + LAW["A"] * n ** -LAW["alpha"] + LAW["B"] * d ** -LAW["beta"]


def study(seed: int = 0, noise: float = 0.003, seeds: int = 3) -> list[Cell]:
    """5 N x 3 D cells of a loss on the law, each with ``seeds`` noisy runs."""
    rng = np.random.default_rng(seed)
    return [
        Cell(
            n,
            d,
            6 * n * d,
            None,
            law(n, d) * np.exp(rng.normal(0.0, noise, seeds)),
            tuple(f"r{i}" for i in range(seeds)),
        )  # fmt: skip
        for d in SIZES_D
        for n in SIZES_N
    ]


def test_holdout_splits():
    cells = study()
    train, held = holdout_split(cells, "largest-N")
    assert [cells[i].n for i in held] == [1e6] * 3 and len(train) == 12
    _, held = holdout_split(cells, "largest-D")
    assert [cells[i].d for i in held] == [1e7] * 5
    _, held = holdout_split(cells, "largest-C")
    assert [(cells[i].n, cells[i].d) for i in held] == [(1e6, 1e7)]
    with pytest.raises(FitError, match="holdout 'largest-X' unknown"):
        holdout_split(cells, "largest-X")


def test_correct_held_out_cells_pass():
    test = extrapolation_test(study(), FORMS["loss"], "largest-N", n_boot=200, seed=0)
    assert len(test.train) == 12 and len(test.held) == 3 and test.refits >= 190
    for h in test.held:
        assert h.observed == pytest.approx(law(h.cell.n, h.cell.d), rel=0.01)
        assert h.low < h.predicted < h.high
        assert abs(h.rel_error) < 0.01
    assert test.passed, [(h.low, h.observed, h.high) for h in test.held]


def test_planted_wrong_held_out_cell_is_flagged():
    cells = study()
    # The largest model does 10% worse than the law says: the extrapolation must notice.
    wrong = [
        Cell(c.n, c.d, c.compute, None, c.values * 1.10, c.runs) if c.n == 1e6 else c for c in cells
    ]
    test = extrapolation_test(wrong, FORMS["loss"], "largest-N", n_boot=200, seed=0)
    assert not test.passed
    assert all(not h.inside and h.rel_error < -0.07 for h in test.held)


def test_ranking_metric_is_predicted_in_its_own_units():
    """NDCG = 1 - loss/10: the error-floor form predicts NDCG and its interval, not 1 - NDCG."""
    cells = [Cell(c.n, c.d, c.compute, None, 1.0 - c.values / 10, c.runs) for c in study()]
    test = extrapolation_test(cells, FORMS["error-floor"], "largest-D", n_boot=100, seed=0)
    assert len(test.held) == 5
    for h in test.held:
        assert h.observed == pytest.approx(1.0 - law(h.cell.n, h.cell.d) / 10, rel=0.01)
        assert h.low < h.predicted < h.high
    assert test.passed


def test_too_few_cells_left_says_why():
    cells = [c for c in study() if c.d != 1e5]  # 2 data sizes; without the largest, one
    test = extrapolation_test(cells, FORMS["loss"], "largest-D", n_boot=10)
    assert test.held == [] and test.note.startswith("no law without them")
