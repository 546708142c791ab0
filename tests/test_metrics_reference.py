"""The vectorised metrics of recsys.train.metrics against torchmetrics (and sklearn when installed), on random
data full of ties: scores on a coarse grid, graded relevance, users with one row, users with only positives or
only negatives.

torchmetrics is called with float64 inputs and float64 as the default dtype (it builds AUC curves and NDCG
discounts in the default dtype), so the comparisons hold to 1e-12. torchmetrics 1.0.3 orders tied scores by an unstable
argsort; the tie-averaged NDCG of recsys is compared with torchmetrics averaged over every order of the tied rows.
"""

import itertools
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import pandas as pd
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc
from torchmetrics.functional.retrieval import retrieval_normalized_dcg
from torchmetrics.retrieval import RetrievalNormalizedDCG

from recsys.schema import Schema, SparseFeature, Task
from recsys.train.metrics import NDCG_KS, Predictions, auc, evaluate, grouped_auc, grouped_ndcg, logloss

TOL = 1e-12


@pytest.fixture(autouse=True)
def float64_default() -> Iterator[None]:
    """torchmetrics computes in the default dtype (AUC's curve, NDCG's discounts): float64 for every test here."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def tm_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """torchmetrics' AUC; scores replaced by their dense ranks in (0, 1] (same order and ties) so that no
    sigmoid is applied to scores outside [0, 1]."""
    positive = labels > 0.5
    if positive.all() or not positive.any():
        return float("nan")
    ranks = pd.Series(np.asarray(scores, np.float64)).rank(method="dense").to_numpy()
    return float(binary_auroc(torch.from_numpy(ranks / ranks.max()), torch.from_numpy(positive).long()))


def tm_gauc(users: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> Tuple[float, int]:
    aucs, sizes = [], []
    for u in np.unique(users):
        m = users == u
        if 0 < (labels[m] > 0.5).sum() < m.sum():
            aucs.append(tm_auc(scores[m], labels[m]))
            sizes.append(m.sum())
    return (float(np.average(aucs, weights=sizes)) if aucs else float("nan")), len(aucs)


def tie_orders(scores: np.ndarray) -> Iterator[np.ndarray]:
    """Every ranking (row indices, best first) consistent with ``scores``: all orders of each run of ties."""
    levels = sorted(set(scores.tolist()), reverse=True)
    blocks = [np.flatnonzero(scores == v).tolist() for v in levels]
    for choice in itertools.product(*(itertools.permutations(b) for b in blocks)):
        yield np.array([i for block in choice for i in block])


def tm_user_ndcg(scores: np.ndarray, relevance: np.ndarray, k: int) -> float:
    """torchmetrics' NDCG@k of one user, averaged over every order of the tied scores."""
    values = []
    target = torch.from_numpy(np.asarray(relevance, np.float64))
    for ranking in tie_orders(scores):
        preds = np.empty(len(scores))
        preds[ranking] = np.arange(len(scores), 0, -1)  # distinct, in the ranking's order
        values.append(float(retrieval_normalized_dcg(torch.from_numpy(preds), target, top_k=k)))
    return float(np.mean(values))


def tm_ndcg(users: np.ndarray, scores: np.ndarray, relevance: np.ndarray, k: int) -> Tuple[float, int]:
    per_user, skipped = [], 0
    for u in np.unique(users):
        m = users == u
        if (relevance[m] > 0).any():
            per_user.append(tm_user_ndcg(scores[m], relevance[m], k))
        else:
            skipped += 1
    return (float(np.mean(per_user)) if per_user else float("nan")), skipped


