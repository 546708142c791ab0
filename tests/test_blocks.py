"""The shared blocks models are composed of: the feature input, the one MLP layer loop and its scenario
parameterisations, the tower builder, expert backbones by name, the wide part, the funnel base and the gates'
shared pieces. Each is checked against a hand computation."""

import typing

import pytest
import torch
from calib_helpers import SCHEMA, make_batch
from funnel_util import FUNNEL, NO_FUNNEL
from torch import nn

from recsys.errors import ConfigError
from recsys.models.funnel import FunnelModel, FunnelOptions, SharedInputFunnelOptions, split_bias_features
from recsys.models.stan import STANConfig
from recsys.modules.calibration import field_columns, gate_output, scale_fields
from recsys.modules.experts import EXPERT_BACKBONES, PLE, MMoE, MMoEOptions, PLEOptions
from recsys.modules.mlp import MLP, MLPOptions, mlp_layers
from recsys.modules.multitask import TaskTowers, TowerOptions, task_towers
from recsys.modules.scenario import ScenarioLinear, ScenarioMLP, StarLinear, StarMLP
from recsys.modules.sparse import (
    FeatureInput,
    SparseArch,
    check_features,
    dense_first_order,
    first_order_logits,
    wide_width,
)
from recsys.schema import Schema

# ---- feature input


def real(arch: SparseArch) -> SparseArch:
    """``arch`` with its meta-device tables allocated on CPU and initialised."""
    arch.ebc.to_empty(device="cpu")
    for p in arch.ebc.parameters():
        nn.init.uniform_(p, -0.3, 0.3)
    return arch


def test_feature_input_reads_the_chosen_embeddings_then_the_dense_features():
    torch.manual_seed(0)
    arch = real(FeatureInput(SCHEMA, ["item", "user"]))
    batch = make_batch()
    x, emb = arch.read(batch)
    torch.testing.assert_close(x, torch.cat([emb.features["item"], emb.features["user"], batch.dense], dim=1))
    assert arch.width == x.shape[1] == 8 + 8 + 2 and arch.field_dims() == [8, 8]
    assert set(emb.features) == set(SCHEMA.feature_names)  # the other parts of a model read the rest by name
    doubled = arch.main_input(emb, batch, calibrate=lambda e: 2 * e)  # calibration acts before the dense part
    torch.testing.assert_close(doubled, torch.cat([2 * emb.concat(["item", "user"]), batch.dense], dim=1))


def test_feature_input_defaults_and_switches():
    every = FeatureInput(SCHEMA)
    assert every.features == SCHEMA.feature_names and every.use_dense
    assert every.width == every.output_dim(SCHEMA.feature_names) + SCHEMA.dense_dim
    no_dense = FeatureInput(SCHEMA, use_dense=False)
    assert not no_dense.use_dense and no_dense.width == every.width - SCHEMA.dense_dim
    bare = Schema(sparse=SCHEMA.sparse, tasks=SCHEMA.tasks)
    assert not FeatureInput(bare, use_dense=True).use_dense  # nothing to append
    plain = SparseArch(SCHEMA)  # a bare SparseArch's main input is every embedding, nothing dense
    assert plain.features == SCHEMA.feature_names and not plain.use_dense
    assert plain.width == every.width - SCHEMA.dense_dim


def test_feature_input_names_the_config_key_and_the_closest_feature():
    with pytest.raises(ConfigError, match=r"model\.params\.deep_features: 'usr' .* did you mean 'user'"):
        FeatureInput(SCHEMA, ["usr"], option="deep_features")
    assert check_features(SCHEMA, None, "features") == SCHEMA.feature_names


def test_wide_part_is_the_first_order_columns_plus_the_dense_map():
    torch.manual_seed(0)
    arch = real(SparseArch(SCHEMA, wide_dim=wide_width(2)))
    batch = make_batch()
    emb = arch(batch.sparse)
    dense = nn.Linear(2, 2)
    got = first_order_logits(emb, ["user", "scene"], 2, dense, batch.dense)
    expected = (emb.wide["user"] + emb.wide["scene"])[:, :2] + dense(batch.dense)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(first_order_logits(emb, ["user"], 2, None, batch.dense), emb.wide["user"][:, :2])
    assert [wide_width(t) for t in (1, 4, 5)] == [4, 4, 8]
    linear = dense_first_order(FeatureInput(SCHEMA), 3)
    assert isinstance(linear, nn.Linear) and (linear.in_features, linear.out_features) == (2, 3)
    assert dense_first_order(FeatureInput(SCHEMA, use_dense=False), 3) is None


