"""Generic pieces the multi-scenario work added to the core: per-row side columns joined by row id, the
scenario filter (one model per scenario), loss views and model-declared optimizer groups, the ST runner."""

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recsys.config import SideColumnsConfig, SplitConfig
from recsys.data.dataset import Dataset
from recsys.data.loader import BatchLoader
from recsys.errors import ConfigError, DataError
from recsys.schema import Schema, SparseFeature, Task
from recsys.train.losses import MultiTaskLoss


def tiny_dataset(tiny_world, **kwargs) -> Dataset:
    from recsys.data.spec import load_spec

    ds = Dataset(load_spec("configs/datasets/synthetic.yaml"), root=tiny_world, split=SplitConfig(), **kwargs)
    ds.fit()
    return ds


def test_side_columns_join_every_split_by_row_id(tmp_path, tiny_world):
    ids = np.array([5, 17, 400, 4999, 123456], dtype=np.int64)  # the last id is not in the data
    pq.write_table(pa.table({"row_id": ids, "flag": pa.array([True, False, True, True, True]),
                             "score": np.array([0.5, 0.25, 2.0, 3.0, 9.0], np.float32)}), tmp_path / "side.parquet")
    side = [SideColumnsConfig(str(tmp_path / "side.parquet"), ["flag", "score"], fill=-1.0)]
    parts = tiny_dataset(tiny_world, side_columns=side).read()
    expected = dict(zip(ids.tolist(), zip([1.0, 0.0, 1.0, 1.0, 1.0], [0.5, 0.25, 2.0, 3.0, 9.0])))
    found = 0
    for cols in parts.values():
        assert cols.extras["flag"].dtype == np.float32
        for r, f, s in zip(cols.row_id, cols.extras["flag"], cols.extras["score"]):
            want = expected.get(int(r), (-1.0, -1.0))
            found += int(r) in expected
            assert (f, s) == want
        batch = BatchLoader(cols, list(cols.sparse), 64).__iter__().__next__()
        torch.testing.assert_close(batch.extras["score"], torch.from_numpy(cols.extras["score"][:64]))
    assert found == 4


def test_side_columns_refuse_repeated_ids_and_missing_columns(tmp_path, tiny_world):
    pq.write_table(pa.table({"row_id": [1, 1], "flag": [1, 0]}), tmp_path / "dup.parquet")
    with pytest.raises(DataError, match="row id 1 repeats"):
        tiny_dataset(tiny_world, side_columns=[SideColumnsConfig(str(tmp_path / "dup.parquet"), ["flag"])]).read()
    with pytest.raises(DataError, match="shared"):
        tiny_dataset(tiny_world, side_columns=[SideColumnsConfig(str(tmp_path / "dup.parquet"), ["shared"])]).read()


def test_scenario_filter_keeps_the_rows_and_splits_of_its_scenarios(tiny_world):
    full = tiny_dataset(tiny_world).read()
    only = tiny_dataset(tiny_world, scenarios=[3, 1]).read()
    for split in full:
        keep = np.isin(full[split].scenario, [1, 3])
        assert set(only[split].scenario.tolist()) <= {1, 3}
        np.testing.assert_array_equal(np.sort(only[split].row_id), np.sort(full[split].row_id[keep]))
    with pytest.raises(ConfigError, match=r"\[7\]"):
        tiny_dataset(tiny_world, scenarios=[0, 7])


def test_scenario_filter_fits_vocabularies_on_its_own_rows(tiny_world):
    full, only = tiny_dataset(tiny_world), tiny_dataset(tiny_world, scenarios=[3])
    user = {e.name: e for e in only.sparse}["user_id"]
    assert user.num_embeddings < {e.name: e for e in full.sparse}["user_id"].num_embeddings


def test_loss_views_weight_several_predictions_per_row():
    schema = Schema(sparse=(SparseFeature("a", 4),), tasks=(Task("ctr"), Task("stay", kind="regression")))
    from recsys.data.columns import Columns

    n = 3
    batch = Columns(dense=np.zeros((n, 0), np.float32), sparse={"a": np.zeros(n, np.int64)},
                    labels={"ctr": np.array([1, 0, 1], np.float32), "stay": np.array([1.0, 2.0, 3.0], np.float32)},
                    scenario=np.zeros(n, np.int64), user=np.zeros(n, np.int64),
                    weights=np.array([1.0, 1.0, 0.0], np.float32), row_id=np.arange(n)).to_batch(["a"])
    preds = torch.tensor([[0.5, -1.0], [2.0, 0.0], [9.0, 9.0]])
    w = torch.tensor([[0.25, 0.75], [1.0, 0.0], [0.5, 0.5]], requires_grad=True)
    outputs = {"ctr": torch.zeros(n), "stay": torch.tensor([1.5, 2.5, 0.0])}
    losses = MultiTaskLoss(schema)(batch, outputs, views={"ctr": (preds, w)})

    def bce(logit, y):
        p = 1 / (1 + math.exp(-logit))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    expected = (0.25 * bce(0.5, 1) + 0.75 * bce(-1.0, 1) + bce(2.0, 0)) / 2  # the padding row is dropped
    assert losses["ctr"].item() == pytest.approx(expected, rel=1e-6)
    assert losses["stay"].item() == pytest.approx((0.25 + 0.25) / 2)  # tasks without views are unchanged
    losses["ctr"].backward()
    assert w.grad[0].tolist() == pytest.approx([bce(0.5, 1) / 2, bce(-1.0, 1) / 2])  # the weights learn


