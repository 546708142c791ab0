"""SSIM: the straight-through mask, the KL term, the loss over scenario towers, search -> export -> retrain."""

import json
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from scenario_helpers import SCHEMA, S, grads_of, make, nonzero, scenario_batch

from recsys.cli import main
from recsys.errors import ConfigError
from recsys.modules.selection import SelectionNet, hard_mask, kl_to_all_shared, share_weights
from recsys.train.losses import MultiTaskLoss, TrainModule


def bce(logit, y):
    p = 1 / (1 + math.exp(-logit))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


# --- selection network -----------------------------------------------------------------------------------------
def test_ste_forward_is_a_hard_mask_and_its_gradient_flows():
    p = torch.tensor([0.05, 0.3, 0.49, 0.51, 0.8, 0.99], requires_grad=True)
    g = hard_mask(p, eps=0.5)
    assert g.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]  # exactly 0/1
    upstream = torch.tensor([3.0, -2.0, 0.5, -4.0, 0.25, 7.0])
    g.backward(upstream)
    # straight through, clamped to [-1, 1], then through relu(p - eps): zero where p <= eps
    assert p.grad.tolist() == [0.0, 0.0, 0.0, -1.0, 0.25, 1.0]


def test_selection_net_anneals_temperature_and_uses_the_own_scenario_head():
    sel = SelectionNet(4, num_scenarios=3, hidden=[8], eps=0.5, temperature_start=1.0, temperature_end=16.0,
                       anneal_steps=4)
    x, scenario = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    assert float(sel.temperature()) == pytest.approx(1.0)
    sel.train()
    for _ in range(2):
        sel(x, scenario)
    assert float(sel.temperature()) == pytest.approx(4.0)  # geometric: 1 -> 16 over 4 steps
    for _ in range(5):
        sel(x, scenario)
    assert float(sel.temperature()) == pytest.approx(16.0)  # stays at the end value
    sel.eval()
    p, g = sel(x, scenario)
    assert int(sel.step) == 7  # evaluation forwards do not advance the schedule
    m = sel.heads(sel.mlp(x))
    expected = torch.sigmoid(16.0 * m[torch.arange(6), scenario])
    torch.testing.assert_close(p, expected)
    assert torch.equal(g, (expected > 0.5).float())


def test_kl_term_equals_hand_computation():
    p = torch.tensor([0.9, 0.2, 0.6, 0.01])
    weights = torch.tensor([1.0, 1.0, 0.0, 1.0])  # the third row is padding
    expected = -(math.log(0.9) + math.log(0.2) + math.log(0.01)) / 3
    assert float(kl_to_all_shared(p, weights)) == pytest.approx(expected, rel=1e-6)
    # D_KL(Bernoulli(1) || Bernoulli(p)) = 1 * log(1 / p) + 0 * log(0 / (1 - p))
    assert float(kl_to_all_shared(torch.tensor([1.0]), torch.ones(1))) == 0.0


def test_share_weights_route_instances_to_towers():
    w = share_weights(torch.tensor([0.0, 1.0, 0.0]), torch.tensor([2, 0, 1]), 3)
    expected = torch.tensor([[0, 0, 1], [1 / 3, 1 / 3, 1 / 3], [0, 1, 0]], dtype=torch.float32)
    torch.testing.assert_close(w, expected)


# --- the loss ------------------------------------------------------------------------------------------------
def tower_grads(model, batch):
    """Per scenario: does the loss reach that scenario's tower (the ScenarioMLP weights of scenario s)?"""
    model.zero_grad()
    loss, _ = TrainModule(model, MultiTaskLoss(SCHEMA))(batch)
    loss.backward()
    grads = grads_of(model)
    layers = [k for k in grads if k.startswith("backbone.towers.") and k.endswith(".weight")]
    assert layers
    return [all(nonzero(grads[k][s]) for k in layers) for s in range(S)], grads


@pytest.mark.parametrize("flag,expected", [(0.0, [False, True, False]), (1.0, [True, True, True])])
def test_shared_instance_trains_every_tower_and_others_only_their_own(flag, expected):
    model = make("ssim", {"backbone": "dnn_mts", "backbone_params": {"hidden": [16], "tower_hidden": [8]},
                          "shared_column": "shared"})
    batch = scenario_batch(n=1, seed=2, scenario=[1], extras={"shared": [flag]})
    batch.labels["ctr"].fill_(1.0)
    reached, grads = tower_grads(model, batch)
    assert reached == expected
    assert nonzero(grads["backbone.bottom.blocks.0.0.weight"])  # the shared bottom always trains


