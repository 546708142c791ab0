import numpy as np
import pytest
import torch
from funnel_util import FUNNEL, NO_FUNNEL, funnel_batch, make_model

from recsys.errors import ConfigError
from recsys.modules.multitask import GradScale, TaskTowers, ctr_sample_weights, funnel_tasks
from recsys.schema import Schema, Task

FUNNEL_MODELS = ["esmm", "shared_bottom", "mmoe", "ple", "single_task", "calibration4cvr"]


def test_funnel_tasks_come_from_depends_on():
    assert funnel_tasks(FUNNEL, "m") == ("ctr", "cvr")  # the regression 'stay' also depends on ctr: not a funnel
    with pytest.raises(ConfigError, match="needs a click -> conversion funnel"):
        funnel_tasks(NO_FUNNEL, "esmm")
    two = Schema(sparse=FUNNEL.sparse, tasks=(Task("click"), Task("cart", depends_on="click"),
                                                Task("buy", depends_on="click")))
    with pytest.raises(ConfigError, match="cvr_task"):
        funnel_tasks(two, "esmm")
    assert funnel_tasks(two, "esmm", cvr_task="buy") == ("click", "buy")
    with pytest.raises(ConfigError, match="not a binary task with depends_on"):
        funnel_tasks(two, "esmm", cvr_task="click")


def test_grad_scale_is_identity_forward_and_scales_backward():
    x = torch.randn(5, 3, requires_grad=True)
    for scale in (0.0, 0.3, 1.0):
        x.grad = None
        y = GradScale(scale)(x)
        torch.testing.assert_close(y, x)
        (y * torch.arange(3.0)).sum().backward()
        torch.testing.assert_close(x.grad, scale * torch.arange(3.0).expand(5, 3))
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        GradScale(1.5)


def test_task_towers_are_independent():
    towers = TaskTowers({"a": 4, "b": 6}, [5])
    x = {"a": torch.randn(3, 4), "b": torch.randn(3, 6)}
    out = towers(x)
    assert out["a"].shape == (3,) and out["b"].shape == (3,)
    out["a"].sum().backward()
    assert all(p.grad is None for p in towers.towers["b"].parameters())


def test_ctr_sample_ratio_keeps_clicks_and_matches_the_ratio():
    torch.manual_seed(0)
    n = 20000
    batch = funnel_batch(n, seed=1, click_rate=0.05)
    batch.weights[-100:] = 0.0  # padding rows count for nothing
    click = batch.labels["ctr"] > 0
    real = batch.weights > 0
    for ratio in (1.0, 3.0):
        w = ctr_sample_weights(batch, "ctr", ratio)
        kept = w > 0
        assert kept[click & real].all()  # every CVR sample is a CTR sample
        assert not kept[~real].any()
        negatives = int((kept & ~click).sum())
        expected = ratio * int((click & real).sum())
        assert abs(negatives - expected) < 4 * np.sqrt(expected)  # binomial noise
        # kept rows share the batch's weight mass, so the CTR loss is the mean over kept samples
        assert float(w.sum()) == pytest.approx(float(real.sum()), rel=1e-5)
        assert torch.unique(w[kept]).numel() == 1
    assert (ctr_sample_weights(batch, "ctr", 1e6)[real] == 1.0).all()  # a ratio above the data's keeps all


@pytest.mark.parametrize("name", FUNNEL_MODELS)
def test_outputs_do_not_depend_on_labels(name):
    """No label leaks into a model's forward: permuting (or zeroing) every label leaves the outputs unchanged."""
    model = make_model(name)
    model.eval()
    a = funnel_batch(16, seed=3)
    b = funnel_batch(16, seed=3, labels={"ctr": np.zeros(16, np.float32), "cvr": np.zeros(16, np.float32),
                                         "stay": np.zeros(16, np.float32)})
    out_a, out_b = model(a), model(b)
    assert set(out_a) == set(FUNNEL.task_names)
    for t in FUNNEL.task_names:
        torch.testing.assert_close(out_a[t], out_b[t])
        assert out_a[t].shape == (16,)