def tied_rows(seed: int, n: int, users: int, levels: int) -> Dict[str, np.ndarray]:
    """Rows of ``users`` users with scores on a ``levels``-point grid, and users with one row, only positives
    and only negatives appended."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, n)
    score = rng.integers(0, levels, n) / levels
    label = (rng.random(n) < 0.2 + 0.6 * score).astype(np.float64)
    extra_user = np.array([users, users + 1, users + 1, users + 2, users + 2, users + 2])
    extra_label = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])  # one row; only positives; only negatives
    extra_score = np.array([0.5, 0.5, 0.2, 0.1, 0.1, 0.9])
    return {"user": np.concatenate([user, extra_user]), "score": np.concatenate([score, extra_score]),
            "label": np.concatenate([label, extra_label])}


# --- AUC, logloss ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("levels", [3, 20, 10_000])
def test_auc_matches_torchmetrics_with_ties(dtype, levels):
    rows = tied_rows(levels, 3000, 50, levels)
    scores = rows["score"].astype(dtype)
    reference = float(binary_auroc(torch.from_numpy(scores.astype(np.float64)), torch.from_numpy(rows["label"]).long()))
    assert auc(scores, rows["label"]) == pytest.approx(reference, abs=TOL)


def test_auc_of_one_class_or_no_rows_is_nan():
    assert np.isnan(auc(np.array([0.2, 0.4], np.float32), np.array([1.0, 1.0])))
    assert np.isnan(auc(np.array([0.2, 0.4]), np.array([0.0, 0.0])))
    assert np.isnan(auc(np.zeros(0, np.float32), np.zeros(0)))


def test_auc_of_negative_float32_scores_keeps_their_order():
    """The float32 fast path sorts the floats' bits: negative values, -0.0 and +0.0 included."""
    rng = np.random.default_rng(4)
    scores = np.round(rng.normal(0, 3, 2000), 1).astype(np.float32)
    scores[:20] = -0.0
    scores[20:40] = 0.0
    labels = (rng.random(2000) < 1 / (1 + np.exp(-scores))).astype(np.float64)
    assert auc(scores, labels) == pytest.approx(tm_auc(scores, labels), abs=TOL)


def test_logloss_matches_torch_binary_cross_entropy():
    rng = np.random.default_rng(5)
    probs = rng.random(5000)
    probs[:10], probs[10:20] = 0.0, 1.0  # clipped to [1e-7, 1 - 1e-7]
    labels = (rng.random(5000) < 0.3).astype(np.float64)
    clipped = torch.from_numpy(np.clip(probs, 1e-7, 1 - 1e-7))
    reference = float(torch.nn.functional.binary_cross_entropy(clipped, torch.from_numpy(labels)))
    assert logloss(probs.astype(np.float32), labels) == pytest.approx(
        float(torch.nn.functional.binary_cross_entropy(
            torch.from_numpy(np.clip(probs.astype(np.float32).astype(np.float64), 1e-7, 1 - 1e-7)),
            torch.from_numpy(labels))), rel=TOL)
    assert logloss(probs, labels) == pytest.approx(reference, rel=TOL)
    assert np.isnan(logloss(np.zeros(0), np.zeros(0)))


# --- GAUC ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [3, 50])
def test_gauc_matches_per_user_torchmetrics_with_ties(levels):
    rows = tied_rows(10 + levels, 4000, 300, levels)
    got, used = grouped_auc(rows["user"], rows["score"].astype(np.float32), rows["label"])
    expected, expected_used = tm_gauc(rows["user"], rows["score"], rows["label"])
    assert used == expected_used
    assert got == pytest.approx(expected, abs=TOL)


def test_gauc_without_a_user_having_both_classes_is_nan():
    assert grouped_auc(np.array([0, 0, 1]), np.array([0.1, 0.2, 0.3]), np.array([1.0, 1.0, 0.0]))[1] == 0
    assert np.isnan(grouped_auc(np.array([0, 0, 1]), np.array([0.1, 0.2, 0.3]), np.array([1.0, 1.0, 0.0]))[0])


# --- NDCG ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("graded", [False, True])
@pytest.mark.parametrize("k", NDCG_KS + (3,))
def test_ndcg_without_ties_matches_torchmetrics_retrieval_ndcg(graded, k):
    rng = np.random.default_rng(k + 10 * graded)
    rows = tied_rows(k, 3000, 400, 10)
    n = len(rows["user"])
    scores = rng.permutation(n) / n  # distinct: torchmetrics' order is then the only order
    relevance = rng.choice([0.0, 0.0, 0.0, 1.0, 2.5, 7.0], n) if graded else rows["label"]
    got, skipped = grouped_ndcg(rows["user"], scores.astype(np.float32), relevance.astype(np.float32), k)
    # the metric class keeps its state in float32 (it casts preds); its per-user function runs in float64
    metric = RetrievalNormalizedDCG(top_k=k, empty_target_action="skip")
    metric.update(torch.from_numpy(scores), torch.from_numpy(relevance), indexes=torch.from_numpy(rows["user"]))
    assert got == pytest.approx(float(metric.compute()), rel=1e-6)
    expected, expected_skipped = tm_ndcg(rows["user"], scores, relevance, k)
    assert skipped == expected_skipped
    assert got == pytest.approx(expected, abs=TOL)
    users_with_positive = pd.Series(relevance > 0).groupby(rows["user"]).any()
    assert skipped == int((~users_with_positive).sum()) > 0


