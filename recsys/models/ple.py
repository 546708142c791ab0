"""PLE: Progressive Layered Extraction.

Tang et al., "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for Personalized
Recommendations", RecSys 2020.

Stacked customized-gate-control (CGC) levels: each level has task-specific experts and shared experts; a task's
gate mixes its own and the shared experts, and (below the top level) a shared gate mixes all experts into the
shared input of the next level. The top level's per-task mixtures feed the task towers
(:class:`~recsys.modules.experts.PLE`). Every schema task gets experts, gates and a tower.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from recsys.config import Fraction, NonNegativeInt, PositiveInt, Width
from recsys.modules.mlp import Activation
from recsys.data.batch import Batch
from recsys.models.base import RankingModel, Requirements, register_model
from recsys.modules.experts import PLE as PLELayers
from recsys.modules.multitask import TaskTowers
from recsys.modules.sparse import SparseArch
from recsys.schema import Schema


@dataclass
class PLEConfig:
    """Options of :class:`PLE`.

    Args:
        levels: extraction levels (1 = CGC).
        specific_experts: task-specific experts per task and level.
        shared_experts: shared experts per level (0: no shared experts).
        expert_hidden: widths of each expert MLP.
        tower: hidden widths of each task tower.
        activation, dropout: MLP options.
        features: sparse features (default: all).
        use_dense: feed dense features to the first level.
    """

    levels: PositiveInt = 2
    specific_experts: PositiveInt = 1
    shared_experts: NonNegativeInt = 1
    expert_hidden: List[Width] = field(default_factory=lambda: [256, 128])
    tower: List[Width] = field(default_factory=lambda: [64])
    activation: Activation = "relu"
    dropout: Fraction = 0.0
    features: Optional[List[str]] = None
    use_dense: bool = True


@register_model("ple")
class PLE(RankingModel):
    """PLE with one tower per task.

    Shapes: B batch, F features, D embedding dim, Dd dense, H expert width.
    x [B, F * D + Dd] -> ``levels`` CGC layers -> {task: [B, H]} -> tower_t -> [B].

    Example::

        model = PLE(schema, PLEConfig(levels=2, specific_experts=1, shared_experts=1))
        out = model(batch)            # {"ctr": [B], "cvr": [B], ...}
    """

    requirements = Requirements(min_tasks=2)

    Config = PLEConfig

    def __init__(self, schema: Schema, config: PLEConfig) -> None:
        super().__init__(schema, config)
        self.features = self.check_features(config.features, "features")
        self.sparse_arch = SparseArch(schema)
        self.use_dense = config.use_dense and schema.dense_dim > 0
        width = self.sparse_arch.output_dim(self.features) + (schema.dense_dim if self.use_dense else 0)
        self.ple = PLELayers(width, self.tasks, config.levels, config.specific_experts, config.shared_experts,
                             config.expert_hidden, config.activation, config.dropout)
        self.towers = TaskTowers({t: self.ple.output_dim for t in self.tasks}, config.tower, config.activation,
                                 config.dropout)

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        x = self.sparse_arch(batch.sparse).concat(self.features)
        if self.use_dense:
            x = torch.cat([x, batch.dense], dim=1)
        logits = self.towers(self.ple(x))
        return {t: logits[t] for t in self.tasks}