def test_retrain_loss_equals_hand_computation():
    model = make("ssim", {"backbone": "dnn_mts", "backbone_params": {"hidden": [16], "tower_hidden": [8]},
                          "shared_column": "shared"})
    batch = scenario_batch(n=6, seed=4, extras={"shared": [1, 0, 0, 1, 0, 1]})
    out = model(batch)
    losses = MultiTaskLoss(SCHEMA)(batch, out, views=model.loss_views(batch, out))
    views = out["ctr/views"].detach().numpy()
    y, sc, f = batch.labels["ctr"].numpy(), batch.scenario.numpy(), batch.extras["shared"].numpy()
    per_row = [np.mean([bce(views[i, s], y[i]) for s in range(S)]) if f[i] else bce(views[i, sc[i]], y[i])
               for i in range(6)]
    assert losses["ctr"].item() == pytest.approx(np.mean(per_row), rel=1e-5)
    # the own-scenario output is what the model predicts
    np.testing.assert_allclose(out["ctr"].detach().numpy(), views[np.arange(6), sc], rtol=1e-6)


def test_search_loss_mask_and_kl_reach_the_selection_network_only():
    params = {"backbone": "dnn_mts", "backbone_params": {"hidden": [16], "tower_hidden": [8]},
              "selection_hidden": [8], "kl_weight": 0.5, "eps": 0.5, "init_bias": 2.0}
    model = make("ssim_search", params)
    batch = scenario_batch(n=8, seed=5)
    out = model(batch)
    p, g = out["ssim/p"], out["ssim/mask"]
    assert set(g.tolist()) <= {0.0, 1.0}
    losses = MultiTaskLoss(SCHEMA)(batch, out, views=model.loss_views(batch, out))
    views, y, sc = out["ctr/views"].detach().numpy(), batch.labels["ctr"].numpy(), batch.scenario.numpy()
    per_row = [(1 - g[i].item()) * bce(views[i, sc[i]], y[i]) + g[i].item() * np.mean(
        [bce(views[i, s], y[i]) for s in range(S)]) for i in range(8)]
    assert losses["ctr"].item() == pytest.approx(np.mean(per_row), rel=1e-5)
    kl = model.extra_losses(batch, out)["ssim_kl"]
    assert kl.item() == pytest.approx(0.5 * float(-torch.log(p.detach()).mean()), rel=1e-5)
    # the KL term trains the selection network, never the backbone (the instance embedding is detached)
    model.zero_grad()
    kl.backward()
    grads = grads_of(model)
    assert nonzero(grads["selection.heads.weight"])
    assert not any(nonzero(v) for k, v in grads.items() if k.startswith("backbone."))
    # the task loss reaches the selection network through the straight-through mask
    model.zero_grad()
    out = model(batch)
    sum(MultiTaskLoss(SCHEMA)(batch, out, views=model.loss_views(batch, out)).values()).backward()
    assert nonzero(model.selection.heads.weight.grad)


def test_selection_network_has_its_own_optimizer(tiny_config):
    from recsys.train.trainer import Trainer

    trainer = Trainer(tiny_config(model="ssim_search", extra=[
        "model.params={mask_lr: 0.123, mask_optimizer: sgd}", "train.dense_optimizer.lr=0.002"]))
    names = [name for name, _ in trainer.optimizer.optimizers]
    assert names == ["embedding", "dense", "selection"]
    selection = dict(trainer.optimizer.optimizers)["selection"]
    assert [g["lr"] for g in selection.param_groups] == [0.123]
    assert isinstance(selection._optimizer, torch.optim.SGD)
    mine = {id(p) for p in trainer.model.selection.parameters()}
    assert {id(p) for g in selection.param_groups for p in g["params"]} == mine
    dense = dict(trainer.optimizer.optimizers)["dense"]
    assert not mine & {id(p) for g in dense.param_groups for p in g["params"]}
    assert {g["lr"] for g in dense.param_groups} == {0.002}


def test_ssim_needs_a_multi_scenario_backbone():
    with pytest.raises(ConfigError, match="no per-scenario towers.*dnn_mts"):
        make("ssim_search", {"backbone": "dnn"})


