"""CBMR and MultiCBMR: outputs, gradients, switches, hand-computed loss, training and TensorBoard statistics."""

import math

import pytest
import torch
from calib_helpers import SCHEMA, build, grads_of, make_batch, table_grad

from recsys.models.cbmr import CBMR, MultiCBMR
from recsys.modules.calibration import EmbCB, MlpCB
from recsys.train.losses import MultiTaskLoss, TrainModule


def test_cbmr_outputs_per_task_and_gradients_reach_id_tables_and_gate_nets():
    model = build("cbmr", {"hidden": [32, 16]})
    assert isinstance(model, CBMR) and model.embcb is not None and model.mlpcb is not None
    batch = make_batch()
    out = grads_of(model, batch)
    assert set(out) == {"ctr", "stay"} and all(v.shape == (8,) for v in out.values())
    for table in ("user", "host", "user__wide", "host__wide", "scene"):
        g = table_grad(model, table)
        assert g is not None and g.abs().sum() > 0, table
    # exactly the users of the batch receive a gradient
    touched = set(torch.nonzero(table_grad(model, "user").abs().sum(1)).flatten().tolist())
    assert touched == set(batch.sparse["user"].values().tolist())
    for name in ("embcb.shared_vectors", "embcb.fc_hidden.weight", "embcb.fc_out.weight",
                 "mlpcb.gates.0.hidden.weight", "mlpcb.gates.1.out.weight"):
        p = dict(model.named_parameters())[name]
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_cbmr_with_both_calibrations_off_is_wide_and_deep():
    cbmr = build("cbmr", {"hidden": [32, 16], "embcb": {"enabled": False}, "mlpcb": {"enabled": False}})
    wd = build("wide_deep", {"hidden": [32, 16]})
    assert set(cbmr.state_dict()) == set(wd.state_dict())
    wd.load_state_dict(cbmr.state_dict())
    batch = make_batch()
    a, b = cbmr(batch), wd(batch)
    for t in a:
        torch.testing.assert_close(a[t], b[t])


@pytest.mark.parametrize("switches", [{"embcb": {"enabled": False}}, {"mlpcb": {"enabled": False}}, {}])
def test_each_calibration_varies_per_sample(switches):
    model = build("cbmr", {"hidden": [32, 16], **switches})
    model(make_batch(n=12))
    if model.embcb is not None:
        w = model.embcb._last
        assert w.shape == (12, len(SCHEMA.sparse)) and (w.std(dim=0) > 1e-5).all()
    else:
        assert "embcb" in switches
    if model.mlpcb is not None:
        for s in model.mlpcb._last:
            assert (s.std(dim=0) > 1e-5).all()
    else:
        assert "mlpcb" in switches


def test_mlpcb_stop_gradient_switch_removes_the_gate_path_to_the_embeddings():
    params = {"hidden": [32, 16], "embcb": {"enabled": False}}
    stop = build("cbmr", {**params, "mlpcb": {"stop_gradient": True}})
    free = build("cbmr", params)
    free.load_state_dict(stop.state_dict())
    batch = make_batch()
    grads_of(stop, batch)
    grads_of(free, batch)
    g_stop, g_free = table_grad(stop, "user").clone(), table_grad(free, "user").clone()
    # the same model with the gates' outputs treated as constants: the gradient without the gate path
    handle = free.mlpcb.register_forward_hook(lambda m, i, o: tuple(t.detach() for t in o))
    grads_of(free, batch)
    handle.remove()
    g_const = table_grad(free, "user")
    torch.testing.assert_close(g_stop, g_const)
    assert not torch.allclose(g_free, g_const)
    assert dict(stop.named_parameters())["mlpcb.gates.0.hidden.weight"].grad.abs().sum() > 0


def test_scene_id_is_among_the_gate_inputs():
    # the deep part does not read the scene: only the gates do, so the scene table learns through them
    params = {"hidden": [32, 16], "deep_features": ["user", "host", "item", "tags"], "wide_features": ["user"],
              "embcb": {"enabled": False}, "mlpcb": {"features": ["user", "host"]}}
    model = build("cbmr", params)
    assert model.gate_inputs.own == ["scene"]
    grads_of(model, make_batch())
    assert table_grad(model, "scene").abs().sum() > 0
    off = build("cbmr", {**params, "mlpcb": {"features": ["user", "host"], "scene_input": False}})
    grads_of(off, make_batch())
    g = table_grad(off, "scene")
    assert g is None or g.abs().sum() == 0
    # samples that differ only in their scene get different gate scales
    batch = make_batch(n=6)
    model(batch)
    with torch.no_grad():
        emb = model.sparse_arch(batch.sparse)
        own, main = model.gate_inputs(emb, batch)
        other = own.roll(1, dims=0)
        assert not torch.allclose(model.mlpcb(own, main)[0], model.mlpcb(other, main)[0])


