import json
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist
from torchmetrics.functional.classification import binary_auroc

from recsys.data.columns import Columns
from recsys.data.loader import BatchLoader
from recsys.schema import Schema, SparseFeature, Task
from recsys.train.metrics import (
    PredictionCollector,
    Predictions,
    auc,
    evaluate,
    format_table,
    grouped_auc,
    grouped_ndcg,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


# --- the same report on any number of ranks -------------------------------------------------------------------
RANK_SCHEMA = Schema(
    sparse=(SparseFeature("u", 40),),
    tasks=(Task("ctr"), Task("cvr", depends_on="ctr"),
           Task("stay", kind="regression", depends_on="ctr", eval_threshold=0.5)),
    num_scenarios=3, scenario_names=("feed", "search", "live"), user_feature="u",
    eval_groups=(("stage", ("new", "loyal")),),
)
RANK_ROWS, RANK0_ROWS, ROW_ID_BASE = 1500, 1000, 100  # rank 1 has fewer rows: it pads its last batches


def rank_test_rows(seed: int = 0):
    """Encoded rows of 300 raw users (users >= 39 unseen: they share the OOV row 0), and per task the model
    outputs (logits on a coarse grid: many ties) of every row, indexed by ``row_id - ROW_ID_BASE``."""
    rng = np.random.default_rng(seed)
    n = RANK_ROWS
    raw = rng.integers(0, 300, n)
    encoded = np.where(raw < 39, raw + 1, 0).astype(np.int64)
    click = (rng.random(n) < 0.4).astype(np.float32)
    cols = Columns(
        dense=np.zeros((n, 0), np.float32), sparse={"u": encoded},
        labels={"ctr": click, "cvr": (click * (rng.random(n) < 0.5)).astype(np.float32),
                "stay": (click * np.round(rng.exponential(1.0, n), 1)).astype(np.float32)},
        scenario=rng.integers(0, 3, n), user=encoded, weights=np.ones(n, np.float32),
        row_id=np.arange(n, dtype=np.int64) + ROW_ID_BASE, groups={"stage": rng.integers(0, 2, n)},
        oracle={"ctr": rng.random(n).astype(np.float32)}, user_key=raw * 1000003 + 12345,
    )
    logits = {t: np.round(rng.normal(0, 1, n), 1).astype(np.float32) for t in RANK_SCHEMA.task_names}
    return cols, logits


def collect(cols: Columns, logits, batch_size: int, num_batches=None) -> PredictionCollector:
    collector = PredictionCollector(RANK_SCHEMA)
    for batch in BatchLoader(cols, RANK_SCHEMA.feature_names, batch_size, num_batches=num_batches, prefetch=0):
        row = (batch.row_id - ROW_ID_BASE).clamp_min(0)  # padding rows (-1) read row 0 and are dropped
        collector.add({t: torch.from_numpy(v)[row] for t, v in logits.items()}, batch)
    return collector


def two_rank_worker(out_dir: str) -> None:
    """One rank of a 2-process gloo job (run by torchrun): its share of the rows, gathered and evaluated."""
    dist.init_process_group("gloo")
    rank = dist.get_rank()

    def pickles(*args, **kwargs):
        raise AssertionError("predictions must travel as tensors, not pickles")

    dist.all_gather_object = pickles
    try:
        cols, logits = rank_test_rows()
        share = np.arange(RANK0_ROWS) if rank == 0 else np.arange(RANK0_ROWS, RANK_ROWS)
        preds = collect(cols.take(share), logits, 64, num_batches=math.ceil(RANK0_ROWS / 64)).gather()
        with open(os.path.join(out_dir, f"report-{rank}.json"), "w") as f:
            json.dump({"report": evaluate(RANK_SCHEMA, preds), "row_id": preds.row_id.tolist()}, f)
    finally:
        dist.destroy_process_group()


def assert_same_report(got, expected):
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12, nan_ok=True), key