# --- export ----------------------------------------------------------------------------------------------------
def test_ratio_export_takes_the_top_scores_of_each_scenario(tmp_path):
    from recsys.workflows.ssim import export_shared, read_export_info

    scores = pa.table({"row_id": np.arange(10, dtype=np.int64), "scenario": np.array([0] * 6 + [1] * 4),
                       "score": np.array([.9, .1, .5, .7, .5, .2, .3, .8, .6, .1], np.float32),
                       "mask": np.array([1, 0, 1, 1, 0, 0, 0, 1, 1, 0], bool)})
    pq.write_table(scores, tmp_path / "scores.parquet")
    info = export_shared(str(tmp_path / "scores.parquet"), str(tmp_path / "shared.parquet"), 0.5)
    shared = pq.read_table(tmp_path / "shared.parquet").to_pandas()
    # scenario 0: the top 3 of 6 (0.9, 0.7, then the tie 0.5 broken by the smaller row id); scenario 1: top 2 of 4
    assert sorted(shared.row_id[shared.shared]) == [0, 2, 3, 7, 8]
    assert info["shared_fraction"] == 0.5 and read_export_info(str(tmp_path / "shared.parquet"))["ratio"] == 0.5
    export_shared(str(tmp_path / "scores.parquet"), str(tmp_path / "learned.parquet"), "learned")
    learned = pq.read_table(tmp_path / "learned.parquet").to_pandas()
    assert learned.shared.tolist() == scores.column("mask").to_pylist()


# --- phases end to end -----------------------------------------------------------------------------------------
COMMON = ["-c", "configs/wide_deep_synthetic.yaml", "--set", "data.batch_size=256", "--set", "train.progress=false",
          "--set", "tensorboard=false", "--set", "model.embedding_dim=8", "--set", "train.max_steps=6",
          "--set", "model.params={}"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tiny_world):
    """One `recsys ssim search` run (DNN MT-S backbone) on the tiny world, shared by the tests below."""
    search = tmp_path_factory.mktemp("ssim") / "search"
    assert main(["ssim", "search"] + COMMON + ["--data", tiny_world, "--set", "model.name=dnn_mts",
                                               "--run-dir", str(search)]) == 0
    return search


def test_search_export_retrain_reproduces_the_saved_mask_exactly(tmp_path, tiny_world, searched):
    search = searched
    scores = pq.read_table(search / "ssim_scores.parquet").to_pandas()
    assert scores.row_id.is_unique and len(scores) > 4000  # every training row of the tiny world
    assert scores.score.between(0, 1).all()
    assert (np.diff(scores.sort_values("logit").score.to_numpy()) >= 0).all()  # p = sigmoid(T * logit)
    assert (scores["mask"] == (scores.score > 0.5)).all()  # the hard mask: p > eps
    shared = tmp_path / "shared.parquet"
    assert main(["ssim", "export", "--scores", str(search / "ssim_scores.parquet"), "--out", str(shared),
                 "--ratio", "0.3"]) == 0
    saved = pq.read_table(shared).to_pandas().set_index("row_id")
    assert 0.29 < saved.shared.mean() < 0.31

    from recsys.config import load_config
    from recsys.train.trainer import Trainer
    from recsys.workflows.ssim import retrain_config

    cfg = load_config("configs/wide_deep_synthetic.yaml", [
        f"data.path={tiny_world}", f"run_dir={tmp_path / 'retrain'}", "model.name=star", "model.params={}",
        "data.batch_size=256", "train.progress=false", "tensorboard=false", "model.embedding_dim=8",
        "train.max_steps=3", "train.pipeline=sparse_dist"])  # the flags also pass the pipeline's FX trace
    trainer = Trainer(retrain_config(cfg, str(shared)))
    assert trainer.cfg.model.params["backbone"] == "star"  # a different model than the searched one
    seen = {}
    for batch in trainer.train_loader():
        keep = batch.row_id >= 0
        seen.update(zip(batch.row_id[keep].tolist(), batch.extras["shared"][keep].tolist()))
        out = trainer.model(batch)
        w = trainer.model.loss_views(batch, out)["ctr"][1]
        own = torch.nn.functional.one_hot(batch.scenario, 4).float()
        flags = batch.extras["shared"].unsqueeze(1)
        torch.testing.assert_close(w, (1 - flags) * own + flags / 4)
    ids = np.array(sorted(seen))
    np.testing.assert_array_equal(np.array([seen[r] for r in ids], np.float32),
                                  saved.shared.loc[ids].to_numpy().astype(np.float32))
    parts = trainer.dataset.read()
    train = parts["train"]  # every training row, also those the loader's dropped last batch leaves out
    assert set(train.row_id.tolist()) == set(saved.index)
    np.testing.assert_array_equal(train.extras["shared"], saved.shared.loc[train.row_id].to_numpy().astype(np.float32))
    assert (parts["valid"].extras["shared"] == 0).all()  # rows outside the set (not training rows) are not shared
    result = trainer.fit()
    assert np.isfinite(result["valid"]["ctr/auc"])


