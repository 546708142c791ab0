"""DNN MT-S (``dnn_mts``): shared bottom, one tower per scenario; the batched per-scenario MLP."""

import torch
from scenario_helpers import S, grads_of, make, nonzero, scenario_batch

from recsys.modules.scenario import ScenarioMLP, select_scenario


def test_scenario_mlp_equals_one_mlp_per_scenario():
    torch.manual_seed(0)
    towers = ScenarioMLP(5, num_scenarios=3, hidden=[4], output_dim=2)
    x = torch.randn(7, 5)
    out = towers(x)
    assert out.shape == (7, 3, 2)
    first, last = towers.layers[0], towers.layers[-1]
    for s in range(3):
        h = torch.relu(x @ first.weight[s] + first.bias[s])
        torch.testing.assert_close(out[:, s], h @ last.weight[s] + last.bias[s])
    scenario = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    torch.testing.assert_close(select_scenario(out[:, :, 0], scenario), out[torch.arange(7), scenario, 0])


def test_forward_is_the_own_scenario_view_for_every_task():
    model = make("dnn_mts", {"hidden": [16], "tower_hidden": [8]})
    batch = scenario_batch(n=9, seed=1)
    views = model.scenario_views(batch)
    assert set(views.outputs) == {"ctr", "stay"} and views.outputs["ctr"].shape == (9, S)
    assert views.instance.shape == (9, model.instance_dim)
    out = model(batch)
    for task in ("ctr", "stay"):
        torch.testing.assert_close(out[task], views.outputs[task][torch.arange(9), batch.scenario])
    # the views differ between scenarios: each has its own tower
    assert (views.outputs["ctr"][:, 0] - views.outputs["ctr"][:, 1]).abs().max() > 1e-4


def test_rows_train_only_their_own_scenarios_tower():
    model = make("dnn_mts", {"hidden": [16], "tower_hidden": [8]})
    batch = scenario_batch(n=6, seed=3, scenario=[2, 2, 0, 2, 0, 0])
    sum(v.sum() for v in model(batch).values()).backward()
    grads = grads_of(model)
    tower = grads["towers.layers.0.weight"]
    assert nonzero(tower[0]) and nonzero(tower[2]) and not nonzero(tower[1])
    assert nonzero(grads["bottom.blocks.0.0.weight"])
    for table in ("user", "host", "tags", "position", "scene"):
        assert nonzero(grads[f"sparse_arch.ebc.embedding_bags.{table}.weight"]), table
