"""A small multi-scene, multi-task schema and batches for the calibration-model tests (CBMR, PEPNet)."""

import numpy as np
import torch

from recsys.config import ModelConfig
from recsys.data.columns import Columns, Ragged
from recsys.models import build_model
from recsys.schema import DenseFeature, Schema, SparseFeature, Task

SCHEMA = Schema(
    sparse=(
        SparseFeature("user", 30, 8, group="user"),
        SparseFeature("host", 12, 8, group="host"),
        SparseFeature("item", 20, 8, group="item"),
        SparseFeature("tags", 6, 8, group="context", multi_hot=True, pooling="mean"),
        SparseFeature("scene", 3, 8, group="scenario"),
    ),
    dense=(DenseFeature("x0"), DenseFeature("x1")),
    tasks=(Task("ctr"), Task("stay", kind="regression", depends_on="ctr", loss="log_mse", weight=0.2)),
    num_scenarios=3,
    user_feature="user",
    scenario_feature="scene",
)


def make_batch(n: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 3, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    click = (np.arange(n) % 2).astype(np.float32)  # half the rows clicked
    scene = np.arange(n) % 3
    cols = Columns(
        dense=rng.normal(size=(n, 2)).astype(np.float32),
        sparse={"user": rng.integers(0, 30, n), "host": rng.integers(0, 12, n), "item": rng.integers(0, 20, n),
                "tags": Ragged(rng.integers(0, 6, offsets[-1]), offsets), "scene": scene},
        labels={"ctr": click, "stay": (click * rng.uniform(1, 300, n)).astype(np.float32)},
        scenario=scene, user=rng.integers(0, 30, n), weights=np.ones(n, np.float32), row_id=np.arange(n),
    )
    return cols.to_batch(SCHEMA.feature_names)


def materialise(model, scale: float = 0.3):
    """Unsharded use: move the meta-device EBC to real memory and initialise it."""
    ebc = model.sparse_arch.ebc
    ebc.to_empty(device="cpu")
    for p in ebc.parameters():
        torch.nn.init.uniform_(p, -scale, scale)
    return model


def build(name: str, params: dict, seed: int = 0) -> torch.nn.Module:
    """The registered model ``name`` on :data:`SCHEMA`, built after ``torch.manual_seed(seed)``, materialised."""
    torch.manual_seed(seed)
    return materialise(build_model(ModelConfig(name=name, params=params), SCHEMA))


def grads_of(model, batch) -> dict:
    """The model's outputs on ``batch``, after back-propagating their sum from zeroed gradients."""
    model.zero_grad()
    out = model(batch)
    sum(v.sum() for v in out.values()).backward()
    return out


def table_grad(model, table: str) -> torch.Tensor:
    return model.sparse_arch.ebc.embedding_bags[table].weight.grad