def test_ratio_chosen_by_validation_auc(tmp_path, tiny_config, searched):
    from recsys.workflows.ssim import choose_ratio

    retrain = tiny_config(model="dnn_mts", extra=["train.max_steps=3"], run="ratios")
    summary = choose_ratio(str(searched / "ssim_scores.parquet"), str(tmp_path / "shared.parquet"), retrain,
                           ["0.2", "learned"])
    values = {str(c["ratio"]): c["valid ctr/auc"] for c in summary["candidates"]}
    assert set(values) == {"0.2", "learned"}
    assert str(summary["chosen_ratio"]) == max(values, key=values.get)
    assert json.load(open(str(tmp_path / "shared.parquet") + ".ratios.json")) == summary
    for c in summary["candidates"]:
        assert os.path.isdir(c["run_dir"])


# --- Ali-CCP format ----------------------------------------------------------------------------------------------
ALICCP_SPARSE = ["101", "121", "122", "124", "125", "126", "127", "128", "129", "205", "206", "207", "210", "216",
                 "508", "509", "702", "853"]


def write_aliccp(path, n=3000, seed=0):
    """A tiny file in the processed Ali-CCP format: click, purchase, feature fields, 301 (scenario 1..3), D*."""
    rng = np.random.default_rng(seed)
    cols = {"click": None, "purchase": None}
    for f in ALICCP_SPARSE:
        cols[f] = rng.integers(0, 30, n)
    cols["301"] = rng.choice([1, 2, 3], size=n, p=[0.55, 0.05, 0.40])
    for f in ("D508", "D509"):
        cols[f] = rng.random(n).round(4)
    logit = -2.0 + 0.8 * (cols["206"] % 3 == 0) + 0.5 * (cols["301"] == 2) + 0.6 * (cols["101"] < 10)
    click = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    cols["click"], cols["purchase"] = click, click * (rng.random(n) < 0.1)
    import pandas as pd

    pd.DataFrame(cols).to_csv(path, index=False)


def test_ssim_on_the_aliccp_format_with_301_as_scenario(tmp_path):
    import yaml

    from recsys.config import load_config
    from recsys.workflows.ssim import export_shared, run_retrain, run_search

    write_aliccp(tmp_path / "aliccp.csv")
    spec = {"name": "aliccp-tiny", "source": {"path": "aliccp.csv", "format": "csv"},
            "sparse": [{"name": f"f{f}", "column": f} for f in ALICCP_SPARSE]
            + [{"name": "scenario_id", "column": "301", "group": "scenario"}],
            "dense": [{"name": "D508"}, {"name": "D509"}],
            "tasks": [{"name": "ctr", "column": "click"}, {"name": "cvr", "column": "purchase", "depends_on": "ctr"}],
            "scenario": {"column": "301", "values": [1, 2, 3]}}
    (tmp_path / "aliccp.yaml").write_text(yaml.safe_dump(spec))
    base = [f"data.spec={tmp_path / 'aliccp.yaml'}", f"data.path={tmp_path}", "data.batch_size=256",
            "train.progress=false", "tensorboard=false", "model.embedding_dim=8", "train.max_steps=4"]
    search = run_search(load_config(None, base + ["model.name=dcn_mts", f"run_dir={tmp_path / 's'}"]))
    assert search["trainer"].schema.num_scenarios == 3
    export_shared(search["scores"], str(tmp_path / "shared.parquet"), "learned")
    result = run_retrain(load_config(None, base + ["model.name=hmoe", f"run_dir={tmp_path / 'r'}"]),
                         str(tmp_path / "shared.parquet"))
    for s in ("1", "2", "3"):
        assert f"ctr/auc/scenario={s}" in result["valid"]


@pytest.mark.parametrize("dataset", ["synthetic", "movielens"])
def test_shipped_ssim_configs_load_and_retrain_their_backbone(dataset):
    from recsys.config import from_dict, load_config
    from recsys.models.ssim import SSIMSearchConfig
    from recsys.workflows.ssim import retrain_config

    cfg = load_config(f"configs/ssim_search_{dataset}.yaml")
    assert from_dict(SSIMSearchConfig, cfg.model.params).backbone == "dnn_mts"
    retrain = retrain_config(cfg, "shared.parquet")
    assert retrain.model.name == "ssim" and retrain.model.params["backbone"] == "dnn_mts"
    assert retrain.data.side_columns[-1].columns == ["shared"]
