"""DFFM: pairwise micro-MLPs whose weights come from the scenario (domain) embedding."""

import itertools

import pytest
import torch
from scenario_helpers import SCHEMA, grads_of, make, nonzero, scenario_batch

from recsys.errors import ConfigError
from recsys.modules.interaction import DomainFacilitatedInteraction


def test_dffi_equals_a_per_sample_micro_mlp_per_pair():
    torch.manual_seed(0)
    dffi = DomainFacilitatedInteraction(num_fields=4, dim=3, domain_dim=5, hidden=6, out_dim=2)
    fields, domain = torch.randn(2, 4, 3), torch.randn(2, 5)
    out = dffi(fields, domain).view(2, 6, 2)
    for b in range(2):
        w1 = dffi.w1(domain[b]).view(6, 6)
        w2 = dffi.w2(domain[b]).view(6, 2)
        for p, (i, j) in enumerate(itertools.combinations(range(4), 2)):
            pair = torch.cat([fields[b, i], fields[b, j]])
            h = torch.relu(pair @ w1 + dffi.b1(domain[b]))
            torch.testing.assert_close(out[b, p], h @ w2 + dffi.b2(domain[b]))


def test_the_same_fields_interact_differently_per_domain():
    torch.manual_seed(1)
    dffi = DomainFacilitatedInteraction(num_fields=3, dim=4, domain_dim=4, hidden=4, out_dim=1)
    fields = torch.randn(1, 3, 4).expand(2, -1, -1)
    out = dffi(fields, torch.randn(2, 4))
    assert (out[0] - out[1]).abs().max() > 1e-4


def test_dffm_scenario_changes_the_interactions_and_gets_gradient():
    model = make("dffm", {"hidden": [16], "micro_hidden": 4, "micro_out": 2})
    assert model.domain_features == ["scene"] and "scene" not in model.fields
    batch = scenario_batch(n=6, seed=2, scenario=[0] * 6)
    out = model(batch)
    sum(v.sum() for v in out.values()).backward()
    grads = grads_of(model)
    assert nonzero(grads["sparse_arch.ebc.embedding_bags.scene.weight"])
    assert nonzero(grads["dffi.w1.weight"]) and nonzero(grads["dffi.w2.weight"])
    moved = scenario_batch(n=6, seed=2, scenario=[2] * 6)  # same rows, another scenario
    emb, emb2 = model.sparse_arch(batch.sparse), model.sparse_arch(moved.sparse)
    pairs = model.dffi(emb.stack(model.fields), emb.concat(["scene"]))
    pairs2 = model.dffi(emb2.stack(model.fields), emb2.concat(["scene"]))
    assert (pairs - pairs2).abs().amin(dim=1).min() > 0  # every row's interactions changed


def test_dffm_needs_a_domain_feature():
    from dataclasses import replace

    schema = replace(SCHEMA, sparse=SCHEMA.sparse[:-1], scenario_feature=None)
    with pytest.raises(ConfigError, match="domain embedding"):
        make("dffm", schema=schema)
    assert make("dffm", {"domain_features": ["position"]}, schema=schema).fields == ["user", "host", "tags"]
