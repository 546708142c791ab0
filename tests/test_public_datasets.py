"""The shipped public data set specs and run configs read each data set in its published layout (fixtures
written by tests/fixtures_public.py) and train a few steps with `recsys train -c configs/<ds>.yaml --data DIR`,
the whole command docs/datasets.md gives."""

import json
import logging
import os
from typing import Optional

import fixtures_public as fx
import numpy as np
import pytest

from recsys.cli import main
from recsys.config import SplitConfig
from recsys.data.dataset import Dataset
from recsys.data.spec import load_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECS = os.path.join(REPO, "configs", "datasets")
FAST = ["--set", "data.batch_size=64", "--set", "train.epochs=1", "--set", "train.max_steps=2",
        "--set", "train.progress=false", "--set", "tensorboard=false", "--set", "model.embedding_dim=8",
        "--set", "train.early_stopping.patience=5"]

PUBLIC = [  # (run config, fixture writer, tasks whose validation AUC is reported)
    ("criteo.yaml", fx.write_criteo, ["click"]),
    ("avazu.yaml", fx.write_avazu, ["click"]),
    ("movielens-1m.yaml", fx.write_movielens_1m, ["like"]),
    ("kuairand.yaml", fx.write_kuairand, ["click", "long_view", "like"]),
    ("esmm_aliccp.yaml", fx.write_aliccp, ["ctr", "cvr"]),
    ("mmoe_aliexpress.yaml", fx.write_aliexpress, ["ctr", "cvr"]),
    ("census-income.yaml", fx.write_census_income, ["income", "never_married"]),
    ("tenrec.yaml", fx.write_tenrec, ["click", "like"]),
]


@pytest.mark.parametrize("config,writer,tasks", PUBLIC, ids=[c for c, _, _ in PUBLIC])
def test_public_config_trains_on_its_published_layout(config, writer, tasks, tmp_path, capsys):
    writer(str(tmp_path / "data"))
    rc = main(["train", "-c", os.path.join(REPO, "configs", config), "--data", str(tmp_path / "data"),
               "--run-dir", str(tmp_path / "run")] + FAST)
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 2
    for task in tasks:
        assert np.isfinite(metrics["valid"][f"{task}/auc"]), (task, metrics["valid"])
        assert np.isfinite(metrics["test"][f"{task}/auc"]), (task, metrics["test"])


def fitted(spec: str, root, split: Optional[SplitConfig] = None) -> Dataset:
    split = split or SplitConfig(valid=0.1, test=0.1, seed=42)
    ds = Dataset(load_spec(os.path.join(SPECS, spec)), root=str(root), split=split)
    ds.fit()
    return ds


def test_kuairand_keeps_the_five_main_tabs_and_reports_the_rows_dropped(tmp_path, caplog):
    rows = fx.write_kuairand(str(tmp_path))
    with caplog.at_level(logging.INFO, logger="recsys.data.dataset"):
        ds = fitted("kuairand.yaml", tmp_path, SplitConfig(valid=0.1, test=0.0))
    train_log, test_log = "log_standard_4_08_to_4_21_pure", "log_standard_4_22_to_5_08_pure"
    counts = ds.split_counts
    assert counts["train"] + counts["valid"] == rows[train_log + ":kept"]
    assert counts["test"] == rows[test_log + ":kept"]
    assert ds.filtered_out == {None: rows[train_log] - rows[train_log + ":kept"],
                               2: rows[test_log] - rows[test_log + ":kept"]}
    dropped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("filter: dropped")]
    assert dropped[0] == (f"filter: dropped {rows[train_log] - rows[train_log + ':kept']} of {rows[train_log]} rows "
                          f"of {os.path.join(str(tmp_path), 'data/log_standard_4_08_to_4_21_*.csv')}")
    parts = ds.read()
    assert sorted(set(np.concatenate([p.scenario for p in parts.values()]).tolist())) == [0, 1, 2, 3, 4]
    assert ds.schema().num_scenarios == 5 and [t.name for t in ds.schema().tasks] == ["click", "long_view", "like"]


def test_aliccp_reads_the_published_train_val_and_test_files_as_the_splits(tmp_path):
    rows = fx.write_aliccp(str(tmp_path))  # the *_sample.csv names torch-rechub ships
    ds = fitted("aliccp.yaml", tmp_path)
    assert ds.split_counts == {"train": rows["train"], "valid": rows["val"], "test": rows["test"]}
    parts = ds.read()
    assert {k: len(v) for k, v in parts.items()} == ds.split_counts


def test_census_income_labels_are_the_two_mmoe_tasks(tmp_path):
    rows = fx.write_census_income(str(tmp_path))
    ds = fitted("census-income.yaml", tmp_path, SplitConfig(valid=0.2, test=0.0))
    parts = ds.read()
    train_valid = [parts["train"], parts["valid"]]
    assert sum(int(p.labels["income"].sum()) for p in train_valid) == rows["census-income.data:income"]
    assert sum(int(p.labels["never_married"].sum()) for p in train_valid) == rows["census-income.data:never_married"]
    assert len(parts["test"]) == rows["census-income.test"]
    assert "marital_stat" not in ds.schema().feature_names  # the second task's label is no feature
    assert ds.schema().dense_dim == 7


def test_criteo_raises_negative_counts_before_the_log_transform(tmp_path):
    rows = fx.write_criteo(str(tmp_path))
    assert rows["lowest_I2"] < -1  # log1p alone would refuse it
    ds = fitted("criteo.yaml", tmp_path)
    parts = ds.read()
    i2 = np.concatenate([p.dense[:, 1] for p in parts.values()])
    assert len(i2) == rows["rows"] and np.isfinite(i2).all()
    enc = ds.dense[1]
    assert np.isclose(i2.min(), (np.log1p(0.0) - enc.mean) / enc.std, atol=1e-5)  # -3..0 all became log1p(0)
    assert all(e.spec.min_count == 10 for e in ds.sparse)


def test_movielens_1m_reads_double_colon_files_and_multi_hot_genres(tmp_path):
    rows = fx.write_movielens_1m(str(tmp_path))
    ds = fitted("movielens-1m.yaml", tmp_path)
    parts = ds.read()
    assert sum(len(p) for p in parts.values()) == rows["ratings"]
    genres = next(e for e in ds.sparse if e.name == "genres")
    vocab = set(genres.vocab.to_pylist())
    assert vocab <= {"Action", "Children's", "Comedy", "Drama", "Film-Noir", "Sci-Fi"} and len(vocab) >= 5


def test_avazu_hour_is_a_time_column_for_time_splits(tmp_path):
    fx.write_avazu(str(tmp_path))
    ds = fitted("avazu.yaml", tmp_path, SplitConfig(kind="time", valid=0.0, test=0.0, test_from="2014-10-30"))
    parts = ds.read()
    cut = 1414627200.0  # 2014-10-30T00:00 as written (naive)
    assert ds.test_from == cut and len(parts["test"]) > 0
    assert (parts["test"].time >= cut).all() and (parts["train"].time < cut).all()


def test_tenrec_platforms_are_the_scenarios(tmp_path):
    rows = fx.write_tenrec(str(tmp_path))
    ds = fitted("tenrec.yaml", tmp_path)
    scenario = np.concatenate([p.scenario for p in ds.read().values()])
    assert np.bincount(scenario).tolist() == [rows["QK-video"], rows["QB-video"]]
