"""Every run config shipped in configs/ loads and trains a few steps with its own model parameters, so a renamed
option or a model change cannot leave a config behind. Data: the tiny synthetic world or a tiny MovieLens
folder written here (the funnel configs are run in tests/test_cvr_datasets.py, plan_billion.yaml in
tests/test_plan.py, the SSIM search configs in tests/test_ssim.py)."""

import glob
import math
import os

import pytest
from test_data import write_movielens

from recsys.config import load_config, read_yaml
from recsys.train.trainer import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["data.batch_size=256", "train.epochs=1", "train.max_steps=3", "train.progress=false", "tensorboard=false"]


def shipped(spec: str):
    paths = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))
    out = [os.path.basename(p) for p in paths if read_yaml(p).get("data", {}).get("spec") == spec]
    return [p for p in out if not p.startswith("ssim_search_")]


SYNTHETIC = shipped("datasets/synthetic.yaml")
MOVIELENS = shipped("datasets/movielens-100k.yaml")


def test_the_lists_are_not_empty():
    assert {"wide_deep_synthetic.yaml", "cbmr_synthetic.yaml", "multicbmr_synthetic.yaml",
            "stan_synthetic.yaml", "calibration4cvr_synthetic.yaml"} <= set(SYNTHETIC)
    assert MOVIELENS == ["wide_deep_movielens.yaml"]


def train_a_few_steps(config: str, data: str, run_dir: str, extra=()):
    overrides = [f"data.path={data}", f"run_dir={run_dir}"] + FAST + list(extra)
    cfg = load_config(os.path.join(REPO, "configs", config), overrides)
    result = Trainer(cfg).fit()
    assert result["steps"] == 3
    aucs = [v for k, v in result["valid"].items() if k.endswith("/auc")]
    assert aucs and all(math.isfinite(v) for v in aucs), result["valid"]


@pytest.mark.parametrize("config", SYNTHETIC)
def test_synthetic_configs_train(config, tiny_world, tmp_path):
    train_a_few_steps(config, tiny_world, str(tmp_path / "run"))


@pytest.mark.parametrize("config", MOVIELENS)
def test_movielens_configs_train(config, tmp_path):
    write_movielens(str(tmp_path / "ml"))
    # 60 ratings, 48 of them in train: batches of 16 give the three steps
    train_a_few_steps(config, str(tmp_path / "ml"), str(tmp_path / "run"), ["data.batch_size=16"])
