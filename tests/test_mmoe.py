import torch
from funnel_util import FUNNEL, funnel_batch, make_model, touched


def test_mmoe_gates_sum_to_one_per_task_and_vary_per_sample():
    model = make_model("mmoe", {"num_experts": 3, "expert_hidden": [16, 8], "tower": [4]})
    out = model(funnel_batch(32, seed=1))
    assert list(out) == FUNNEL.task_names and all(v.shape == (32,) for v in out.values())
    gates = model.mmoe.gate_weights()
    assert set(gates) == set(FUNNEL.task_names)  # a softmax gate per task
    for g in gates.values():
        assert g.shape == (32, 3)
        torch.testing.assert_close(g.sum(dim=1), torch.ones(32))
        assert (g.std(dim=0) > 0).all()
    assert not torch.allclose(gates["ctr"], gates["cvr"])


def test_mmoe_output_is_the_tower_of_the_gated_mixture():
    model = make_model("mmoe", {"num_experts": 2, "expert_hidden": [8], "tower": []})
    model.eval()
    batch = funnel_batch(6, seed=2)
    out = model(batch)
    x = torch.cat([model.sparse_arch(batch.sparse).concat(model.sparse_arch.features), batch.dense], dim=1)
    experts = torch.stack([e(x) for e in model.mmoe.experts.experts], dim=1)       # [B, E, H]
    for t in FUNNEL.task_names:
        gate = torch.softmax(model.mmoe.gates[t].linear(x), dim=-1)                 # [B, E]
        mixed = (gate.unsqueeze(-1) * experts).sum(dim=1)
        torch.testing.assert_close(out[t], model.towers.towers[t](mixed).squeeze(-1))


def test_mmoe_task_gradients_reach_its_gate_and_the_shared_experts():
    model = make_model("mmoe", {"num_experts": 3, "expert_hidden": [8], "tower": [4]})
    model(funnel_batch(32, seed=3))["cvr"].sum().backward()
    assert touched(model.mmoe.gates["cvr"]) and touched(model.mmoe.experts)
    assert not touched(model.mmoe.gates["ctr"]) and not touched(model.towers.towers["ctr"])