@pytest.mark.parametrize("graded", [False, True])
@pytest.mark.parametrize("k", NDCG_KS + (3,))
def test_ndcg_with_ties_is_torchmetrics_averaged_over_every_order_of_the_ties(graded, k):
    rng = np.random.default_rng(100 + k + 10 * graded)
    users = np.repeat(np.arange(80), rng.integers(1, 7, 80))  # 1 to 6 rows per user
    n = len(users)
    scores = rng.integers(0, 3, n) / 4  # 3 levels: runs of ties in nearly every user
    relevance = rng.choice([0.0, 0.0, 1.0, 2.0, 4.5], n) if graded else (rng.random(n) < 0.35).astype(np.float64)
    got, skipped = grouped_ndcg(users, scores, relevance, k)
    expected, expected_skipped = tm_ndcg(users, scores, relevance, k)
    assert skipped == expected_skipped > 0
    assert got == pytest.approx(expected, abs=TOL)


def test_ndcg_with_ties_ignores_row_order():
    rng = np.random.default_rng(7)
    users, scores = rng.integers(0, 50, 2000), rng.integers(0, 4, 2000).astype(np.float32)
    relevance = rng.choice([0.0, 1.0, 3.0], 2000).astype(np.float32)
    perm = rng.permutation(2000)
    for k in NDCG_KS:
        assert grouped_ndcg(users, scores, relevance, k) == pytest.approx(
            grouped_ndcg(users[perm], scores[perm], relevance[perm], k), rel=1e-12)


def test_auc_and_ndcg_match_sklearn_when_installed():
    metrics = pytest.importorskip("sklearn.metrics")
    rows = tied_rows(3, 2000, 150, 4)
    assert auc(rows["score"], rows["label"]) == pytest.approx(metrics.roc_auc_score(rows["label"], rows["score"]),
                                                              abs=TOL)
    for k in NDCG_KS:
        per_user = []
        for u in np.unique(rows["user"]):
            m = rows["user"] == u
            if rows["label"][m].any() and m.sum() > 1:  # sklearn needs two documents
                per_user.append(metrics.ndcg_score(rows["label"][m][None], rows["score"][m][None], k=k))
            elif rows["label"][m].any():
                per_user.append(1.0)
        got, _ = grouped_ndcg(rows["user"], rows["score"], rows["label"], k)
        assert got == pytest.approx(np.mean(per_user), abs=TOL)


# --- the whole report against a slice-by-slice torchmetrics reference -------------------------------------------
SCHEMA = Schema(
    sparse=(SparseFeature("u", 64),),
    tasks=(Task("ctr"), Task("cvr", depends_on="ctr"),
           Task("stay", kind="regression", depends_on="ctr", eval_threshold=30.0)),
    num_scenarios=2, scenario_names=("feed", "search"), user_feature="u",
    eval_groups=(("stage", ("new", "loyal", "lost")),),  # nobody is "lost": that slice is left out
)


def report_rows(seed: int = 0, users: int = 60) -> Predictions:
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(users), rng.integers(1, 7, users))
    n = len(user)
    click = (rng.random(n) < 0.5).astype(np.float32)
    order = (click * (rng.random(n) < 0.5)).astype(np.float32)
    stay = (click * np.round(rng.exponential(30, n))).astype(np.float32)
    grid = lambda levels: (rng.integers(0, levels, n) / levels).astype(np.float32)  # noqa: E731
    return Predictions(
        row_id=np.arange(n), scenario=rng.integers(0, 2, n), user=np.zeros(n, np.int64),  # one encoded user
        labels={"ctr": click, "cvr": order, "stay": stay},
        scores={"ctr": grid(4), "cvr": grid(3), "stay": (grid(5) * 90).astype(np.float32)},
        groups={"stage": rng.integers(0, 2, n)}, oracle={"ctr": grid(6), "cvr": grid(6)},
        user_key=(user * 7919 + 2**40).astype(np.int64),
    )


