"""SparseArch: every sparse feature of a schema in ONE torchrec EmbeddingBagCollection.

One EBC per model means DistributedModelParallel shards a single module with FBGEMM's fused table-batched
kernels, and TrainPipelineSparseDist can overlap its input distribution with the previous batch. Models pick
feature embeddings by name or group from :class:`Embeddings`; no model creates a second table.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.schema import Schema

WIDE_SUFFIX = "__wide"


@dataclass
class Embeddings:
    """Pooled embeddings of one batch.

    Shapes: ``features[name]`` is [B, D_name]; ``wide[name]`` is [B, W] (when the arch has wide tables).
    """

    features: Dict[str, torch.Tensor]
    wide: Dict[str, torch.Tensor]

    def concat(self, names: Sequence[str]) -> torch.Tensor:
        """[B, sum of D] for ``names`` in order."""
        return torch.cat([self.features[n] for n in names], dim=1)

    def stack(self, names: Sequence[str]) -> torch.Tensor:
        """[B, F, D] for ``names`` (all of width D)."""
        return torch.stack([self.features[n] for n in names], dim=1)

    def wide_sum(self, names: Sequence[str]) -> torch.Tensor:
        """[B, W]: the wide (first-order) weights of ``names`` summed over features."""
        return torch.stack([self.wide[n] for n in names], dim=0).sum(dim=0)


class SparseArch(nn.Module):
    """Embedding lookup for all sparse features of ``schema``.

    Args:
        schema: the features; features naming the same ``table`` share it.
        wide_dim: if > 0, also a ``wide_dim``-wide table per table (first-order weights for wide/linear parts;
            FBGEMM needs widths divisible by 4, so a linear weight per task is one column of it).
        init_scale: embeddings start uniform in ``[-init_scale, init_scale]``; default ``min(0.05,
            sqrt(1 / rows))`` (torchrec's default is sqrt(1 / rows), large for tiny tables).
        device: build the tables here; ``meta`` (the default) allocates nothing and lets DMP materialise the
            shards on their ranks.

    Example::

        arch = SparseArch(schema)
        emb = arch(batch.sparse)
        x = emb.concat(schema.feature_names)    # [B, F * D]
    """

    def __init__(
        self,
        schema: Schema,
        wide_dim: int = 0,
        init_scale: Optional[float] = None,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        if wide_dim and wide_dim % 4:
            raise ValueError(f"wide_dim must be a multiple of 4 (FBGEMM), got {wide_dim}")
        self.schema = schema
        self.wide_dim = wide_dim
        by_table: Dict[str, List[str]] = {}
        first = {}
        for f in schema.sparse:
            by_table.setdefault(f.table_name, []).append(f.name)
            first.setdefault(f.table_name, f)
        tables = []
        for name, features in by_table.items():
            f = first[name]
            scale = init_scale if init_scale is not None else min(0.05, (1.0 / f.num_embeddings) ** 0.5)
            pooling = PoolingType.MEAN if f.pooling == "mean" else PoolingType.SUM
            tables.append(EmbeddingBagConfig(
                name=name, embedding_dim=f.embedding_dim, num_embeddings=f.num_embeddings,
                feature_names=list(features), pooling=pooling, weight_init_min=-scale, weight_init_max=scale,
            ))
            if wide_dim:
                tables.append(EmbeddingBagConfig(
                    name=name + WIDE_SUFFIX, embedding_dim=wide_dim, num_embeddings=f.num_embeddings,
                    feature_names=list(features), pooling=pooling, weight_init_min=-1e-3, weight_init_max=1e-3,
                ))
        self.ebc = EmbeddingBagCollection(tables=tables, device=device or torch.device("meta"))
        # torchrec names a feature read by several tables "feature@table"
        shared = bool(wide_dim)
        self._keys = {
            f.name: (f"{f.name}@{f.table_name}" if shared else f.name) for f in schema.sparse
        }
        self._wide_keys = {f.name: f"{f.name}@{f.table_name}{WIDE_SUFFIX}" for f in schema.sparse} if wide_dim else {}

    @property
    def feature_names(self) -> List[str]:
        return self.schema.feature_names

    def names_in(self, groups: Sequence[str]) -> List[str]:
        """Feature names of the given groups (user, host, item, context, scenario)."""
        return [f.name for f in self.schema.features_in(groups)]

    def output_dim(self, names: Sequence[str]) -> int:
        return sum(self.schema.feature(n).embedding_dim for n in names)

    def forward(self, features: KeyedJaggedTensor) -> Embeddings:
        pooled = self.ebc(features).to_dict()
        return Embeddings(
            features={name: pooled[key] for name, key in self._keys.items()},
            wide={name: pooled[key] for name, key in self._wide_keys.items()},
        )
