"""MMoE: Multi-gate Mixture-of-Experts.

Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts", KDD 2018.

Shared expert MLPs over the embeddings and dense features; each task has a softmax gate over the experts
(computed from the same input) whose weighted sum of expert outputs feeds the task's tower. Every schema task
gets a gate and a tower (:class:`~recsys.modules.experts.MMoE`).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from recsys.config import Fraction, Width
from recsys.modules.mlp import Activation
from recsys.data.batch import Batch
from recsys.models.base import RankingModel, Requirements, register_model
from recsys.modules.experts import MMoE as MMoELayer
from recsys.modules.multitask import TaskTowers
from recsys.modules.sparse import SparseArch
from recsys.schema import Schema


@dataclass
class MMoEConfig:
    """Options of :class:`MMoE`.

    Args:
        num_experts: shared experts.
        expert_hidden: widths of each expert MLP.
        tower: hidden widths of each task tower.
        activation, dropout: MLP options.
        features: sparse features (default: all).
        use_dense: feed dense features to experts and gates.
    """

    num_experts: Width = 4
    expert_hidden: List[Width] = field(default_factory=lambda: [256, 128])
    tower: List[Width] = field(default_factory=lambda: [64])
    activation: Activation = "relu"
    dropout: Fraction = 0.0
    features: Optional[List[str]] = None
    use_dense: bool = True


@register_model("mmoe")
class MMoE(RankingModel):
    """MMoE with one tower per task.

    Shapes: B batch, F features, D embedding dim, Dd dense, E experts, H expert width.
    x [B, F * D + Dd] -> experts [B, E, H]; gate_t(x) [B, E] (softmax) -> mix [B, H] -> tower_t -> [B].

    Example::

        model = MMoE(schema, MMoEConfig(num_experts=4))
        out = model(batch)                         # {"ctr": [B], "cvr": [B], ...}
        model.mmoe.gate_weights()["cvr"]           # [B, 4], rows sum to 1
    """

    requirements = Requirements(min_tasks=2)

    Config = MMoEConfig

    def __init__(self, schema: Schema, config: MMoEConfig) -> None:
        super().__init__(schema, config)
        self.features = self.check_features(config.features, "features")
        self.sparse_arch = SparseArch(schema)
        self.use_dense = config.use_dense and schema.dense_dim > 0
        width = self.sparse_arch.output_dim(self.features) + (schema.dense_dim if self.use_dense else 0)
        self.mmoe = MMoELayer(width, self.tasks, config.num_experts, config.expert_hidden, config.activation,
                              config.dropout)
        self.towers = TaskTowers({t: self.mmoe.output_dim for t in self.tasks}, config.tower, config.activation,
                                 config.dropout)

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        x = self.sparse_arch(batch.sparse).concat(self.features)
        if self.use_dense:
            x = torch.cat([x, batch.dense], dim=1)
        logits = self.towers(self.mmoe(x))
        return {t: logits[t] for t in self.tasks}
