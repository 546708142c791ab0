"""benchmarks/reproduce.py: its default cells exist in the committed results and grids; the comparison sees
every metric and sorts the largest difference first."""

import json
import math
import os

from conftest import REPO

from benchmarks import reproduce
from benchmarks.quality import grids


def test_every_default_cell_is_a_committed_cell_of_a_grid():
    available = grids()
    for text in reproduce.DEFAULT_CELLS:
        grid, name, dataset = reproduce.parse_cell(text)
        saved = json.load(open(os.path.join(REPO, "benchmarks", "results", "quality", f"{grid}.json")))
        assert dataset in saved["results"][name], text
        assert len(saved["results"][name][dataset]["runs"]) >= 1
        assert any(e.name == name for e in available[grid].EXPERIMENTS), text


def test_compare_reports_each_metric_largest_difference_first():
    old = {"rows": 10, "ctr/auc": 0.75, "ctr/logloss": 0.5, "ctr/ndcg@1": float("nan"), "note": "x"}
    new = {"rows": 10, "ctr/auc": 0.7501, "ctr/logloss": 0.49, "ctr/ndcg@1": float("nan")}
    rows = reproduce.compare(new, old)
    assert [r[0] for r in rows][:2] == ["ctr/logloss", "ctr/auc"]
    assert math.isclose(rows[0][3], 0.01) and math.isclose(rows[1][3], 1e-4, rel_tol=1e-6)
    assert {r[0] for r in rows} == {"rows", "ctr/auc", "ctr/logloss", "ctr/ndcg@1"}
    assert dict((r[0], r[3]) for r in rows)["ctr/ndcg@1"] == 0.0


def test_cells_with_slashes_in_the_experiment_name_parse():
    assert reproduce.parse_cell("ssim/A/B model/movielens") == ("ssim", "A/B model", "movielens")
