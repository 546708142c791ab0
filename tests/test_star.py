"""STAR: partitioned normalisation with per-scenario statistics, star-topology layers, auxiliary network."""

import pytest
import torch
from scenario_helpers import S, grads_of, make, nonzero, scenario_batch

from recsys.modules.scenario import PartitionedNorm, StarLinear


def pn_batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(64, 3, generator=g) * 2.0 + 5.0     # scenario 0: mean 5, sd 2
    x1 = torch.randn(32, 3, generator=g) * 0.5 - 3.0     # scenario 1: mean -3, sd 0.5
    x = torch.cat([x0, x1])
    scenario = torch.tensor([0] * 64 + [1] * 32)
    return x, scenario, x0, x1


def test_partitioned_norm_uses_each_scenarios_statistics_at_eval():
    pn = PartitionedNorm(3, num_scenarios=2, momentum=1.0)  # running statistics = the last batch's
    with torch.no_grad():
        pn.gamma_s.copy_(torch.tensor([[2.0, 2.0, 2.0], [0.5, 0.5, 0.5]]))
        pn.beta_s.copy_(torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]))
    x, scenario, x0, x1 = pn_batches()
    pn.train()
    train_views = pn(x, scenario, torch.ones(96))
    # training: each scenario's rows are normalised with that scenario's batch moments
    own = train_views[torch.arange(96), scenario]
    torch.testing.assert_close(((own[:64] - 1.0) / 2.0).mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(((own[64:] + 1.0) / 0.5).std(0, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(pn.running_mean, torch.stack([x0.mean(0), x1.mean(0)]))
    torch.testing.assert_close(pn.running_var, torch.stack([x0.var(0), x1.var(0)]))  # unbiased, like BN

    pn.eval()
    test = torch.tensor([[5.0, 5.0, 5.0], [-3.0, 0.0, 1.0]])
    views = pn(test, torch.tensor([1, 0]), torch.ones(2))
    for s, (mean, var) in enumerate([(x0.mean(0), x0.var(0)), (x1.mean(0), x1.var(0))]):
        expected = (test - mean) / torch.sqrt(var + pn.eps) * pn.gamma_s[s] + pn.beta_s[s]
        torch.testing.assert_close(views[:, s], expected)  # every row, scenario s's statistics and affine
    # evaluation does not depend on the other rows of the batch
    torch.testing.assert_close(pn(test[:1], torch.tensor([1]), torch.ones(1))[0], views[0])


def test_partitioned_norm_ignores_padding_and_absent_scenarios():
    pn = PartitionedNorm(3, num_scenarios=3, momentum=1.0)
    x, scenario, x0, _ = pn_batches()
    weights = torch.ones(96)
    x = x.clone()
    x[:4] = 1000.0
    weights[:4] = 0.0  # padding rows must not move the statistics
    pn(x, scenario, weights)
    torch.testing.assert_close(pn.running_mean[0], x0[4:].mean(0))
    torch.testing.assert_close(pn.running_mean[2], torch.zeros(3))  # no rows of scenario 2: unchanged
    torch.testing.assert_close(pn.running_var[2], torch.ones(3))


def test_star_linear_multiplies_shared_and_scenario_weights():
    layer = StarLinear(4, 2, num_scenarios=3)
    with torch.no_grad():
        layer.scenario_weight.uniform_(0.5, 1.5)
        layer.scenario_bias.uniform_(-1, 1)
    x = torch.randn(5, 3, 4)
    out = layer(x)
    for s in range(3):
        w = layer.shared_weight * layer.scenario_weight[s]
        torch.testing.assert_close(out[:, s], x[:, s] @ w + layer.shared_bias + layer.scenario_bias[s])


def test_star_trains_only_the_present_scenarios_weights():
    model = make("star", {"hidden": [16], "aux_hidden": [8]})
    batch = scenario_batch(n=8, seed=1, scenario=[0, 2, 0, 2, 0, 2, 0, 2])
    views = model.scenario_views(batch)
    assert views.outputs["ctr"].shape == (8, S)
    model(batch)["ctr"].sum().backward()
    grads = grads_of(model)
    specific = grads["star.layers.0.scenario_weight"]
    assert nonzero(specific[0]) and nonzero(specific[2]) and not nonzero(specific[1])
    assert nonzero(grads["star.layers.0.shared_weight"])
    assert nonzero(grads["norm.gamma"]) and not nonzero(grads["norm.gamma_s"][1])
    emb = grads["scenario_embedding"]
    assert nonzero(emb[0]) and not nonzero(emb[1])
    assert nonzero(grads["sparse_arch.ebc.embedding_bags.position.weight"])  # an auxiliary (context) feature


def test_star_auxiliary_network_adds_a_per_scenario_term():
    model = make("star", {"hidden": [16], "aux_hidden": [8]})
    model.eval()
    batch = scenario_batch(n=4, seed=2)
    before = model.scenario_views(batch).outputs["ctr"].detach()
    with torch.no_grad():
        model.scenario_embedding[1] += 1.0
    after = model.scenario_views(batch).outputs["ctr"].detach()
    changed = (after - before).abs().amax(dim=0)
    assert changed[1] > 1e-5 and changed[0] == 0 and changed[2] == 0


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_star_rows_depend_on_the_batch_only_in_training(mode):
    model = make("star", {"hidden": [16]})
    getattr(model, mode)()
    batch = scenario_batch(n=8, seed=3)
    full = model(batch)["ctr"].detach()
    small = scenario_batch(n=8, seed=3)
    small.dense = small.dense.clone()
    small.dense[1:] += 10.0  # change every other row
    first = model(small)["ctr"].detach()[0]
    if mode == "eval":
        assert first == pytest.approx(float(full[0]), abs=1e-6)  # running statistics per scenario
    else:
        assert abs(float(first) - float(full[0])) > 1e-6  # batch statistics
