"""Helpers of the CTR/CVR model tests: a funnel schema, batches with consistent labels, unsharded models."""

from typing import Dict, Optional

import numpy as np
import torch

from recsys.config import ModelConfig
from recsys.data.columns import Columns
from recsys.models import build_model
from recsys.schema import DenseFeature, Schema, SparseFeature, Task

FUNNEL = Schema(
    sparse=(SparseFeature("user", 30, 8, group="user"), SparseFeature("item", 20, 8, group="item"),
            SparseFeature("position", 6, 4, group="context")),
    dense=(DenseFeature("price"),),
    tasks=(Task("ctr"), Task("stay", kind="regression", depends_on="ctr", loss="log_mse"),
           Task("cvr", depends_on="ctr")),
    user_feature="user",
)
NO_FUNNEL = Schema(sparse=FUNNEL.sparse, dense=FUNNEL.dense,
                   tasks=(Task("ctr"), Task("stay", kind="regression", depends_on="ctr")))


def funnel_batch(n: int = 12, seed: int = 0, schema: Schema = FUNNEL, click_rate: float = 0.5,
                 labels: Optional[Dict[str, np.ndarray]] = None):
    """A batch over ``schema`` whose labels respect the funnel (orders and stay only after clicks)."""
    rng = np.random.default_rng(seed)
    click = (rng.random(n) < click_rate).astype(np.float32)
    made = {"ctr": click, "cvr": click * (rng.random(n) < 0.5).astype(np.float32),
            "stay": click * rng.exponential(30.0, n).astype(np.float32)}
    made.update(labels or {})
    cols = Columns(
        dense=rng.normal(size=(n, schema.dense_dim)).astype(np.float32),
        sparse={f.name: rng.integers(0, f.num_embeddings, n) for f in schema.sparse},
        labels={t: made[t] for t in schema.task_names}, scenario=np.zeros(n, np.int64),
        user=np.zeros(n, np.int64), weights=np.ones(n, np.float32), row_id=np.arange(n),
    )
    return cols.to_batch(schema.feature_names)


def make_model(name: str, params: Optional[dict] = None, schema: Schema = FUNNEL, seed: int = 0):
    """A registered model with its EBC materialised on CPU (unsharded use), deterministic given ``seed``."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(name=name, params=dict(params or {})), schema)
    ebc = model.sparse_arch.ebc
    ebc.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in ebc.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) * 0.2 - 0.1)
    return model


def table_grads(model) -> Dict[str, torch.Tensor]:
    """Gradient of every embedding table (zeros where none reached it)."""
    out = {}
    for name, bag in model.sparse_arch.ebc.embedding_bags.items():
        g = bag.weight.grad
        out[name] = torch.zeros_like(bag.weight) if g is None else g.clone()
    return out


def grads_of(module) -> Dict[str, Optional[torch.Tensor]]:
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in module.named_parameters()}


def touched(module) -> bool:
    """Whether any parameter of ``module`` received a non-zero gradient."""
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
