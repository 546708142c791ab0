"""Shared fixtures: tiny generated data sets and configs (tests never read ../shared)."""

import logging
import os
import warnings
from typing import List, Optional

import pytest

warnings.filterwarnings("ignore")
for name in ("torchrec", "fbgemm_gpu", "root", "torch"):
    logging.getLogger(name).setLevel(logging.ERROR)

from recsys.config import Config, load_config  # noqa: E402
from recsys.data.synthetic import WorldConfig, generate  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_WORLD = WorldConfig(rows=6000, users=300, hosts=40, items=120, seed=3, rows_per_file=2500)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> str:
    """A 6000-row synthetic world in three Parquet files."""
    out = str(tmp_path_factory.mktemp("world") / "synthetic")
    generate(TINY_WORLD, out, progress=False)
    return out


def make_config(
    run_dir: str,
    data_path: str,
    model: str = "wide_deep",
    config: str = "configs/wide_deep_synthetic.yaml",
    extra: Optional[List[str]] = None,
) -> Config:
    overrides = [
        f"data.path={data_path}", f"run_dir={run_dir}", f"model.name={model}", "model.params={}",
        "data.batch_size=256", "train.epochs=1", "train.progress=false", "tensorboard=false",
        "model.embedding_dim=8",
    ] + list(extra or [])
    return load_config(os.path.join(REPO, config), overrides)


@pytest.fixture
def tiny_config(tmp_path, tiny_world):
    """Factory: a fast config on the tiny world, ``tiny_config(model=..., extra=[...])``."""

    def make(model: str = "wide_deep", extra: Optional[List[str]] = None, run: str = "run") -> Config:
        return make_config(str(tmp_path / run), tiny_world, model=model, extra=extra)

    return make


def live_batch(world: str, rows: int, embedding_dim: int = 8):
    """(schema, the first ``rows`` training rows as one Batch) of a generated world, read through the shipped
    synthetic dataset spec and its real encoders."""
    import numpy as np

    from recsys.data.dataset import Dataset
    from recsys.data.spec import load_spec

    ds = Dataset(load_spec(os.path.join(REPO, "configs", "datasets", "synthetic.yaml")), root=world)
    ds.fit()
    train = ds.read(splits=("train",))["train"]
    schema = ds.schema(embedding_dim)
    return schema, train.take(np.arange(rows)).to_batch(schema.feature_names)