# ---- the one MLP layer loop


def test_mlp_layers_builds_blocks_in_order():
    blocks, output, width = mlp_layers(6, [5, 4], output_dim=3, activation="prelu", dropout=0.1, norm="layer")
    assert [[type(m) for m in b] for b in blocks] == [[nn.Linear, nn.LayerNorm, nn.PReLU, nn.Dropout]] * 2
    assert isinstance(output, nn.Linear) and output.in_features == 4 and width == 3
    blocks, output, width = mlp_layers(6, [], output_dim=None)
    assert blocks == [] and output is None and width == 6
    with pytest.raises(ValueError, match="norm 'group'"):
        mlp_layers(6, [], norm="group")  # refused even when there is no hidden layer to normalise


def test_mlp_options_build_the_mlp_they_describe():
    mlp = MLPOptions(activation="tanh", dropout=0.25).mlp(6, [5], output_dim=2, norm="batch")
    assert isinstance(mlp, MLP) and mlp.output_dim == 2 and mlp.hidden_dims == [5]
    assert [type(m) for m in mlp.blocks[0]] == [nn.Linear, nn.BatchNorm1d, nn.Tanh, nn.Dropout]
    assert mlp.blocks[0][3].p == 0.25


def test_star_mlp_is_the_scenario_mlp_over_star_layers():
    torch.manual_seed(3)
    star = StarMLP(6, [5], num_scenarios=3, output_dim=2, activation="gelu", dropout=0.1)
    torch.manual_seed(3)
    generic = ScenarioMLP(6, 3, [5], output_dim=2, activation="gelu", dropout=0.1, layer=StarLinear)
    assert list(star.state_dict()) == list(generic.state_dict())
    for a, b in zip(star.state_dict().values(), generic.state_dict().values()):
        torch.testing.assert_close(a, b)
    star.eval()
    x = torch.randn(4, 3, 6)
    w0 = star.layers[0].effective_weight()
    h = nn.functional.gelu(torch.einsum("bsi,sio->bso", x, w0) + star.layers[0].shared_bias
                           + star.layers[0].scenario_bias)
    last = star.layers[-1]
    expected = torch.einsum("bsi,sio->bso", h, last.effective_weight()) + last.shared_bias + last.scenario_bias
    torch.testing.assert_close(star(x), expected)


