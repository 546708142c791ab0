import numpy as np
import pandas as pd
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from recsys.schema import Schema, SparseFeature, Task
from recsys.train.metrics import Predictions, auc, evaluate, grouped_auc, grouped_ndcg


def test_grouped_auc_matches_per_group_torchmetrics():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 30, 2000)
    labels = (rng.random(2000) < 0.3).astype(float)
    scores = np.round(rng.random(2000) + 0.3 * labels, 1)  # rounding creates ties
    got, used = grouped_auc(groups, scores, labels)
    aucs, sizes = [], []
    for g in np.unique(groups):
        m = groups == g
        if 0 < labels[m].sum() < m.sum():
            # scores / 2 stay inside [0, 1], where torchmetrics uses them as they are
            aucs.append(float(binary_auroc(torch.tensor(scores[m] / 2), torch.tensor(labels[m]).long())))
            sizes.append(m.sum())
    assert used == len(aucs)
    assert got == pytest.approx(np.average(aucs, weights=sizes), rel=1e-6)


def test_auc_exact_for_scores_outside_unit_interval():
    rng = np.random.default_rng(2)
    labels = (rng.random(500) < 0.4).astype(float)
    seconds = np.round(rng.exponential(60, 500) + 40 * labels)  # stay times: large values with ties
    ranks = pd.Series(seconds).rank().to_numpy()
    pos, neg = labels.sum(), (1 - labels).sum()
    mann_whitney = (ranks[labels > 0].sum() - pos * (pos + 1) / 2) / (pos * neg)
    assert auc(seconds, labels) == pytest.approx(mann_whitney, rel=1e-6)


def test_ndcg_hand_computed_and_skips_groups_without_positives():
    groups = np.array([0, 0, 0, 1, 1, 2, 2])
    scores = np.array([0.9, 0.5, 0.1, 0.2, 0.8, 0.3, 0.4])
    rel = np.array([0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])  # group 2 has no positive
    # group 0: ranking by score -> rel [0, 1, 1]; DCG@5 = 1/log2(3) + 1/log2(4); IDCG = 1 + 1/log2(3)
    g0 = (1 / np.log2(3) + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    # group 1: ranking -> rel [0, 1]; DCG = 1/log2(3); IDCG = 1
    g1 = 1 / np.log2(3)
    value, skipped = grouped_ndcg(groups, scores, rel, k=5)
    assert skipped == 1
    assert value == pytest.approx((g0 + g1) / 2, rel=1e-6)
    value1, _ = grouped_ndcg(groups, scores, rel, k=1)
    assert value1 == pytest.approx(0.0)  # both groups put a negative first


def test_funnel_metrics_use_depends_on():
    schema = Schema(sparse=(SparseFeature("u", 8),), tasks=(Task("ctr"), Task("cvr", depends_on="ctr")),
                    num_scenarios=2, user_feature="u")
    rng = np.random.default_rng(1)
    n = 400
    click = (rng.random(n) < 0.4).astype(float)
    order = click * (rng.random(n) < 0.5)
    p = Predictions(
        row_id=np.arange(n), scenario=rng.integers(0, 2, n), user=rng.integers(0, 20, n),
        labels={"ctr": click, "cvr": order}, scores={"ctr": rng.random(n), "cvr": rng.random(n)},
    )
    report = evaluate(schema, p)
    clicked = click > 0
    assert report["cvr/count"] == clicked.sum()
    assert report["cvr/auc"] == pytest.approx(auc(p.scores["cvr"][clicked], order[clicked]))
    assert report["cvr/ctcvr_auc"] == pytest.approx(auc(p.scores["ctr"] * p.scores["cvr"], order))
    s1 = p.scenario == 1
    assert report["ctr/auc/scenario=1"] == pytest.approx(auc(p.scores["ctr"][s1], click[s1]))
    assert "ctr/gauc" in report and "ctr/ndcg@5" in report


def test_ndcg_graded_relevance_by_hand_per_lifecycle_stage():
    """Stay time as graded relevance (linear gain), restricted to clicked rows, per user, per stage."""
    schema = Schema(sparse=(SparseFeature("u", 8),),
                    tasks=(Task("ctr"), Task("stay", kind="regression", depends_on="ctr", eval_threshold=60.0)),
                    user_feature="u", eval_groups=(("stage", ("new", "loyal")),))
    user = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    click = np.array([1, 1, 1, 0, 1, 1, 1, 1], dtype=float)
    stay = np.array([0.0, 120.0, 30.0, 0.0, 60.0, 10.0, 0.0, 0.0])  # user 2 stayed nowhere: no ideal ranking
    score = np.array([0.9, 0.5, 0.1, 5.0, 0.2, 0.8, 0.3, 0.4])  # row 3 is not clicked: not a stay row
    stage = np.array([0, 0, 0, 0, 1, 1, 0, 0])
    p = Predictions(row_id=np.arange(8), scenario=np.zeros(8, int), user=user,
                    labels={"ctr": click, "stay": stay}, scores={"ctr": score, "stay": score},
                    groups={"stage": stage})
    report = evaluate(schema, p)
    # user 0 ranks relevances [0, 120, 30]; ideal [120, 30, 0]
    u0 = (120 / np.log2(3) + 30 / np.log2(4)) / (120 + 30 / np.log2(3))
    # user 1 ranks [10, 60]; ideal [60, 10]
    u1 = (10 + 60 / np.log2(3)) / (60 + 10 / np.log2(3))
    assert report["stay/ndcg@5"] == pytest.approx((u0 + u1) / 2, rel=1e-6)
    assert report["stay/ndcg@1"] == pytest.approx((0 / 120 + 10 / 60) / 2, rel=1e-6)
    assert report["stay/ndcg_skipped"] == 1
    assert report["stay/ndcg@5/stage=new"] == pytest.approx(u0, rel=1e-6)
    assert report["stay/ndcg_skipped/stage=new"] == 1
    assert report["stay/ndcg@5/stage=loyal"] == pytest.approx(u1, rel=1e-6)
    assert report["stay/auc/stage=new"] == pytest.approx(auc(score[[0, 1, 2, 6, 7]], stay[[0, 1, 2, 6, 7]] > 60))
