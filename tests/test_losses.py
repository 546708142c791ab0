import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from test_data import spec_of

from recsys.data.columns import Columns
from recsys.data.dataset import Dataset
from recsys.errors import DataError
from recsys.schema import BINARY_LOSS, REGRESSION_LOSSES, Schema, SparseFeature, Task
from recsys.task_losses import TASK_LOSSES, LabelDomain, loss_of
from recsys.train.losses import MultiTaskLoss, joint_bce, log1mexp, prediction_of


def batch_of(labels, weights=None):
    n = len(next(iter(labels.values())))
    cols = Columns(
        dense=np.zeros((n, 0), np.float32), sparse={"a": np.zeros(n, np.int64)},
        labels={k: np.asarray(v, np.float32) for k, v in labels.items()}, scenario=np.zeros(n, np.int64),
        user=np.zeros(n, np.int64), weights=np.asarray(weights if weights is not None else [1.0] * n, np.float32),
        row_id=np.arange(n),
    )
    return cols.to_batch(["a"])


SCHEMA = Schema(
    sparse=(SparseFeature("a", 4),),
    tasks=(Task("ctr"), Task("cvr", depends_on="ctr"),
           Task("stay", kind="regression", depends_on="ctr", loss="log_mse")),
)


def bce(logit, y):
    p = 1 / (1 + math.exp(-logit))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_conditional_losses_match_hand_computation():
    click, order, stay = [1, 0, 1, 0], [1, 0, 0, 0], [30.0, 0.0, 5.0, 0.0]
    batch = batch_of({"ctr": click, "cvr": order, "stay": stay})
    out = {"ctr": torch.tensor([0.5, -1.0, 2.0, 0.0]), "cvr": torch.tensor([0.3, 9.0, -0.7, -9.0]),
           "stay": torch.tensor([3.0, 100.0, 1.0, -100.0])}
    losses = MultiTaskLoss(SCHEMA)(batch, out)
    ctr = np.mean([bce(logit, y) for logit, y in zip([0.5, -1.0, 2.0, 0.0], click)])
    cvr = (bce(0.3, 1) + bce(-0.7, 0)) / 2  # only clicked rows; unclicked rows' outputs do not matter
    st = ((3.0 - math.log1p(30.0)) ** 2 + (1.0 - math.log1p(5.0)) ** 2) / 2
    assert losses["ctr"].item() == pytest.approx(ctr, rel=1e-5)
    assert losses["cvr"].item() == pytest.approx(cvr, rel=1e-5)
    assert losses["stay"].item() == pytest.approx(st, rel=1e-5)


def test_joint_loss_is_esmm_ctcvr():
    batch = batch_of({"ctr": [1, 0, 1], "cvr": [1, 0, 0], "stay": [1.0, 0.0, 1.0]})
    a, b = torch.tensor([0.2, -1.0, 1.5]), torch.tensor([-0.3, 2.0, 0.1])
    losses = MultiTaskLoss(SCHEMA, task_weights={"stay": 0.0}, dependent_loss="joint")(
        batch, {"ctr": a, "cvr": b, "stay": torch.zeros(3)})
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = []
    for ai, bi, y in zip(a.tolist(), b.tolist(), [1, 0, 0]):
        p = sig(ai) * sig(bi)
        expected.append(-(y * math.log(p) + (1 - y) * math.log(1 - p)))
    assert losses["cvr"].item() == pytest.approx(np.mean(expected), rel=1e-5)  # over ALL rows
    assert losses["stay"].item() == 0.0


def test_joint_bce_stable_at_extremes():
    a = torch.tensor([50.0, -50.0, 0.0], requires_grad=True)
    b = torch.tensor([50.0, 0.0, -50.0])
    loss = joint_bce(a, b, torch.tensor([1.0, 0.0, 0.0]))
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(a.grad).all()
    x = torch.tensor([-1e-6, -0.5, -30.0], dtype=torch.float64)
    # references accurate at each end: log(-expm1(x)) near 0, -exp(x) (first order) far below
    reference = [math.log(-math.expm1(-1e-6)), math.log(1 - math.exp(-0.5)), -math.exp(-30.0)]
    np.testing.assert_allclose(log1mexp(x).numpy(), reference, rtol=1e-9)


def test_sample_weights_and_padding_rows():
    batch = batch_of({"ctr": [1, 0, 1], "cvr": [0, 0, 0], "stay": [0.0, 0.0, 0.0]}, weights=[2.0, 1.0, 0.0])
    out = {"ctr": torch.tensor([0.1, 0.2, 99.0]), "cvr": torch.zeros(3), "stay": torch.zeros(3)}
    losses = MultiTaskLoss(SCHEMA)(batch, out, {"ctr": torch.tensor([0.5, 1.0, 1.0])})
    expected = (2.0 * 0.5 * bce(0.1, 1) + 1.0 * bce(0.2, 0)) / 3.0
    assert losses["ctr"].item() == pytest.approx(expected, rel=1e-5)