def reference_report(schema: Schema, p: Predictions) -> Dict[str, float]:
    slices: List[Tuple[str, np.ndarray]] = [("", np.ones(len(p), bool))]
    slices += [(f"scenario={schema.scenario_name(i)}", p.scenario == i) for i in range(schema.num_scenarios)]
    slices += [(f"stage={v}", p.groups["stage"] == i) for i, v in enumerate(schema.eval_groups[0][1])]
    out: Dict[str, float] = {"rows": float(len(p))}
    for suffix, keep in slices:
        if not keep.any():
            continue
        for task in schema.tasks:
            rows = keep & (p.labels[task.depends_on] > 0.5) if task.depends_on else keep
            y, s, users = p.labels[task.name][rows], p.scores[task.name][rows], p.user_key[rows]
            m: Dict[str, Optional[float]] = {"count": float(rows.sum())}
            if task.kind == "binary":
                m["auc"] = tm_auc(s, y)
                clipped = torch.from_numpy(np.clip(s.astype(np.float64), 1e-7, 1 - 1e-7))
                truth = torch.from_numpy(y.astype(np.float64))
                m["logloss"] = float(torch.nn.functional.binary_cross_entropy(clipped, truth))
                m["pos_rate"] = float(y.astype(np.float64).mean())
                m["calibration"] = float(s.astype(np.float64).mean() / m["pos_rate"])
                m["oracle_auc"] = tm_auc(p.oracle[task.name][rows], y)
                if task.depends_on:
                    parent = task.depends_on
                    m["ctcvr_auc"] = tm_auc((p.scores[parent] * p.scores[task.name])[keep], p.labels[task.name][keep])
                    m["oracle_ctcvr_auc"] = tm_auc((p.oracle[parent] * p.oracle[task.name])[keep],
                                                   p.labels[task.name][keep])
                m["gauc"], m["gauc_users"] = tm_gauc(users, s, y)
            else:
                err = s.astype(np.float64) - y
                m["rmse"], m["mae"] = float(np.sqrt(np.mean(err**2))), float(np.mean(np.abs(err)))
                m["auc"] = tm_auc(s, (y > task.eval_threshold).astype(np.float64))
            for k in NDCG_KS:
                m[f"ndcg@{k}"], skipped = tm_ndcg(users, s, y, k)
            m["ndcg_skipped"] = float(skipped)
            for metric, value in m.items():
                out[f"{task.name}/{metric}" + (f"/{suffix}" if suffix else "")] = value
    return out


def test_report_equals_a_slice_by_slice_torchmetrics_reference():
    p = report_rows()
    got, expected = evaluate(SCHEMA, p), reference_report(SCHEMA, p)
    assert "ctr/auc/stage=loyal" in got and not any(k.endswith("stage=lost") for k in got)
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=TOL, rel=1e-12, nan_ok=True), key
    # every user counts: grouping is by the raw-user key, although all rows share one encoded user
    assert got["ctr/gauc_users"] > 20


def test_rows_too_wide_for_one_sort_key_take_the_gather_path_with_the_same_metrics():
    """(user, score, slice code, row) keys over 63 bits sort row indices and gather instead; same numbers."""
    from recsys.train.metrics import _Order, _user_metrics

    rng = np.random.default_rng(8)
    n = 3000
    users = rng.integers(0, 200, n)
    scores = np.round(rng.random(n), 2).astype(np.float32)
    relevance = rng.choice([0.0, 1.0, 3.0], n).astype(np.float32)
    codes = {"scenario": rng.integers(0, 3, n).astype(np.int16)}

    def metrics(u: np.ndarray) -> Dict[str, float]:
        view, ideal = _Order(scores, codes, users=u, relevance=relevance), _Order(relevance, codes, users=u)
        ideal_parts = ideal.parts("scenario")
        return {f"{c}/{k}": v for c, rows in view.parts("scenario").items()
                for k, v in _user_metrics(rows, ideal_parts[c], NDCG_KS, with_gauc=False).items()}

    wide = users << 12  # 20-bit users: 20 + 32 + 2 + 12 row bits > 63, without the row 54 bits
    assert metrics(wide) == pytest.approx(metrics(users), abs=TOL)
    with pytest.raises(ValueError, match="too many for one 63-bit sort key"):
        metrics(users << 40)


def test_float32_sort_keys_order_and_decode_every_float():
    from recsys.train.metrics import _score_key

    values = np.array([3.5, -0.0, 0.0, -1e-45, 1e-45, -2.0, np.inf, -np.inf, 1.0, -3.5, 2.0], np.float32)
    key, bits, decode = _score_key(values)
    assert bits == 32 and key.min() >= 0 and key.max() < 2**32
    np.testing.assert_array_equal(np.argsort(key, kind="stable"), np.argsort(-values, kind="stable"))
    assert key[1] == key[2]  # -0.0 == 0.0
    np.testing.assert_array_equal(decode(key), values + np.float32(0.0))
