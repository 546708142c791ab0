"""PEPNet: EPNet and PPNet gates, stop-gradient, per-task and per-sample parameters."""

import torch
from calib_helpers import SCHEMA, build, grads_of, make_batch, table_grad

from recsys.models.pepnet import PEPNet


def test_pepnet_defaults_follow_the_schema_groups():
    model = build("pepnet", {"hidden": [16, 8]})
    assert isinstance(model, PEPNet)
    assert model.domain_features == ["scene"]
    assert model.prior_features == ["user", "host", "item"]
    assert model.ppnet.serial is False and model.ppnet.stop_gradient is True
    assert model.ppnet.layer_dims == [32, 16]  # one gate per layer, split between the 2 tasks
    assert model.epnet.gate.gamma == 2.0


def test_pepnet_outputs_and_gradients_reach_tables_and_gates():
    model = build("pepnet", {"hidden": [16, 8]})
    batch = make_batch()
    out = grads_of(model, batch)
    assert set(out) == {"ctr", "stay"} and all(v.shape == (8,) for v in out.values())
    for table in ("user", "host", "item", "tags", "scene"):
        assert table_grad(model, table).abs().sum() > 0, table
    named = dict(model.named_parameters())
    for name in ("epnet.gate.hidden.weight", "epnet.gate.out.weight", "ppnet.gates.0.hidden.weight",
                 "ppnet.gates.1.out.weight", "towers.ctr.output.weight"):
        assert named[name].grad.abs().sum() > 0, name


def test_pepnet_stop_gradient_leaves_the_main_embeddings_to_the_main_path():
    stop = build("pepnet", {"hidden": [16, 8]})
    free = build("pepnet", {"hidden": [16, 8], "stop_gradient": False})
    free.load_state_dict(stop.state_dict())
    batch = make_batch()
    grads_of(stop, batch)
    grads_of(free, batch)
    g_stop, g_free = table_grad(stop, "tags").clone(), table_grad(free, "tags").clone()
    # 'tags' is neither a prior nor a domain feature: with stop-gradient it learns only through the towers,
    # i.e. exactly as if the gates' outputs were constants
    hooks = [free.epnet.gate.register_forward_hook(lambda m, i, o: o.detach()),
             free.ppnet.register_forward_hook(lambda m, i, o: tuple(t.detach() for t in o))]
    grads_of(free, batch)
    for h in hooks:
        h.remove()
    g_const = table_grad(free, "tags")
    torch.testing.assert_close(g_stop, g_const)
    assert not torch.allclose(g_free, g_const)


def test_pepnet_gates_are_per_sample_and_per_task():
    model = build("pepnet", {"hidden": [16, 8]})
    batch = make_batch(n=12)
    model(batch)
    ep = model.epnet._last
    assert ep.shape == (12, len(SCHEMA.sparse)) and (ep.std(dim=0) > 1e-5).all()
    first = model.ppnet._last[0]
    assert (first.std(dim=0) > 1e-5).all()
    assert not torch.allclose(first[:, :16], first[:, 16:])  # ctr's and stay's slices differ


def test_pepnet_switches_off_to_per_task_towers():
    model = build("pepnet", {"hidden": [16, 8], "epnet": False, "ppnet": False})
    assert model.epnet is None and model.ppnet is None
    batch = make_batch()
    out = model(batch)
    x = torch.cat([model.sparse_arch(batch.sparse).concat(model.sparse_arch.features), batch.dense], dim=1)
    for t in model.tasks:
        torch.testing.assert_close(out[t], model.towers[t](x).squeeze(-1))