def test_no_positive_parent_gives_zero_not_nan():
    batch = batch_of({"ctr": [0, 0], "cvr": [0, 0], "stay": [0.0, 0.0]})
    losses = MultiTaskLoss(SCHEMA)(batch, {"ctr": torch.zeros(2), "cvr": torch.ones(2), "stay": torch.ones(2)})
    assert losses["cvr"].item() == 0.0 and losses["stay"].item() == 0.0


# --- the table of task losses (recsys/task_losses.py) -----------------------------------------------------------
def test_the_loss_table_holds_every_declared_loss_with_its_forward_and_inverse_link():
    assert {n for n, loss in TASK_LOSSES.items() if loss.kind == "regression"} == set(REGRESSION_LOSSES)
    assert [n for n, loss in TASK_LOSSES.items() if loss.kind == "binary"] == [BINARY_LOSS] == ["bce"]
    t = torch.tensor
    bce_loss = TASK_LOSSES["bce"]
    assert bce_loss.forward(t([0.3, 0.3]), t([1.0, 0.0])).tolist() == pytest.approx([bce(0.3, 1), bce(0.3, 0)])
    assert bce_loss.inverse(t([0.0, 2.0])).tolist() == pytest.approx([0.5, 1 / (1 + math.exp(-2.0))])
    assert TASK_LOSSES["mse"].forward(t([2.0]), t([5.0])).tolist() == [9.0]
    log_mse = TASK_LOSSES["log_mse"]
    assert log_mse.forward(t([0.0]), t([math.e - 1])).tolist() == pytest.approx([1.0])
    assert log_mse.inverse(t([1.0, -5.0])).tolist() == pytest.approx([math.e - 1, 0.0])  # never below 0 seconds
    assert TASK_LOSSES["huber"].forward(t([0.0, 0.0]), t([3.0, 0.5])).tolist() == [2.5, 0.125]
    for name in ("mse", "huber"):
        assert TASK_LOSSES[name].inverse(t([-2.0, 7.0])).tolist() == [-2.0, 7.0]
    assert loss_of(Task("stay", kind="regression", loss="huber")) is TASK_LOSSES["huber"]
    assert loss_of(Task("ctr", loss="huber")) is TASK_LOSSES["bce"]  # a binary task's loss is always bce


def test_losses_predictions_and_label_checks_all_read_the_table(monkeypatch, tmp_path):
    """One entry changed in the table changes training, evaluation and data validation alike."""
    monkeypatch.setitem(TASK_LOSSES, "huber", replace(
        TASK_LOSSES["huber"], forward=lambda o, y: (o - y).abs() * 7, inverse=lambda o: o * 2,
        labels=LabelDomain(minimum=1.0)))
    schema = Schema(sparse=(SparseFeature("a", 4),), tasks=(Task("stay", kind="regression", loss="huber"),))
    batch = batch_of({"stay": [1.0, 4.0]})
    loss = MultiTaskLoss(schema)(batch, {"stay": torch.tensor([2.0, 2.0])})["stay"]
    assert loss.item() == pytest.approx((7 + 14) / 2)
    assert prediction_of(schema.task("stay"), torch.tensor([3.0])).tolist() == [6.0]

    pd.DataFrame({"item": [1, 2, 3], "watch": [4.0, 0.5, 2.0]}).to_csv(tmp_path / "d.csv", index=False)
    spec = {"name": "t", "source": {"path": "d.csv"}, "sparse": [{"name": "item"}],
            "tasks": [{"name": "stay", "column": "watch", "kind": "regression", "loss": "huber"}]}
    with pytest.raises(DataError, match=r"d.csv.*column 'watch'.*row 2.*label of task 'stay' must be >= 1 for the "
                                        r"huber loss, got 0.5"):
        Dataset(spec_of(spec, str(tmp_path))).fit()


def test_log_mse_labels_must_be_non_negative_unless_the_spec_bounds_say_more(tmp_path):
    pd.DataFrame({"item": [1, 2, 3], "watch": [4.0, -2.0, 2.0]}).to_csv(tmp_path / "d.csv", index=False)
    task = {"name": "stay", "column": "watch", "kind": "regression", "loss": "log_mse"}
    spec = {"name": "t", "source": {"path": "d.csv"}, "sparse": [{"name": "item"}], "tasks": [task]}
    with pytest.raises(DataError, match=r"row 2.*label of task 'stay' must be >= 0 for the log_mse loss, got -2"):
        Dataset(spec_of(spec, str(tmp_path))).fit()
    spec["tasks"] = [dict(task, min_value=-1)]  # the spec's own bound is named first
    with pytest.raises(DataError, match=r"label of task 'stay' is -2, below the minimum -1 declared in the spec"):
        Dataset(spec_of(spec, str(tmp_path))).fit()
