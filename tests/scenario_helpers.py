"""Helpers of the multi-scenario tests: a small schema with three scenarios, batches, unsharded models."""

from typing import Dict, Optional, Sequence

import numpy as np
import torch

from recsys.config import ModelConfig
from recsys.data.batch import Batch
from recsys.data.columns import Columns, Ragged
from recsys.models import build_model
from recsys.schema import DenseFeature, Schema, SparseFeature, Task

S = 3
SCHEMA = Schema(
    sparse=(SparseFeature("user", 20, 8, group="user"), SparseFeature("host", 10, 8, group="host"),
            SparseFeature("tags", 6, 8, multi_hot=True, pooling="mean"),
            SparseFeature("position", 5, 8, group="context"), SparseFeature("scene", S, 8, group="scenario")),
    dense=(DenseFeature("x"),),
    tasks=(Task("ctr"), Task("stay", kind="regression", depends_on="ctr", loss="log_mse")),
    num_scenarios=S, user_feature="user", scenario_feature="scene",
)


def scenario_batch(n: int = 12, seed: int = 0, scenario: Optional[Sequence[int]] = None,
                   extras: Optional[Dict[str, Sequence[float]]] = None, schema: Schema = SCHEMA) -> Batch:
    """``n`` random rows; ``scenario`` fixes each row's scenario (the scene feature follows it)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 3, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    sc = np.asarray(scenario if scenario is not None else rng.integers(0, S, n), dtype=np.int64)
    click = (rng.random(n) < 0.5).astype(np.float32)
    cols = Columns(
        dense=rng.normal(size=(n, 1)).astype(np.float32),
        sparse={"user": rng.integers(0, 20, n), "host": rng.integers(0, 10, n),
                "tags": Ragged(rng.integers(0, 6, offsets[-1]), offsets), "position": rng.integers(0, 5, n),
                "scene": sc.copy()},
        labels={"ctr": click, "stay": (click * rng.random(n) * 100).astype(np.float32)},
        scenario=sc, user=rng.integers(0, 20, n), weights=np.ones(n, np.float32), row_id=np.arange(n),
        extras={k: np.asarray(v, np.float32) for k, v in (extras or {}).items()},
    )
    return cols.to_batch(schema.feature_names)


def materialise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Unsharded use: move every meta-device EmbeddingBagCollection to memory and initialise it."""
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, EmbeddingBagCollection):
            m.to_empty(device="cpu")
            with torch.no_grad():
                for p in m.parameters():
                    p.copy_(torch.rand(p.shape, generator=gen) * 0.2 - 0.1)
    return model


def make(name: str, params: Optional[dict] = None, schema: Schema = SCHEMA, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return materialise(build_model(ModelConfig(name=name, params=params or {}), schema), seed)


def grads_of(model: torch.nn.Module) -> Dict[str, Optional[torch.Tensor]]:
    return {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in model.named_parameters()}


def nonzero(g: Optional[torch.Tensor]) -> bool:
    return g is not None and bool(g.abs().sum() > 0)
