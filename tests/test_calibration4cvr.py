import numpy as np
import pytest
import torch
import torch.nn.functional as F
from funnel_util import FUNNEL, NO_FUNNEL, funnel_batch, make_model, table_grads, touched

from recsys.config import ModelConfig
from recsys.errors import ConfigError
from recsys.models import build_model
from recsys.modules.cvr_calibration import STRUCTURES, ScaledCTRCalibration, SECalibration
from recsys.train.losses import MultiTaskLoss, TrainModule

SMALL = {"ctr_hidden": [16, 8, 4], "cvr_hidden": [16, 8, 4], "pos_hidden": [4], "extra_hidden": [4],
         "se_reduction": 2}


@pytest.mark.parametrize("structure", STRUCTURES)
def test_every_structure_trains_end_to_end(structure):
    model = make_model("calibration4cvr", dict(SMALL, structure=structure, calibrate_layer=1))
    batch = funnel_batch(32, seed=1)
    out = model(batch)
    assert list(out) == FUNNEL.task_names and all(v.shape == (32,) for v in out.values())
    total, _ = TrainModule(model, MultiTaskLoss(FUNNEL))(batch)
    total.backward()
    assert touched(model.main.calibration) and touched(model.pos.calibration)


def test_ctr_calibrates_cvr_but_not_the_reverse():
    model = make_model("calibration4cvr", dict(SMALL, structure="cvr_se", calibrate_layer=0))
    assert model.main.calibration.se.excite.out_features == 16  # gates CVR hidden layer 0
    out = model(funnel_batch(32, seed=2))
    out["ctr"].sum().backward(retain_graph=True)
    assert not touched(model.main.cvr_lower) and not touched(model.main.cvr_upper)
    assert not touched(model.pos.cvr_lower) and not touched(model.main.calibration)
    model.zero_grad()
    out["cvr"].sum().backward()
    assert touched(model.main.ctr_lower) and not touched(model.main.ctr_upper)  # neuron-level, not the logit
    assert touched(model.pos.ctr_lower)  # CTR-Pos-Net -> CVR-Pos-Net calibration


def test_position_goes_through_the_pos_nets_only():
    model = make_model("calibration4cvr", dict(SMALL, pos_calibration=False))
    assert model.sparse_arch.features == ["user", "item"] and model.pos.calibration is None
    out = model(funnel_batch(32, seed=3))
    out["cvr"].sum().backward()
    assert table_grads(model)["position"].abs().sum() > 0
    model.zero_grad()
    with torch.no_grad():
        model.pos.cvr_upper.output.weight.zero_()  # cut the CVR-Pos-Net: no other path reaches position
    model(funnel_batch(32, seed=3))["cvr"].sum().backward()
    assert table_grads(model)["position"].abs().sum() == 0
    none = make_model("calibration4cvr", dict(SMALL, bias_features=[]))
    assert none.pos is None and none.sparse_arch.features == ["user", "item", "position"]


def test_cvr_embedding_grad_scales_the_cvr_loss_gradient_into_the_tables():
    batch = funnel_batch(32, seed=4)
    grads = {}
    for scale in (1.0, 0.25):
        model = make_model("calibration4cvr", dict(SMALL, cvr_embedding_grad=scale, ctr_grad_from_cvr=0.0))
        MultiTaskLoss(FUNNEL)(batch, model(batch))["cvr"].backward()
        grads[scale] = table_grads(model)
    for table in ("user", "item", "position"):
        assert grads[1.0][table].abs().sum() > 0
        torch.testing.assert_close(grads[0.25][table], 0.25 * grads[1.0][table])


def test_scaling_structure_exposes_a_factor_in_unit_interval():
    model = make_model("calibration4cvr", dict(SMALL, structure="ctr_scaled"))
    assert isinstance(model.main.calibration, ScaledCTRCalibration)
    alpha = float(model.main.calibration.scale.detach())
    assert 0.0 < alpha < 1.0
    assert "calibration_scale" in model.main.calibration.tensorboard_stats()


def test_se_gate_varies_per_sample():
    model = make_model("calibration4cvr", dict(SMALL, structure="cvr_se"))
    model(funnel_batch(64, seed=5))
    assert isinstance(model.main.calibration, SECalibration)
    gate = model.main.calibration._last_gate
    assert gate.shape == (64, 8) and (gate.std(dim=0) > 0).any()


def test_ctr_cvr_ratio_samples_the_ctr_loss():
    torch.manual_seed(0)
    model = make_model("calibration4cvr", dict(SMALL, ctr_cvr_ratio=1.0))
    batch = funnel_batch(400, seed=6, click_rate=0.1)
    torch.manual_seed(1)
    weights = model.loss_weights(batch, {})
    assert set(weights) == {"ctr"}
    kept = weights["ctr"] > 0
    click = batch.labels["ctr"] > 0
    assert kept[click].all() and 0 < int((kept & ~click).sum()) < int((~click).sum())
    torch.manual_seed(1)
    _, out = TrainModule(model, MultiTaskLoss(FUNNEL))(batch)
    logits = out.outputs["ctr"]
    expected = F.binary_cross_entropy_with_logits(logits[kept], batch.labels["ctr"][kept])
    assert out.losses["ctr"].item() == pytest.approx(expected.item(), rel=1e-5)  # the mean over kept samples
    cvr = F.binary_cross_entropy_with_logits(out.outputs["cvr"][click], batch.labels["cvr"][click])
    assert out.losses["cvr"].item() == pytest.approx(cvr.item(), rel=1e-5)  # CVR keeps every clicked row


def test_calibration4cvr_refuses_bad_configs():
    with pytest.raises(ConfigError, match="model 'calibration4cvr' needs a click -> conversion funnel"):
        build_model(ModelConfig(name="calibration4cvr"), NO_FUNNEL)
    with pytest.raises(ConfigError, match=r"calibrate_layer must be in \[0, 3\)"):
        build_model(ModelConfig(name="calibration4cvr", params={"calibrate_layer": 3}), FUNNEL)
    with pytest.raises(ConfigError, match="structure"):
        build_model(ModelConfig(name="calibration4cvr", params={"structure": "se"}), FUNNEL)
    with pytest.raises(ConfigError, match="ctr_cvr_ratio' must be > 0"):  # checked when the options load
        build_model(ModelConfig(name="calibration4cvr", params={"ctr_cvr_ratio": 0}), FUNNEL)
    assert np.isfinite(make_model("calibration4cvr")(funnel_batch(4))["cvr"].detach().numpy()).all()


def test_training_options_run_under_dmp_and_the_pipeline(tiny_config):
    from recsys.train.trainer import Trainer

    params = ("{structure: ctr_scaled, ctr_hidden: [16, 8], cvr_hidden: [16, 8], calibrate_layer: 0, "
              "ctr_cvr_ratio: 1.0, cvr_embedding_grad: 0.5, ctr_grad_from_cvr: 0.5}")
    trainer = Trainer(tiny_config(model="calibration4cvr", extra=[f"model.params={params}",
                                                                  "train.pipeline=sparse_dist", "train.max_steps=4"]))
    report = trainer.fit()["valid"]
    assert trainer.stepper.pipeline_started
    assert all(np.isfinite(report[k]) for k in ("ctr/auc", "cvr/auc", "cvr/ctcvr_auc"))
