"""Shared-Bottom multi-task model.

Caruana, "Multitask Learning", Machine Learning 28(1), 1997 (hard parameter sharing); the standard baseline of
Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts", KDD 2018.

One bottom MLP over the shared embeddings and dense features feeds one tower per task. Every schema task gets
a tower; losses follow the schema (a task with ``depends_on`` is trained where its parent is positive).
"""

from dataclasses import dataclass, field
from typing import Dict, List

import torch

from recsys.config import Width
from recsys.data.batch import Batch
from recsys.models.base import RankingModel, Requirements, register_model
from recsys.modules.multitask import TowerOptions
from recsys.modules.sparse import FeatureInput, FeatureOptions
from recsys.schema import Schema


@dataclass
class SharedBottomConfig(TowerOptions, FeatureOptions):
    """Options of :class:`SharedBottom`.

    Args:
        bottom: widths of the shared bottom MLP.
        tower: hidden widths of each task tower (:class:`~recsys.modules.multitask.TowerOptions`).
        activation, dropout: MLP options.
        features, use_dense: the bottom's input (:class:`~recsys.modules.sparse.FeatureOptions`).
    """

    bottom: List[Width] = field(default_factory=lambda: [256, 128])


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
        self.sparse_arch = FeatureInput(schema, config.features, config.use_dense)
        self.bottom = config.mlp(self.sparse_arch.width, config.bottom)
        self.towers = config.towers(self.bottom.output_dim, self.tasks)

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        x, _ = self.sparse_arch.read(batch)
        h = self.bottom(x)
        logits = self.towers({t: h for t in self.tasks})
        return {t: logits[t] for t in self.tasks}