def test_two_ranks_report_what_one_rank_reports(tmp_path):
    """Issue 17: NDCG of a 2-rank evaluation was 0.5415 against 0.6369 on one rank (torchmetrics synced the
    already gathered rows again, counting each twice). The full report must not depend on the world size."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.abspath(__file__), str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    two = [json.load(open(tmp_path / f"report-{r}.json")) for r in range(2)]

    cols, logits = rank_test_rows()
    preds = collect(cols, logits, 128).gather()
    one = evaluate(RANK_SCHEMA, preds)
    assert two[0]["row_id"] == two[1]["row_id"] == preds.row_id.tolist()  # every row once, padding dropped
    for r in range(2):
        assert_same_report(two[r]["report"], one)
    for key in ("ctr/auc", "ctr/logloss", "ctr/gauc", "ctr/ndcg@5", "cvr/ndcg@1/scenario=live",
                "cvr/ctcvr_auc/stage=loyal", "stay/ndcg@5/stage=new", "ctr/oracle_auc/scenario=feed"):
        assert np.isfinite(one[key]), key
    assert one["ctr/gauc_users"] > 200  # raw users: the unseen ones are not one user


# --- users unseen in training are distinct users ----------------------------------------------------------------
def test_users_unseen_in_training_count_as_distinct_users(tmp_path):
    """Issue 17: GAUC and NDCG grouped rows by the encoded user, so every user unseen in training (all in the
    OOV row) counted as one user. They are grouped by the raw user value's key instead."""
    from recsys.config import SplitConfig, from_dict
    from recsys.data.dataset import Dataset
    from recsys.data.history import value_keys
    from recsys.data.spec import DatasetSpec

    rng = np.random.default_rng(3)
    n_old, n_new = 600, 400  # new users' rows all come after the test cut
    uid = np.concatenate([rng.choice([f"old{i}" for i in range(30)], n_old),
                          rng.choice([f"new{i}" for i in range(40)], n_new)])
    ts = np.concatenate([rng.integers(0, 200, n_old), rng.integers(150, 200, n_new)])
    frame = pd.DataFrame({"row_id": np.arange(len(uid)), "ts": ts, "uid": uid,
                          "item": rng.integers(0, 10, len(uid)), "click": (rng.random(len(uid)) < 0.4).astype(int)})
    folder = tmp_path / "data"
    folder.mkdir()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / "part-0.parquet")
    spec = from_dict(DatasetSpec, {
        "name": "unseen", "source": {"path": str(folder)}, "row_id": "row_id", "time": "ts", "user": "uid",
        "sparse": [{"name": "uid", "group": "user"}, {"name": "item", "group": "item"}],
        "tasks": [{"name": "ctr", "column": "click"}],
    }, source="spec")
    spec.validate("spec")
    ds = Dataset(spec, split=SplitConfig(kind="time", valid_from=100.0, test_from=150.0), chunk_rows=128)
    ds.fit()
    schema = ds.schema(default_dim=4)
    test = ds.read()["test"]
    raw = frame.set_index("row_id").loc[test.row_id]
    new = raw.uid.str.startswith("new").to_numpy()
    assert new.sum() == n_new and (test.user[new] == 0).all()  # one encoded row for all of them
    np.testing.assert_array_equal(test.user_key, value_keys(pa.array(raw.uid.to_numpy())).view(np.int64))

    logits = torch.from_numpy(rng.normal(0, 1, len(frame)).astype(np.float32))
    collector = PredictionCollector(schema)
    for batch in BatchLoader(test, schema.feature_names, 64, prefetch=0, padding_like=ds.empty()):
        collector.add({"ctr": logits[batch.row_id]}, batch)
    preds = collector.gather()
    report = evaluate(schema, preds)

    raw = frame.set_index("row_id").loc[preds.row_id]
    clicks = raw.groupby("uid").click.agg(["min", "max"])
    both = int(((clicks["min"] == 0) & (clicks["max"] == 1)).sum())
    assert both > 50 and report["ctr/gauc_users"] == both
    assert report["ctr/ndcg_skipped"] == int((clicks["max"] == 0).sum())
    expected_gauc, _ = grouped_auc(raw.uid.to_numpy(), preds.scores["ctr"], preds.labels["ctr"])
    assert report["ctr/gauc"] == pytest.approx(expected_gauc, abs=1e-12)
    expected_ndcg, _ = grouped_ndcg(raw.uid.to_numpy(), preds.scores["ctr"], preds.labels["ctr"], 5)
    assert report["ctr/ndcg@5"] == pytest.approx(expected_ndcg, abs=1e-12)


