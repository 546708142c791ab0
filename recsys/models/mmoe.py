"""MMoE: Multi-gate Mixture-of-Experts.

Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts", KDD 2018.

Shared expert MLPs over the embeddings and dense features; each task has a softmax gate over the experts
(computed from the same input) whose weighted sum of expert outputs feeds the task's tower. Every schema task
gets a gate and a tower (:class:`~recsys.modules.experts.MMoE`).
"""

from dataclasses import dataclass
from typing import Dict

import torch

from recsys.data.batch import Batch
from recsys.models.base import RankingModel, Requirements, register_model
from recsys.modules.experts import MMoE as MMoELayer
from recsys.modules.experts import MMoEOptions
from recsys.modules.multitask import TowerOptions
from recsys.modules.sparse import FeatureInput, FeatureOptions
from recsys.schema import Schema


@dataclass
class MMoEConfig(MMoEOptions, TowerOptions, FeatureOptions):
    """Options of :class:`MMoE`.

    Args:
        num_experts, expert_hidden: the shared experts (:class:`~recsys.modules.experts.MMoEOptions`).
        tower: hidden widths of each task tower (:class:`~recsys.modules.multitask.TowerOptions`).
        activation, dropout: MLP options.
        features, use_dense: the input of experts and gates (:class:`~recsys.modules.sparse.FeatureOptions`).
    """


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
        self.sparse_arch = FeatureInput(schema, config.features, config.use_dense)
        self.mmoe = MMoELayer.from_options(self.sparse_arch.width, self.tasks, config)
        self.towers = config.towers(self.mmoe.output_dim, self.tasks)

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        x, _ = self.sparse_arch.read(batch)
        logits = self.towers(self.mmoe(x))
        return {t: logits[t] for t in self.tasks}
