"""DeepFM and its MT-S variant: FM's pairwise sum, the additive parts, per-scenario towers."""

import itertools

import pytest
import torch
from scenario_helpers import SCHEMA, S, grads_of, make, nonzero, scenario_batch

from recsys.errors import ConfigError
from recsys.modules.interaction import FactorizationMachine

FEATURES = ["user", "host", "tags", "position", "scene"]


def test_fm_is_the_sum_of_pairwise_inner_products():
    v = torch.randn(4, 5, 8)
    expected = sum((v[:, i] * v[:, j]).sum(dim=1) for i, j in itertools.combinations(range(5), 2))
    torch.testing.assert_close(FactorizationMachine()(v), expected)


def test_deepfm_logit_is_first_order_plus_fm_plus_deep():
    model = make("deepfm", {"hidden": [16]})
    batch = scenario_batch(n=5, seed=2)
    with torch.no_grad():
        model.fm_scale.copy_(torch.tensor([1.0, 0.5]))
    out = model(batch)
    emb = model.sparse_arch(batch.sparse)
    first = emb.wide_sum(FEATURES)[:, :2] + model.dense_linear(batch.dense)
    fm = FactorizationMachine()(emb.stack(FEATURES))
    deep = model.heads(model.deep(torch.cat([emb.concat(FEATURES), batch.dense], dim=1)))
    torch.testing.assert_close(out["ctr"], first[:, 0] + fm + deep["ctr"])
    torch.testing.assert_close(out["stay"], first[:, 1] + 0.5 * fm + deep["stay"])
    sum(v.sum() for v in out.values()).backward()
    grads = grads_of(model)
    for table in ("user", "user__wide", "scene", "scene__wide"):
        assert nonzero(grads[f"sparse_arch.ebc.embedding_bags.{table}.weight"]), table
    assert nonzero(grads["fm_scale"])


def test_deepfm_mts_shares_the_shallow_part_and_splits_the_towers():
    model = make("deepfm_mts", {"hidden": [16], "tower_hidden": [8]})
    batch = scenario_batch(n=6, seed=4, scenario=[1, 1, 1, 1, 1, 1])
    views = model.scenario_views(batch).outputs["ctr"]
    assert views.shape == (6, S)
    emb = model.sparse_arch(batch.sparse)
    towers = model.towers(model.bottom(model.sparse_arch.main_input(emb, batch)))[:, :, 0]
    # views differ exactly by the towers: the first-order and FM terms are the same for every scenario
    torch.testing.assert_close(views - views[:, :1], towers - towers[:, :1])
    model(batch)["ctr"].sum().backward()
    tower = model.towers.layers[0].weight.grad
    assert nonzero(tower[1]) and not nonzero(tower[0]) and not nonzero(tower[2])


def test_fm_needs_equal_widths():
    from dataclasses import replace

    schema = replace(SCHEMA, sparse=SCHEMA.sparse[:-1] + (replace(SCHEMA.sparse[-1], embedding_dim=12),))
    with pytest.raises(ConfigError, match="equal embedding widths"):
        make("deepfm", schema=schema)