# --- heads trained with loss weight 0 ---------------------------------------------------------------------------
def test_format_table_marks_untrained_tasks_without_their_numbers():
    p = Predictions(row_id=np.arange(6), scenario=np.array([0, 1, 0, 1, 0, 1]), user=np.zeros(6, np.int64),
                    labels={"ctr": np.array([1.0, 0, 1, 0, 1, 1]), "cvr": np.array([1.0, 0, 0, 0, 1, 0])},
                    scores={"ctr": np.linspace(0.1, 0.6, 6), "cvr": np.array([0.4, 0.5, 0.3, 0.2, 0.1, 0.9])})
    schema = Schema(sparse=(SparseFeature("u", 8),), tasks=(Task("ctr"), Task("cvr", depends_on="ctr")),
                    num_scenarios=2)
    report = evaluate(schema, p)
    table = format_table(schema, report, untrained=["cvr"])
    columns = table.splitlines()[0].count("|") - 1  # task, slice and the metrics
    cvr_lines = [line for line in table.splitlines() if line.startswith("| cvr |")]
    assert cvr_lines == ["| cvr | all | untrained (loss weight 0) |" + " |" * (columns - 3)]
    assert "| ctr | scenario=1 |" in table
    assert f"{report['ctr/auc']:.4f}" in table
    assert "| cvr | all | 0." in format_table(schema, report)  # without the flag, its numbers are shown


def test_untrained_heads_are_marked_in_metrics_json_md_and_the_console(tmp_path, tiny_world, capsys):
    """Issue 17: the CTR-only demo (stay and cvr at loss weight 0) reported CVR AUC 0.4067 as a result."""
    from recsys.cli import main
    from recsys.data.synthetic import CTR_ONLY

    run = tmp_path / "ctr-only"
    args = ["-c", "configs/wide_deep_synthetic.yaml", "--data", tiny_world, "--run-dir", str(run),
            "--set", "train.max_steps=3", "--set", "data.batch_size=256", "--set", "train.progress=false",
            "--set", "tensorboard=false", "--set", "model.params={}", "--set", "model.embedding_dim=8"]
    for item in CTR_ONLY:
        args += ["--set", item]
    assert main(["train"] + args) == 0
    console = capsys.readouterr().out
    metrics = json.load(open(run / "metrics.json"))
    assert sorted(metrics["untrained_tasks"]) == ["cvr", "stay"]
    for split in ("valid", "test"):
        assert metrics[split]["ctr/auc"] > 0
        assert not [k for k in metrics[split] if k.startswith(("cvr/", "stay/"))], split
    markdown = open(run / "metrics.md").read()
    for text in (markdown, console):
        assert "| cvr | all | untrained (loss weight 0) |" in text and "| stay | all | untrained" in text
        assert "| ctr | all |" in text and "| cvr | scenario=" not in text
    assert main(["eval"] + args) == 0
    assert "| cvr | all | untrained (loss weight 0) |" in capsys.readouterr().out


# --- the evaluation benchmark ---------------------------------------------------------------------------------
def test_evaluation_benchmark_tiny_with_a_baseline(tmp_path):
    from benchmarks import evaluation

    in_git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True).returncode == 0
    baseline = ["--baseline", "HEAD", "--baseline-max-rows", "3000"] if in_git else []
    assert evaluation.main(["--rows", "3000", "--users", "300", "--rounds", "2", "--out", str(tmp_path)]
                           + baseline) == 0
    result = json.load(open(tmp_path / "evaluation.json"))
    current = result["current"]["3000"]
    assert len(current["rounds"]) == 2 and current["rows_per_cpu_s"]["median"] > 0
    if in_git:  # the committed implementation, loaded from git, computes the same numbers
        assert result["baseline"]["ref"] == "HEAD" and len(result["baseline"]["3000"]["rounds"]) == 1
        assert max(result["baseline_differences"]["3000"].values()) < 1e-9
    md = open(tmp_path / "evaluation.md").read()
    assert "| current | 3,000 |" in md and "Command: `" in md and "Load average" in md


if __name__ == "__main__":  # one rank of test_two_ranks_report_what_one_rank_reports, under torchrun
    two_rank_worker(sys.argv[1])


def test_collected_rows_are_joined_once_and_handed_over():
    import copy

    cols, logits = rank_test_rows()
    collector = collect(cols, logits, 100)
    expected = Predictions.concat(copy.deepcopy(collector._parts))
    got = collector.local()
    for name in ("row_id", "scenario", "user", "user_key"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name), err_msg=name)
    for name in ("labels", "scores", "groups", "oracle"):
        assert list(getattr(got, name)) == list(getattr(expected, name))
        for key, value in getattr(expected, name).items():
            np.testing.assert_array_equal(getattr(got, name)[key], value, err_msg=f"{name}/{key}")
    with pytest.raises(ValueError, match="no evaluation rows"):
        collector.local()  # the parts were handed over, not kept beside the joined rows
