import torch
from funnel_util import FUNNEL, NO_FUNNEL, funnel_batch, make_model, touched


def test_shared_bottom_outputs_equal_tower_of_bottom():
    model = make_model("shared_bottom", {"bottom": [12, 8], "tower": [4]})
    model.eval()
    batch = funnel_batch(9, seed=1)
    out = model(batch)
    assert list(out) == FUNNEL.task_names and all(v.shape == (9,) for v in out.values())
    x = torch.cat([model.sparse_arch(batch.sparse).concat(model.sparse_arch.features), batch.dense], dim=1)
    h = model.bottom(x)
    for t in FUNNEL.task_names:
        torch.testing.assert_close(out[t], model.towers.towers[t](h).squeeze(-1))


def test_shared_bottom_bottom_is_shared_towers_are_not():
    model = make_model("shared_bottom", {"bottom": [12], "tower": [4]})
    out = model(funnel_batch(16, seed=2))
    out["cvr"].sum().backward()
    assert touched(model.bottom) and touched(model.towers.towers["cvr"])
    assert not touched(model.towers.towers["ctr"]) and not touched(model.towers.towers["stay"])
    assert model.sparse_arch.ebc.embedding_bags["user"].weight.grad.abs().sum() > 0


def test_shared_bottom_works_without_funnel():
    model = make_model("shared_bottom", schema=NO_FUNNEL)
    assert set(model(funnel_batch(4, schema=NO_FUNNEL))) == {"ctr", "stay"}
