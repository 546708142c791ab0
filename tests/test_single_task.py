import pytest
import torch
from funnel_util import FUNNEL, NO_FUNNEL, funnel_batch, make_model, table_grads, touched

from recsys.config import ModelConfig
from recsys.errors import ConfigError
from recsys.models import build_model


def test_bias_net_is_added_to_each_task_logit():
    model = make_model("single_task", {"hidden": [8], "bias_hidden": [4]})
    model.eval()
    assert model.bias_features == ["position"] and "position" not in model.sparse_arch.features
    batch = funnel_batch(10, seed=1)
    out = model(batch)
    emb = model.sparse_arch(batch.sparse)
    x = torch.cat([emb.concat(model.sparse_arch.features), batch.dense], dim=1)
    b = emb.concat(["position"])
    for t in FUNNEL.task_names:
        main = model.towers.towers[t](x).squeeze(-1)
        bias = model.bias.towers[t](b).squeeze(-1)
        torch.testing.assert_close(out[t], main + bias)
        assert bias.std() > 0  # it varies with the position


def test_position_is_learned_by_the_bias_nets_only_and_towers_are_independent():
    model = make_model("single_task", {"hidden": [8], "bias_hidden": [4]})
    out = model(funnel_batch(16, seed=2))
    out["cvr"].sum().backward()
    assert touched(model.towers.towers["cvr"]) and touched(model.bias.towers["cvr"])
    assert not touched(model.towers.towers["ctr"]) and not touched(model.bias.towers["ctr"])
    assert model.sparse_arch.ebc.embedding_bags["position"].weight.grad.abs().sum() > 0
    model.zero_grad()
    with torch.no_grad():
        model.bias.towers["cvr"].output.weight.zero_()  # cut the bias net: no other path reaches position
    model(funnel_batch(16, seed=2))["cvr"].sum().backward()
    grads = table_grads(model)
    assert grads["position"].abs().sum() == 0 and grads["user"].abs().sum() > 0


def test_embedding_grad_makes_the_cvr_embeddings_single_task():
    model = make_model("single_task", {"hidden": [8], "embedding_grad": {"ctr": 0.0, "stay": 0.0}})
    out = model(funnel_batch(16, seed=3))
    (out["ctr"].sum() + out["stay"].sum()).backward(retain_graph=True)
    assert all(g.abs().sum() == 0 for g in table_grads(model).values())
    assert touched(model.towers.towers["ctr"])  # its own tower still learns
    out["cvr"].sum().backward()
    assert all(g.abs().sum() > 0 for g in table_grads(model).values())


def test_single_task_options_are_checked():
    with pytest.raises(ConfigError, match="embedding_grad: 'ctx' is not a task"):
        build_model(ModelConfig(name="single_task", params={"embedding_grad": {"ctx": 0.0}}), FUNNEL)
    with pytest.raises(ConfigError, match="did you mean 'position'"):
        build_model(ModelConfig(name="single_task", params={"bias_features": ["positon"]}), FUNNEL)
    with pytest.raises(ConfigError, match="funnel"):
        build_model(ModelConfig(name="single_task", params={"ctr_cvr_ratio": 1.0}), NO_FUNNEL)
    plain = make_model("single_task", {"bias_features": []}, schema=NO_FUNNEL)
    assert plain.bias is None and set(plain(funnel_batch(4, schema=NO_FUNNEL))) == {"ctr", "stay"}
