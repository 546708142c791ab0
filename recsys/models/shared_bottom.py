"""Shared-Bottom multi-task model.

Caruana, "Multitask Learning", Machine Learning 28(1), 1997 (hard parameter sharing); the standard baseline of
Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts", KDD 2018.

One bottom MLP over the shared embeddings and dense features feeds one tower per task. Every schema task gets
a tower; losses follow the schema (a task with ``depends_on`` is trained where its parent is positive).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from recsys.config import Fraction, Width
from recsys.data.batch import Batch
from recsys.models.base import RankingModel, Requirements, register_model
from recsys.modules.mlp import Activation, MLP
from recsys.modules.multitask import TaskTowers
from recsys.modules.sparse import SparseArch
from recsys.schema import Schema


@dataclass
class SharedBottomConfig:
    """Options of :class:`SharedBottom`.

    Args:
        bottom: widths of the shared bottom MLP.
        tower: hidden widths of each task tower.
        activation, dropout: MLP options.
        features: sparse features (default: all).
        use_dense: feed dense features to the bottom.
    """

    bottom: List[Width] = field(default_factory=lambda: [256, 128])
    tower: List[Width] = field(default_factory=lambda: [64])
    activation: Activation = "relu"
    dropout: Fraction = 0.0
    features: Optional[List[str]] = None
    use_dense: bool = True


@register_model("shared_bottom")
class SharedBottom(RankingModel):
    """Shared bottom MLP, one tower per task.

    Shapes: B batch, F features, D embedding dim, Dd dense, H bottom width.
    [B, F * D + Dd] -> bottom -> [B, H] -> tower_t -> [B] for every task t.

    Example::

        model = SharedBottom(schema, SharedBottomConfig(bottom=[128], tower=[32]))
        out = model(batch)         # {"ctr": [B], "cvr": [B], ...}
    """

    requirements = Requirements(min_tasks=2)

    Config = SharedBottomConfig

    def __init__(self, schema: Schema, config: SharedBottomConfig) -> None:
        super().__init__(schema, config)
        self.features = self.check_features(config.features, "features")
        self.sparse_arch = SparseArch(schema)
        self.use_dense = config.use_dense and schema.dense_dim > 0
        width = self.sparse_arch.output_dim(self.features) + (schema.dense_dim if self.use_dense else 0)
        self.bottom = MLP(width, config.bottom, activation=config.activation, dropout=config.dropout)
        self.towers = TaskTowers({t: self.bottom.output_dim for t in self.tasks}, config.tower, config.activation,
                                 config.dropout)

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        x = self.sparse_arch(batch.sparse).concat(self.features)
        if self.use_dense:
            x = torch.cat([x, batch.dense], dim=1)
        h = self.bottom(x)
        logits = self.towers({t: h for t in self.tasks})
        return {t: logits[t] for t in self.tasks}
