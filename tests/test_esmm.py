import math

import numpy as np
import pytest
import torch
from funnel_util import FUNNEL, NO_FUNNEL, funnel_batch, make_model, table_grads, touched

from recsys.config import ModelConfig
from recsys.errors import ConfigError
from recsys.models import build_model
from recsys.schema import Schema, Task
from recsys.train.losses import MultiTaskLoss, TrainModule

CTR_CVR = Schema(sparse=FUNNEL.sparse, dense=FUNNEL.dense, tasks=(Task("ctr"), Task("cvr", depends_on="ctr")))


def test_esmm_loss_is_the_hand_computed_ctr_plus_ctcvr_loss():
    model = make_model("esmm", {"hidden": [8, 4]}, schema=CTR_CVR)
    assert model.dependent_loss == "joint"
    batch = funnel_batch(10, seed=2, schema=CTR_CVR)
    module = TrainModule(model, MultiTaskLoss(CTR_CVR, dependent_loss=model.dependent_loss))
    total, out = module(batch)
    ctr, cvr = out.outputs["ctr"].double().tolist(), out.outputs["cvr"].double().tolist()
    click, order = batch.labels["ctr"].tolist(), batch.labels["cvr"].tolist()
    assert 0 < sum(click) < 10 and 0 < sum(order)

    def sig(x):
        return 1.0 / (1.0 + math.exp(-x))

    def bce(p, y):
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    ctr_loss = np.mean([bce(sig(a), y) for a, y in zip(ctr, click)])               # all impressions
    ctcvr_loss = np.mean([bce(sig(a) * sig(b), y) for a, b, y in zip(ctr, cvr, order)])  # all impressions
    assert set(out.losses) == {"ctr", "cvr"}  # two terms: no direct CVR loss
    assert out.losses["ctr"].item() == pytest.approx(ctr_loss, rel=1e-5)
    assert out.losses["cvr"].item() == pytest.approx(ctcvr_loss, rel=1e-5)
    assert total.item() == pytest.approx(ctr_loss + ctcvr_loss, rel=1e-5)


def test_esmm_trains_cvr_on_the_entire_space():
    model = make_model("esmm", {"hidden": [8]}, schema=CTR_CVR)
    batch = funnel_batch(12, seed=4, schema=CTR_CVR)
    outputs = model(batch)
    loss = MultiTaskLoss(CTR_CVR, dependent_loss="joint")(batch, outputs)["cvr"]
    grad = torch.autograd.grad(loss, outputs["cvr"])[0]
    unclicked = batch.labels["ctr"] == 0
    assert unclicked.any() and (grad[unclicked].abs() > 0).all()  # unclicked impressions train pCVR too
    conditional = MultiTaskLoss(CTR_CVR)(batch, model(batch))  # what a conditional model would do
    assert conditional["cvr"].item() != pytest.approx(loss.item())


def test_esmm_towers_and_extra_tasks():
    model = make_model("esmm", {"hidden": [8, 4], "extra_hidden": [4]})
    batch = funnel_batch(16, seed=1)
    out = model(batch)
    assert list(out) == FUNNEL.task_names and all(v.shape == (16,) for v in out.values())
    out["cvr"].sum().backward(retain_graph=True)
    assert touched(model.towers.towers["cvr"]) and not touched(model.towers.towers["ctr"])
    assert not touched(model.extra)
    model.zero_grad()
    out["stay"].sum().backward()  # the stay time task gets its own plain tower
    assert touched(model.extra.towers["stay"]) and not touched(model.towers)


def test_esmm_cvr_embedding_grad_scales_what_cvr_sends_into_the_tables():
    batch = funnel_batch(16, seed=5)
    grads = {}
    for scale in (1.0, 0.25, 0.0):
        model = make_model("esmm", {"hidden": [8], "cvr_embedding_grad": scale})
        model(batch)["cvr"].sum().backward()
        grads[scale] = table_grads(model)
    for table, g in grads[1.0].items():
        assert g.abs().sum() > 0
        torch.testing.assert_close(grads[0.25][table], 0.25 * g)
        assert grads[0.0][table].abs().sum() == 0


def test_esmm_refuses_a_schema_without_funnel():
    with pytest.raises(ConfigError, match="model 'esmm' needs a click -> conversion funnel") as err:
        build_model(ModelConfig(name="esmm"), NO_FUNNEL)
    assert "\n" not in str(err.value)