def test_multicbmr_returns_ctr_logit_and_stay_prediction_and_its_loss_matches_a_hand_computation():
    model = build("multicbmr", {"num_experts": 3, "expert_hidden": [16, 8], "tower_hidden": [8]})
    assert isinstance(model, MultiCBMR)
    batch = make_batch()
    module = TrainModule(model, MultiTaskLoss(SCHEMA))
    total, step = module(batch)
    ctr, stay = step.outputs["ctr"], step.outputs["stay"]
    assert ctr.shape == (8,) and stay.shape == (8,)
    y = batch.labels["ctr"]
    p = torch.sigmoid(ctr)
    bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    clicked = y > 0
    log_mse = ((stay[clicked] - torch.log1p(batch.labels["stay"][clicked])) ** 2).mean()
    torch.testing.assert_close(step.losses["ctr"], bce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(step.losses["stay"], 0.2 * log_mse, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(total.detach(), bce + 0.2 * log_mse, rtol=1e-5, atol=1e-6)
    total.backward()
    for table in ("user", "host", "scene"):
        assert table_grad(model, table).abs().sum() > 0, table
    named = dict(model.named_parameters())
    for name in ("embcb.shared_vectors", "experts.0.blocks.1.0.weight", "experts.2.blocks.0.0.weight",
                 "expert_gates.ctr.linear.weight", "towers.stay.output.weight", "mlpcb.ctr.gates.2.out.weight",
                 "mlpcb.stay.gates.0.hidden.weight"):
        assert named[name].grad is not None and named[name].grad.abs().sum() > 0, name


def test_multicbmr_scales_are_task_specific_and_optionally_expert_specific():
    shared = build("multicbmr", {"num_experts": 3, "expert_hidden": [16, 8], "tower_hidden": [4]})
    specific = build("multicbmr", {"num_experts": 3, "expert_hidden": [16, 8], "tower_hidden": [4],
                                   "expert_specific": True})
    assert shared.mlpcb["ctr"].layer_dims == [16, 8, 4]
    assert specific.mlpcb["ctr"].layer_dims == [48, 24, 4]  # E x H per expert layer, then the tower
    batch = make_batch()
    shared(batch)
    ctr_scales, stay_scales = shared.mlpcb["ctr"]._last, shared.mlpcb["stay"]._last
    assert not torch.allclose(ctr_scales[0], stay_scales[0])
    specific(batch)
    s = specific.mlpcb["ctr"]._last[0]
    e0, e1 = specific._expert_scales(specific.mlpcb["ctr"]._last, 0), specific._expert_scales(
        specific.mlpcb["ctr"]._last, 1)
    torch.testing.assert_close(e0[0], s[:, :16])
    torch.testing.assert_close(e1[0], s[:, 16:32])
    assert not torch.allclose(e0[0], e1[0])


def test_multicbmr_without_mlpcb_is_mmoe_with_a_wide_part():
    model = build("multicbmr", {"num_experts": 2, "expert_hidden": [16, 8], "tower_hidden": [4],
                                "embcb": {"enabled": False}, "mlpcb": {"enabled": False}})
    batch = make_batch()
    out = model(batch)
    emb = model.sparse_arch(batch.sparse)
    x = torch.cat([emb.concat(model.sparse_arch.features), batch.dense], dim=1)
    wide = emb.wide_sum(model.wide_features)[:, :2] + model.wide_dense(batch.dense)
    experts = torch.stack([e(x) for e in model.experts], dim=1)
    for i, t in enumerate(model.tasks):
        g = torch.softmax(model.expert_gates[t].linear(x), dim=-1)
        mixed = (g.unsqueeze(-1) * experts).sum(1)
        torch.testing.assert_close(out[t], model.towers[t](mixed).squeeze(-1) + wide[:, i])


def test_cbmr_trains_embcb_weights_vary_and_tensorboard_has_calibration_stats(tiny_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from recsys.train.board import event_dir
    from recsys.train.trainer import Trainer

    cfg = tiny_config(model="cbmr", extra=["train.epochs=2", "tensorboard=true", "train.log_every_steps=5",
                                           "model.params={hidden: [32, 16]}"])
    trainer = Trainer(cfg)
    result = trainer.fit()
    assert math.isfinite(result["test"]["ctr/auc"])
    embcb = [m for m in trainer.dmp.modules() if isinstance(m, EmbCB)]
    mlpcb = [m for m in trainer.dmp.modules() if isinstance(m, MlpCB)]
    assert len(embcb) == 1 and len(mlpcb) == 1
    batch = next(iter(trainer.eval_loader("test")))
    with torch.no_grad():
        trainer.dmp(batch)
    w = embcb[0]._last
    assert float((w == 0).float().mean()) < 0.5  # not collapsed
    assert float(w.std(dim=0).mean()) > 1e-3  # varies across samples

    acc = EventAccumulator(event_dir(cfg.run_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    scalars, histograms = set(acc.Tags()["scalars"]), set(acc.Tags()["histograms"])
    for stat in ("weight_mean", "weight_var", "weight_zero_frac"):
        assert any(t.endswith(f"embcb/{stat}") for t in scalars), (stat, sorted(scalars))
    assert any(t.endswith("embcb/weights") for t in histograms)
    assert any(t.endswith("mlpcb/gate0/scales") for t in histograms)
    assert any(t.endswith("mlpcb/gate1/scales") for t in histograms)
    zero_frac = [e.value for t in scalars if t.endswith("embcb/weight_zero_frac") for e in acc.Scalars(t)]
    assert len(zero_frac) >= 2 and max(zero_frac) < 0.5
