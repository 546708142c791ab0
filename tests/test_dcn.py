"""DCN / DCN-V2 and the MT-S variant: torchrec's cross networks, parallel deep part, per-scenario towers."""

import pytest
import torch
from scenario_helpers import S, grads_of, make, nonzero, scenario_batch
from torchrec.modules.crossnet import CrossNet, LowRankCrossNet, VectorCrossNet

from recsys.modules.interaction import cross_network


def test_cross_network_versions():
    assert isinstance(cross_network(6, 2, "v1"), VectorCrossNet)
    assert isinstance(cross_network(6, 2, "v2"), CrossNet)
    assert isinstance(cross_network(6, 2, "v2", low_rank=3), LowRankCrossNet)
    with pytest.raises(ValueError, match="DCN-V2 only"):
        cross_network(6, 2, "v1", low_rank=3)
    net = cross_network(6, 1, "v1")
    x = torch.randn(4, 6)
    w, b = net.kernels[0].squeeze(1), net.bias[0].squeeze(1)
    torch.testing.assert_close(net(x), x * (x @ w).unsqueeze(1) + b + x)  # x0 (x0^T w) + b + x0


@pytest.mark.parametrize("params", [{}, {"version": "v2", "low_rank": 8}, {"version": "v2"}])
def test_dcn_reads_cross_and_deep_outputs(params):
    model = make("dcn", {"hidden": [16], "cross_layers": 2, **params})
    batch = scenario_batch(n=5, seed=1)
    out = model(batch)
    x, h = model.bottom(batch)
    assert h.shape == (5, x.shape[1] + 16)
    torch.testing.assert_close(h[:, : x.shape[1]], model.cross(x))
    sum(v.sum() for v in out.values()).backward()
    grads = grads_of(model)
    cross = [k for k in grads if k.startswith("cross.") and "bias" not in k]
    assert cross and all(nonzero(grads[k]) for k in cross)
    assert nonzero(grads["deep.blocks.0.0.weight"])
    assert nonzero(grads["sparse_arch.ebc.embedding_bags.user.weight"])


def test_dcn_mts_towers_per_scenario():
    model = make("dcn_mts", {"hidden": [16], "tower_hidden": [8], "version": "v2"})
    batch = scenario_batch(n=6, seed=5, scenario=[0, 2, 0, 2, 2, 0])
    views = model.scenario_views(batch)
    assert views.outputs["ctr"].shape == (6, S) and views.instance.shape == (6, model.instance_dim)
    model(batch)["ctr"].sum().backward()
    tower = model.towers.layers[0].weight.grad
    assert nonzero(tower[0]) and nonzero(tower[2]) and not nonzero(tower[1])
    assert nonzero(model.cross.kernels[0].grad)
