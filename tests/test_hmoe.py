"""HMoE: MMoE over scenarios, scenario towers, label-space mixing with stop-gradient on the other towers."""

import torch
from scenario_helpers import S, grads_of, make, nonzero, scenario_batch

from recsys.modules.scenario import LabelSpaceMixer


def test_label_space_mixing_equals_hand_computation_and_stops_gradients():
    torch.manual_seed(0)
    mixer = LabelSpaceMixer(4, num_scenarios=3)
    x = torch.randn(5, 4)
    towers = torch.randn(5, 3, 2, requires_grad=True)
    out = mixer(x, towers)
    w = torch.softmax(mixer.gate(x).view(5, 3, 3), dim=-1)
    torch.testing.assert_close(out, torch.einsum("bij,bjo->bio", w, towers))
    assert torch.allclose(w.sum(-1), torch.ones(5, 3))
    out[:, 1].sum().backward()  # scenario 1's prediction
    grad = towers.grad.abs().sum(dim=(0, 2))
    assert grad[1] > 0 and grad[0] == 0 and grad[2] == 0  # only its own tower gets gradient
    assert nonzero(mixer.gate.weight.grad)  # the weights on the other towers still learn


def test_hmoe_rows_train_their_own_tower_and_the_shared_experts():
    model = make("hmoe", {"num_experts": 3, "expert_hidden": [16], "tower_hidden": [8]})
    batch = scenario_batch(n=6, seed=1, scenario=[0] * 6)
    views = model.scenario_views(batch)
    assert views.outputs["ctr"].shape == (6, S) and views.outputs["stay"].shape == (6, S)
    model(batch)["ctr"].sum().backward()
    grads = grads_of(model)
    assert nonzero(grads["towers.0.output.weight"])
    assert not nonzero(grads["towers.1.output.weight"]) and not nonzero(grads["towers.2.output.weight"])
    assert nonzero(grads["mmoe.experts.experts.0.blocks.0.0.weight"])
    assert nonzero(grads["mmoe.gates.scenario0.linear.weight"])
    assert not nonzero(grads["mmoe.gates.scenario1.linear.weight"])
    assert nonzero(grads["mixer.gate.weight"])
    # yet scenario 0's prediction reads the other towers (through stop-gradient)
    out = views.outputs["ctr"]
    with torch.no_grad():
        model.towers[1].output.bias += 1.0
    moved = model.scenario_views(batch).outputs["ctr"]
    assert (moved[:, 0] - out[:, 0]).abs().min() > 1e-6