def test_scenario_mlp_layer_norm_normalises_every_view():
    torch.manual_seed(0)
    towers = ScenarioMLP(4, 2, [3], norm="layer", activation="tanh")
    assert [type(m) for m in towers.layers] == [ScenarioLinear, nn.LayerNorm, nn.Tanh]
    x = torch.randn(5, 4)
    z = towers.layers[1](towers.layers[0](x))  # [B, S, 3]: each view normalised over its units
    torch.testing.assert_close(z.mean(dim=-1), torch.zeros(5, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(towers(x), torch.tanh(z))
    with pytest.raises(ValueError, match="PartitionedNorm"):
        ScenarioMLP(4, 2, [3], norm="batch")


# ---- towers and experts


def test_task_towers_builder_and_options():
    towers = task_towers({"a": 4, "b": 6}, [3], activation="silu")
    assert isinstance(towers, nn.ModuleDict) and list(towers) == ["a", "b"]
    assert all(isinstance(t, MLP) and t.output_dim == 1 and t.hidden_dims == [3] for t in towers.values())
    assert isinstance(towers["b"].blocks[0][1], nn.SiLU) and towers["b"].blocks[0][0].in_features == 6
    built = TowerOptions(tower=[7, 2], activation="gelu").towers(5, ["x", "y"])
    assert isinstance(built, TaskTowers) and built.tasks == ["x", "y"]
    assert built.towers["y"].hidden_dims == [7, 2] and isinstance(built.towers["y"].blocks[1][1], nn.GELU)


def test_expert_backbones_by_name_match_stan_and_use_the_options():
    assert set(EXPERT_BACKBONES) == set(typing.get_args(typing.get_type_hints(STANConfig)["backbone"]))
    mmoe = EXPERT_BACKBONES["mmoe"](6, ["a", "b"], MMoEOptions(num_experts=3, expert_hidden=[4, 2],
                                                               activation="prelu"))
    assert isinstance(mmoe, MMoE) and len(mmoe.experts) == 3 and mmoe.output_dim == 2
    assert isinstance(mmoe.experts.experts[0].blocks[0][1], nn.PReLU)
    ple = EXPERT_BACKBONES["ple"](6, ["a", "b"], PLEOptions(levels=2, specific_experts=2, shared_experts=0,
                                                            expert_hidden=[3], dropout=0.5))
    assert isinstance(ple, PLE) and len(ple.levels) == 2 and ple.output_dim == 3
    assert len(ple.levels[0].specific["a"]) == 2 and ple.levels[0].shared is None
    out = ple.eval()(torch.randn(4, 6))
    assert set(out) == {"a", "b"} and out["a"].shape == (4, 3)


# ---- the funnel base


class _Funnel(FunnelModel):
    def forward(self, batch):  # pragma: no cover - not run
        raise NotImplementedError


def test_funnel_base_finds_the_funnel_and_the_other_tasks():
    model = _Funnel(FUNNEL, FunnelOptions())
    assert (model.ctr, model.cvr, model.others) == ("ctr", "cvr", ["stay"])
    with pytest.raises(ConfigError, match="needs a click -> conversion funnel"):
        _Funnel(NO_FUNNEL, FunnelOptions())

    class RatioOnly(_Funnel):
        funnel_required = False

    assert RatioOnly(NO_FUNNEL, FunnelOptions()).ctr is None  # only a sample ratio needs the funnel
    with pytest.raises(ConfigError, match="needs a click -> conversion funnel"):
        RatioOnly(NO_FUNNEL, FunnelOptions(ctr_cvr_ratio=1.0))


def test_funnel_outputs_are_in_schema_order_with_the_other_towers():
    model = _Funnel(FUNNEL, FunnelOptions())
    model.extra = model.extra_towers(3, SharedInputFunnelOptions(extra_hidden=[2]))
    x = torch.randn(5, 3)
    ctr, cvr = torch.randn(5), torch.randn(5)
    out = model.funnel_outputs(ctr, cvr, x)
    assert list(out) == FUNNEL.task_names
    torch.testing.assert_close(out["ctr"], ctr)
    torch.testing.assert_close(out["stay"], model.extra.towers["stay"](x).squeeze(-1))


def test_split_bias_features_defaults_to_the_other_features():
    assert split_bias_features(FUNNEL, None, ["position"], "m") == (["user", "item"], ["position"])
    assert split_bias_features(FUNNEL, ["item"], [], "m") == (["item"], [])
    with pytest.raises(ConfigError, match="model 'm': no sparse feature left"):
        split_bias_features(FUNNEL, None, ["user", "item", "position"], "m")


# ---- the gates' shared pieces


def test_gate_output_and_field_scaling():
    x = torch.tensor([[-1.0, 0.0, 2.0]])
    torch.testing.assert_close(gate_output("scaled_sigmoid", x, 3.0), 3.0 * torch.sigmoid(x))
    torch.testing.assert_close(gate_output("sigmoid", x), torch.sigmoid(x))
    torch.testing.assert_close(gate_output("relu", x), torch.relu(x))
    with pytest.raises(ValueError, match="gate output activation"):
        gate_output("softmax", x)
    columns = field_columns([2, 1])
    assert columns.tolist() == [0, 0, 1]
    e = torch.tensor([[1.0, 2.0, 3.0]])
    torch.testing.assert_close(scale_fields(e, torch.tensor([[10.0, 100.0]]), columns, "field"),
                               torch.tensor([[10.0, 20.0, 300.0]]))
    torch.testing.assert_close(scale_fields(e, torch.tensor([[1.0, 0.5, 2.0]]), columns, "field_dim"),
                               torch.tensor([[1.0, 1.0, 6.0]]))