def test_optimizer_groups_must_be_dense_parameters_of_the_model(tiny_config):
    from recsys.config import OptimizerConfig
    from recsys.train.optim import build_optimizer
    from recsys.train.trainer import Trainer

    trainer = Trainer(tiny_config(model="dnn"))
    emb = trainer.cfg.train.embedding_optimizer
    stranger = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ConfigError, match="'mine'"):
        build_optimizer(trainer.dmp, OptimizerConfig(), None, {"mine": ([stranger], OptimizerConfig())},
                        embedding=emb)
    head = list(trainer.model.heads.parameters())
    opt = build_optimizer(trainer.dmp, OptimizerConfig(lr=0.01), None, {"heads": (head, OptimizerConfig(lr=0.5))},
                          embedding=emb)
    lrs = {name: {g["lr"] for g in o.param_groups} for name, o in opt.optimizers}
    assert lrs["heads"] == {0.5} and lrs["dense"] == {0.01}
    with pytest.raises(ConfigError, match="reserved"):
        build_optimizer(trainer.dmp, OptimizerConfig(), None, {"dense": (head, OptimizerConfig())}, embedding=emb)


def test_st_trains_one_model_per_scenario_and_reports_them_together(tmp_path, tiny_world):
    from benchmarks.quality import DATASETS, Experiment, run_one

    profile = DATASETS["quick"]
    assert "train.max_steps=6" in profile.overrides
    result = run_one(Experiment("ST", "dnn", {"hidden": [16]}, per_scenario=True, overrides=["train.max_steps=2"]),
                     "quick", 0, tiny_world, str(tmp_path))
    assert len(result["best_step"]) == 4  # one model per scenario of the tiny world
    test = result["test"]
    for scenario in ("feed", "follow", "nearby", "search"):
        assert np.isfinite(test[f"ctr/auc/scenario={scenario}"])
    assert test["rows"] == sum(test[f"ctr/count/scenario={s}"] for s in ("feed", "follow", "nearby", "search"))


def test_prepare_phase_runs_first_and_its_overrides_apply(tmp_path, tiny_world):
    from benchmarks.quality import Experiment, run_one

    calls = []

    def prepare(ctx):
        calls.append((ctx.dataset, ctx.seed, ctx.data_path, ctx.run_root))
        assert f"data.path={tiny_world}" in ctx.overrides and "train.seed=1" in ctx.overrides
        ctx.info["searched"] = True
        return ["train.max_steps=2", "train.eval_every_steps=1"]

    result = run_one(Experiment("two phases", "dnn", {"hidden": [8]}, prepare=prepare), "quick", 1, tiny_world,
                     str(tmp_path))
    assert calls == [("quick", 1, tiny_world, str(tmp_path))]
    assert result["info"] == {"searched": True}
    assert result["best_step"] in (1, 2)  # evaluated every step, stopped after the phase's max_steps


def test_ssim_grid_renders_the_paper_shaped_table():
    from benchmarks.grids import ssim as grid

    names = {exp.name for exp in grid.EXPERIMENTS}
    for backbone in ("DNN", "DeepFM", "DCN"):
        assert {f"{backbone} {m}" for m in ("ST", "MT", "MT-S", "SSIM")} <= names
    assert {"STAR", "HMoE", "DFFM", "STAR+SSIM", "HMoE+SSIM"} <= names
    assert next(e for e in grid.EXPERIMENTS if e.name == "DNN ST").per_scenario
    assert all(e.prepare is not None for e in grid.EXPERIMENTS if "SSIM" in e.name)

    def metrics(base):
        return {f"like/{m}{s}": {"mean": base + i / 100, "std": 0.001}
                for i, s in enumerate(["", "/scenario=<25", "/scenario=25-34", "/scenario=35+"])
                for m in ("auc", "logloss")}

    info = {"ratio": 0.3, "shared_fraction": 0.3, "learned_ratio": 0.41, "search_backbone": "dnn_mts"}
    order = {"like/auc/scenario=<25": 0.7, "like/auc/scenario=25-34": 0.7, "like/auc/scenario=35+": 0.7}
    results = {"DNN MT": {"movielens": {"metrics": metrics(0.7), "runs": [{"test": order}]}},
               "DNN SSIM": {"movielens": {"metrics": metrics(0.75), "runs": [{"info": info}]}}}
    table = grid.render(results)
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("| backbone"))
    assert header.split(" | ")[2:5] == ["<25 AUC", "25-34 AUC", "35+ AUC"]
    assert "all logloss" in header
    assert "| DNN | MT | 0.7100 ± 0.0010 | 0.7200 ± 0.0010 |" in table
    assert "| DNN | SSIM | 0.7600 ± 0.0010 |" in table
    assert "shared ratio 0.3" in table and "0.410" in table
